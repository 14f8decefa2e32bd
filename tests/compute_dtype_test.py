"""bf16 operands (``dtype=jnp.bfloat16``) leave a quantized network's forward values unchanged.

Quantized weights and activations of at most 8 bits are b-bit integers times 2^l: exactly
representable in bfloat16 (8 significant bits). Their products are exact in float32 (at most
16 significant bits) and are all multiples of 2^(l_w + l_a), so float32 sums of them are exact
integers in those units while below 2^24 units, whatever the summation order. So a quantized
network with bf16 operands and float32 accumulation computes the *same* conv/dense outputs as
with float32 operands, and everything after them (BN, quantizers) is then identical too.

The tolerance allowed is float32 summation-order noise on the logits (1e-5 relative to the
largest logit); on this CPU the logits come out bit-identical. The float network is not
exact in bf16 (checked, so the test can fail). The backward pass is not exact either: the
cotangents are rounded to bf16 before the transposed convs (measured below).

``compute_dtype="bfloat16_outputs"`` (bf16 conv/dense outputs, the fast GPU mode) is not
exact: its outputs are the exact result rounded once to bf16 (checked), and its gradients
are only checked to point the same way.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from faq_jax import layers, models, steps
from faq_jax import policy as policy_lib

POLICIES = {"w8a8": policy_lib.W8A8, "w4a4": policy_lib.W4A4}
X = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))


def _logits(policy, dtype, train: bool, arch: str = "resnet20", x=X):
    """Logits of ``arch`` with ``dtype`` operands, from the same float32 variables."""
    f32 = models.create(arch, policy=policy, num_classes=10)
    variables = jax.jit(lambda x: f32.init(jax.random.key(0), x))(x[:1])
    model = models.create(arch, policy=policy, num_classes=10, dtype=dtype)
    fn = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"])[0])
    return np.asarray(fn(variables, x), np.float32)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", ["w8a8", "w4a4"])
def test_quantized_forward_is_exact_with_bf16_operands(name, train):
    ref = _logits(POLICIES[name], None, train)
    got = _logits(POLICIES[name], jnp.bfloat16, train)
    assert np.abs(ref).max() > 0.1  # a live network, not all zeros
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("train", [False, True])
def test_float_forward_is_not_exact_with_bf16_operands(train):
    ref = _logits(None, None, train)
    got = _logits(None, jnp.bfloat16, train)
    assert np.abs(got - ref).max() > 1e-3 * np.abs(ref).max()


def _conv_inputs_exact_in_bf16(arch: str, size: int) -> dict[str, bool]:
    """Per conv/dense module path: is its input exactly a bfloat16 value (W4A4, train)?"""
    # Below 299 px Inception's aux head runs on a zero stand-in map (see models/inception.py),
    # which says nothing about real inputs: check the main network there.
    kw = {"aux_logits": False} if arch == "inception_v3" and size < 299 else {}
    model = models.create(arch, policy=policy_lib.W4A4, num_classes=10, **kw)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x[:1])

    def run(v, x):
        found = {}

        def spy(next_fun, args, kwargs, context):
            mod = context.module
            if isinstance(mod, (layers.Conv, layers.Dense)) and context.method_name == "__call__":
                a = args[0]
                found["/".join(mod.path)] = jnp.all(a == a.astype(jnp.bfloat16).astype(a.dtype))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(spy):
            model.apply(v, x, train=True, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.key(2)})
        return found

    return {k: bool(v) for k, v in jax.jit(run)(variables, x).items()}


@pytest.mark.parametrize("arch,size", [
    ("resnet20", 32), ("resnet18", 32),
    pytest.param("vgg16_bn", 32, marks=pytest.mark.slow),
    pytest.param("densenet161", 32, marks=pytest.mark.slow),
    pytest.param("inception_v3", 75, marks=pytest.mark.slow),
])
def test_every_conv_and_dense_input_is_exact_in_bf16(arch, size):
    exact = _conv_inputs_exact_in_bf16(arch, size)
    assert exact and all(exact.values()), [k for k, v in exact.items() if not v]


def test_bf16_outputs_mode_rounds_conv_and_dense_outputs_to_bf16():
    """``bfloat16_outputs``: the exact float32 result, rounded once to bfloat16."""
    x = jax.random.normal(jax.random.key(3), (4, 9, 9, 16)).astype(jnp.bfloat16)
    for layer, xin in ((layers.Conv(32, (3, 3)), x), (layers.Dense(32), x.reshape(4, -1))):
        v = layer.init(jax.random.key(4), xin.astype(jnp.float32))
        # bf16-exact kernel: then the float32 result is the exact sum up to f32 rounding.
        v = jax.tree.map(lambda w: w.astype(jnp.bfloat16).astype(jnp.float32), v)
        exact = layer.clone(dtype=jnp.bfloat16).apply(v, xin)
        fast = layer.clone(dtype=layers.COMPUTE_DTYPES["bfloat16_outputs"]).apply(v, xin)
        assert exact.dtype == jnp.float32 and fast.dtype == jnp.bfloat16
        ref = np.asarray(exact.astype(jnp.bfloat16), np.float32)
        got = np.asarray(fast, np.float32)
        # one bf16 rounding of the (order-dependent) f32 sum: at most one bf16 ulp apart
        np.testing.assert_allclose(got, ref, rtol=2**-7, atol=0)
        assert np.mean(got == ref) > 0.9


@pytest.mark.parametrize("name", ["w8a8", "w4a4"])
@pytest.mark.parametrize("mode,tol,min_cos", [("bfloat16", 2e-2, 0.999),
                                              ("bfloat16_outputs", 1.5, 0.3)])
def test_bf16_gradients_are_close_not_identical(name, mode, tol, min_cos):
    """One step's gradients with bf16 operands (and outputs) vs float32's.

    Exact mode: within 2% (relative L2). bf16 outputs: rounding every conv output to bf16
    flips quantizer codes and changes this random-init, batch-8 network's gradients a lot
    (measured: W8A8 relative L2 0.71, cosine 0.74; W4A4 1.10, 0.40), so only a clearly
    positive direction is checked; docs/speed.md states it.
    """
    tx = optax.sgd(0.1)
    labels = jnp.arange(8) % 10
    grads = {}
    fast = layers.COMPUTE_DTYPES[mode]
    for dt in (None, fast):
        model = models.create("resnet20", policy=POLICIES[name], num_classes=10, dtype=dt)
        variables = jax.jit(lambda x, m=model: m.init(jax.random.key(0), x))(X[:1])
        state = steps.create_state(variables, tx, jax.random.key(1))
        step = jax.jit(steps.make_train_step(model, tx))
        new, _ = step(state, {"image": X[None], "label": labels[None]})
        # SGD with lr 0.1 and no momentum: the update is -0.1 * gradient.
        grads[dt] = jax.tree.map(lambda a, b: (a - b) / 0.1, state.params, new.params)
    a, b = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads[d])])
            for d in (None, fast))
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    cos = float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    print(f"{name} {mode}: gradients vs float32's: relative L2 {rel:.2e}, cosine {cos:.4f}")
    assert 0 < rel < tol and cos > min_cos

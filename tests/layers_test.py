"""Quantized blocks: float path == Flax/torch arithmetic; quantized path == FAQ section 2."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import layers, quant
from faq_jax import policy as policy_lib

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (2, 9, 11, 3))


def test_conv_float_equals_flax_conv():
    ours = layers.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=True)
    v = ours.init(KEY, X)
    v = jax.tree.map(lambda a: a + 0.1, v)  # non-zero bias
    ref = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_allclose(ours.apply(v, X), ref.apply(v, X), rtol=1e-6, atol=1e-6)


def test_dense_float_equals_flax_dense():
    x = X.reshape(2, -1)
    v = layers.Dense(7).init(KEY, x)
    np.testing.assert_allclose(layers.Dense(7).apply(v, x), nn.Dense(7).apply(v, x), rtol=1e-6)


def test_conv_quantized_uses_fixed_point_weights():
    pol = policy_lib.paper_policy(4, 4)
    conv = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=True, policy=pol)
    v = conv.init(KEY, X)
    v = {"params": {"kernel": v["params"]["kernel"], "bias": jnp.full((4,), 0.123456789)}}
    k = v["params"]["kernel"]
    lsb = quant.weight_lsb(k, bits=4, clip_std=4.12)
    kq = quant.fixed_point(k, bits=4, lsb=lsb, signed=True)
    bq = quant.fixed_point(v["params"]["bias"], bits=32, lsb=-16, signed=True)
    ref = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=True).apply(
        {"params": {"kernel": kq, "bias": bq}}, X)
    np.testing.assert_allclose(conv.apply(v, X), ref, rtol=1e-6, atol=1e-6)
    # Gradient reaches the float shadow weights through the straight-through estimator.
    g = jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, X) ** 2))(v["params"])
    assert float(jnp.abs(g["kernel"]).sum()) > 0


def _torch_bn_reference(x, gamma, beta, mean, var, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_batchnorm_float_matches_torch_semantics():
    bn = layers.BatchNorm()
    v = bn.init(KEY, X, train=False)
    rng = np.random.default_rng(0)
    params = {"scale": rng.uniform(0.5, 1.5, 3).astype(np.float32),
              "bias": rng.normal(size=3).astype(np.float32)}
    stats = {"mean": rng.normal(size=3).astype(np.float32),
             "var": rng.uniform(0.5, 2, 3).astype(np.float32)}
    v = {"params": params, "batch_stats": stats}
    x = np.asarray(X)
    y = bn.apply(v, X, train=False)
    np.testing.assert_allclose(y, _torch_bn_reference(x, params["scale"], params["bias"],
                                                      stats["mean"], stats["var"]), atol=1e-5)
    y, new = bn.apply(v, X, train=True, mutable=["batch_stats"])
    bm, bv = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, _torch_bn_reference(x, params["scale"], params["bias"], bm, bv),
                               atol=1e-5)
    n = x.size // 3
    np.testing.assert_allclose(new["batch_stats"]["mean"], 0.9 * stats["mean"] + 0.1 * bm,
                               rtol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["var"],
                               0.9 * stats["var"] + 0.1 * bv * n / (n - 1), rtol=1e-5)


def test_batchnorm_quantized_folded_constants():
    pol = policy_lib.W8A8
    v = {"params": {"scale": jnp.asarray([0.02, 0.7, 1.3]), "bias": jnp.asarray([0.1, -0.2, 3.0])},
         "batch_stats": {"mean": jnp.asarray([0.5, -1.0, 0.0]), "var": jnp.asarray([1.0, 4, .25])}}
    y = layers.BatchNorm(policy=pol).apply(v, X, train=False)
    s = v["params"]["scale"] / jnp.sqrt(v["batch_stats"]["var"] + 1e-5)
    t = v["params"]["bias"] - v["batch_stats"]["mean"] * s
    sq = np.floor(np.asarray(s) * 16 + 0.5) / 16  # 8-bit, l = -4
    tq = np.floor(np.asarray(t) * 65536 + 0.5) / 65536  # 32-bit, l = -16
    assert sq[0] == 0.0  # 0.02 < 1/32 rounds to zero: FAQ's strict reading
    np.testing.assert_allclose(y, np.asarray(X) * sq + tq, rtol=1e-6, atol=1e-6)
    off = layers.BatchNorm(policy=policy_lib.Policy(quantize_bn=False)).apply(v, X, train=False)
    np.testing.assert_allclose(off, layers.BatchNorm().apply(v, X, train=False))


def test_act_quant_relu_unsigned_and_calibration():
    pol = policy_lib.W4A4
    act = layers.ActQuant(policy=pol)
    v = act.init(KEY, X)
    # Uncalibrated l (y_max = 2^(4/2) - 1 = 3 -> 4 -> l = 2 - 4 = -2).
    assert float(v["quant"]["lsb"]) == -2.0
    assert "params" not in v
    y = act.apply(v, X * 3)
    np.testing.assert_array_equal(
        y, quant.fixed_point(jax.nn.relu(X * 3), bits=4, lsb=-2, signed=False))
    # A calibration pass is float and sows l from the 99.9th percentile (4-bit).
    y, sown = act.apply(v, X * 3, mutable=["calib"])
    np.testing.assert_array_equal(y, jax.nn.relu(X * 3))
    p999 = np.percentile(np.maximum(np.asarray(X) * 3, 0), 99.9)
    expected = np.ceil(np.log2(p999)) - 4
    assert float(sown["calib"]["lsb"][0]) == expected


def test_act_quant_float_when_no_policy():
    act = layers.ActQuant()
    v = act.init(KEY, X)
    assert v == {}
    np.testing.assert_array_equal(act.apply(v, X), jax.nn.relu(X))


def test_input_quant():
    y = layers.InputQuant(policy=policy_lib.W4A4).apply({}, X * 3)
    np.testing.assert_array_equal(y, quant.fixed_point(X * 3, bits=8, lsb=-5, signed=True))
    np.testing.assert_array_equal(layers.InputQuant().apply({}, X), X)


def test_bf16_operands_do_not_change_quantized_forward():
    pol = policy_lib.W8A8
    x = quant.fixed_point(jax.nn.relu(X), bits=8, lsb=-5, signed=False)
    conv32 = layers.Conv(6, (3, 3), padding=((1, 1), (1, 1)), policy=pol)
    conv16 = layers.Conv(6, (3, 3), padding=((1, 1), (1, 1)), policy=pol, dtype=jnp.bfloat16)
    v = conv32.init(KEY, x)
    y32, y16 = conv32.apply(v, x), conv16.apply(v, x)
    assert y16.dtype == jnp.float32
    # Operands are exact in bf16; only the summation order may differ.
    np.testing.assert_allclose(y16, y32, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw,out", [((7, 7), (7, 7)), ((10, 13), (7, 7)), ((3, 5), (7, 7))])
def test_adaptive_avg_pool_bins(hw, out):
    x = np.random.default_rng(0).normal(size=(1, *hw, 2)).astype(np.float32)
    y = np.asarray(layers.adaptive_avg_pool(jnp.asarray(x), out))
    h, w = hw
    for i in range(out[0]):
        for j in range(out[1]):
            h0, h1 = (i * h) // out[0], -(-((i + 1) * h) // out[0])
            w0, w1 = (j * w) // out[1], -(-((j + 1) * w) // out[1])
            np.testing.assert_allclose(y[0, i, j], x[0, h0:h1, w0:w1].mean((0, 1)), rtol=1e-6)


def test_max_pool_pads_with_minus_inf():
    x = -jnp.ones((1, 4, 4, 1))
    assert float(layers.max_pool(x, 3, 2, 1).max()) == -1.0


def test_mutable_true_keeps_the_network_quantized():
    """``apply(..., mutable=True)`` (a common training-loop idiom) makes ``calib`` mutable
    too; that must not switch every layer to its float calibration path."""
    from faq_jax import calibrate, models  # noqa: PLC0415

    model = models.create("resnet20", policy=policy_lib.W4A4, num_classes=10)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.key(1), x)
    quantized = model.apply(v, x, train=False)
    float_net = models.create("resnet20", num_classes=10).apply(
        {k: v[k] for k in ("params", "batch_stats")}, x, train=False)
    assert not np.allclose(quantized, float_net)
    for train in (False, True):
        out, _ = model.apply(v, x, train=train, mutable=True)
        want, _ = model.apply(v, x, train=train, mutable=["batch_stats"])
        np.testing.assert_array_equal(out, want)
    # calibrate() (mutable=["calib"]) still sees the float activations.
    lsb = calibrate.calibrate(model, v, [x])
    assert jax.tree.structure(lsb) == jax.tree.structure(v["quant"])


def test_batch_norm_train_as_a_field_or_an_argument():
    """A network binds train into its norm constructor (layers.defs); both forms agree and
    giving it twice (or never) is an error."""
    x = jax.random.normal(jax.random.key(3), (4, 3, 3, 2))
    v = layers.BatchNorm().init(jax.random.key(0), x, train=False)
    for train in (False, True):
        a = layers.BatchNorm().apply(v, x, train=train, mutable=["batch_stats"])
        b = layers.defs(None, train=train).norm().apply(v, x, mutable=["batch_stats"])
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError):
        layers.BatchNorm(train=True).apply(v, x, train=True)
    with pytest.raises(ValueError):
        layers.BatchNorm().apply(v, x)


LSQ = policy_lib.Policy(w_bits=4, a_bits=4, method="lsq")


@pytest.mark.parametrize("pow2", [False, True])
def test_lsq_weight_step_is_a_param_started_from_the_kernel(pow2):
    from faq_jax import lsq  # noqa: PLC0415

    pol = policy_lib.Policy(w_bits=4, a_bits=4, method="lsq", lsq_pow2=pow2)
    conv = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1)), policy=pol)
    v = conv.init(KEY, X)
    name = "weight_log2_step" if pow2 else "weight_step"
    assert sorted(v) == ["params"] and sorted(v["params"]) == ["kernel", name]
    k = v["params"]["kernel"]
    s0 = lsq.init_step(k, 4, True)
    np.testing.assert_allclose(v["params"][name], np.log2(s0) if pow2 else s0, rtol=1e-6)
    s = lsq.step_of(v["params"][name], pow2)
    ref = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1))).apply(
        {"params": {"kernel": lsq.quantize(k, s, bits=4, signed=True)}}, X)
    np.testing.assert_allclose(conv.apply(v, X), ref, rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, X) ** 2))(v["params"])
    assert float(jnp.abs(g[name])) > 0 and float(jnp.abs(g["kernel"]).sum()) > 0


def test_lsq_act_quant_learns_its_step_and_sows_the_first_batch_start():
    from faq_jax import lsq  # noqa: PLC0415

    act = layers.ActQuant(policy=LSQ)
    v = act.init(KEY, X)
    # In params (learned), not in the quant collection; uncalibrated start: FAQ's 2^-2.
    assert jax.tree.map(float, v) == {"params": {"step": 0.25}}
    np.testing.assert_array_equal(
        act.apply(v, X * 3), lsq.quantize(jax.nn.relu(X * 3), 0.25, bits=4, signed=False))
    y, sown = act.apply(v, X * 3, mutable=["calib"])  # calibration pass: float, sows s0
    np.testing.assert_array_equal(y, jax.nn.relu(X * 3))
    assert float(sown["calib"]["step"][0]) == pytest.approx(
        2 * float(jnp.mean(jax.nn.relu(X * 3))) / np.sqrt(15), rel=1e-6)
    g = jax.grad(lambda p: jnp.sum(act.apply({"params": p}, X * 3)))(v["params"])
    assert float(g["step"]) != 0.0


def test_bn_bias_and_input_follow_the_same_policy_under_lsq():
    """LSQ changes how weight and activation steps are set, nothing else."""
    pol = policy_lib.Policy(w_bits=4, a_bits=4, method="lsq")
    v = layers.BatchNorm(policy=pol).init(KEY, X, train=False)
    np.testing.assert_array_equal(layers.BatchNorm(policy=pol).apply(v, X, train=False),
                                  layers.BatchNorm(policy=policy_lib.Policy()).apply(
                                      v, X, train=False))
    np.testing.assert_array_equal(layers.InputQuant(policy=pol).apply({}, X * 3),
                                  quant.fixed_point(X * 3, bits=8, lsb=-5, signed=True))

"""ResNet zoo: shapes, torchvision's parameter counts, quantizer sites, roles, policy binding.

Full-depth networks are only traced (``jax.eval_shape``: no compile); the one network that
actually runs is ResNet-20 at 32x32. Its variables are drawn with numpy from the traced
shapes: compiling ``init`` (threefry random bits for every kernel) costs far more on CPU
than the forward pass itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import models, policy

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
# torchvision's published parameter counts (docs "Table of all available weights").
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
RESNET20_PARAMS = 272_474  # 0.27M, as in He et al. 2016 Table 6


def _shapes(module, size, batch=1, **apply_kwargs):
    """(variables, logits) as ShapeDtypeStructs: traced, never compiled."""
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

    def f(x):
        variables = module.init(jax.random.key(0), x)
        return variables, module.apply(variables, x, **apply_kwargs)

    return jax.eval_shape(f, x)


def _random_variables(module, size, seed=0):
    """He-normal kernels, small biases, non-trivial BN statistics, from traced shapes."""
    rng = np.random.default_rng(seed)
    shapes, _ = _shapes(module, size)

    def draw(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape).astype(np.float32)
        if leaf in ("scale", "var"):
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _count(tree):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch", RESNETS)
def test_resnet_shapes_and_param_counts(arch):
    variables, logits = _shapes(models.create(arch), 64, batch=2)
    assert logits.shape == (2, 1000)
    assert set(variables) == {"params", "batch_stats"}  # policy=None: no quant state
    assert _count(variables["params"]) == TORCHVISION_PARAMS[arch]
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    width = 512 if arch in ("resnet18", "resnet34") else 2048
    assert variables["params"]["fc"]["kernel"].shape == (width, 1000)
    if width == 2048:  # v1.5 bottleneck: 1x1 down-projection, stride on the 3x3
        assert variables["params"]["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
        assert variables["params"]["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, 256,
                                                                                   512)
        assert set(variables["batch_stats"]["layer2_0"]["downsample_1"]) == {"mean", "var"}


def test_resnet_odd_size_and_num_classes():
    _, logits = _shapes(models.create("resnet18", num_classes=7), 97)
    assert logits.shape == (1, 7)


def test_resnet20_runs_and_counts():
    module = models.create("resnet20", num_classes=10)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = _random_variables(module, 32)
    assert set(variables) == {"params", "batch_stats"}
    assert _count(variables["params"]) == RESNET20_PARAMS
    # Option-B shortcuts exactly where the shape changes.
    assert "downsample_0" not in variables["params"]["layer1_0"]
    assert variables["params"]["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, 16, 32)
    assert variables["params"]["layer3_0"]["downsample_0"]["kernel"].shape == (1, 1, 32, 64)
    apply = jax.jit(module.apply, static_argnames=("train", "mutable"))
    logits = apply(variables, x)
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    logits_t, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    assert logits_t.shape == (4, 10)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])
    # The factory and models.create build the same float network.
    from faq_jax.models import resnet_cifar

    again = jax.jit(resnet_cifar.resnet20(num_classes=10).apply)(variables, x)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(logits))


def test_resnet20_quantized_sites_and_roles():
    module = models.create("resnet20", policy=policy.W4A4, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    shapes, _ = _shapes(module, 32)
    assert set(shapes) == {"params", "batch_stats", "quant"}
    float_module = models.create("resnet20", num_classes=10)
    float_vars = _random_variables(float_module, 32)
    for c in ("params", "batch_stats"):  # a float checkpoint fits the quantized model
        assert jax.tree.structure(float_vars[c]) == jax.tree.structure(shapes[c])
    # Applying with "quant" mutable creates the quantizers' l's (no RNG, no init compile).
    # Its logits are already the quantized network's (one compile instead of two).
    logits, quant_state = jax.jit(module.apply, static_argnames="mutable")(
        float_vars, x, mutable=("quant",))
    variables = {**float_vars, **quant_state}
    weights, acts = models.quant_sites(variables)
    blocks = [f"layer{s}_{i}" for s in (1, 2, 3) for i in range(3)]
    expected_acts = {"act", "fc_input"} | {f"{b}/act{k}" for b in blocks for k in (1, 2)}
    assert set(acts) == expected_acts  # one quantizer at every ReLU site, plus fc's input
    roles = module.roles()
    assert set(roles) == set(policy.ROLES)
    assert roles["first"] in weights and roles["last"] in weights
    assert roles["last_act"] in acts and roles["classifier_input"] in acts
    assert roles["last_act"] == "layer3_2/act2"
    # Uncalibrated l's: FAQ's control value y_max = 2^(b/2) - 1 (4 bits: l = 2 - 4).
    assert float(variables["quant"]["layer1_0"]["act1"]["lsb"]) == -2.0
    assert float(variables["quant"]["fc_input"]["lsb"]) == 4.0 - 8.0
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    float_logits = jax.jit(float_module.apply)(float_vars, x)
    assert not np.allclose(np.asarray(logits), np.asarray(float_logits))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_quant_sites_cover_every_relu(arch):
    module = models.create(arch, policy=policy.W8A8)
    variables, _ = _shapes(module, 32)
    _, acts = models.quant_sites(variables)
    n_blocks = sum(module.stage_sizes)
    per_block = 3 if module.bottleneck else 2
    assert len(acts) == 1 + per_block * n_blocks + 1  # stem, blocks, fc_input
    assert module.roles()["last_act"] in acts
    assert module.roles()["last_act"] == ("layer4_2/act3" if module.bottleneck
                                          else "layer4_1/act2")


def test_create_rejects_unknown_arch_and_bad_rule():
    with pytest.raises(ValueError, match="unknown arch 'resnet9'"):
        models.create("resnet9")
    bad = policy.Policy(rules=(policy.Rule("layer9_9/conv1", w_bits=4),))
    with pytest.raises(ValueError, match="layer9_9/conv1"):
        models.create("resnet18", policy=bad)
    bad_act = policy.Policy(rules=(policy.Rule("layer1_0/act3", a_bits=4),))
    with pytest.raises(ValueError, match="layer1_0/act3"):
        models.create("resnet18", policy=bad_act)  # basic blocks have no act3


def test_w4a4_paper_policy_on_resnet18():
    p = models.create("resnet18", policy=policy.W4A4).policy
    assert p.weight_bits("conv1") == 8
    assert p.weight_bits("fc") == 8
    assert p.weight_bits("layer1_0/conv1") == 4
    assert p.weight_bits("layer2_0/downsample_0") == 4
    assert p.act_bits("layer4_1/act2") == 8  # the last ReLU feeds the classifier
    assert p.act_bits("fc_input") == 8
    assert p.act_bits("act") == 4
    assert p.act_bits("layer4_1/act1") == 4
    assert p.act_bits("layer4_0/act2") == 4

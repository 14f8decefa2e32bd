"""VGG-16-bn, DenseNet-161, Inception-v3 and the option-A CIFAR ResNets: shapes, parameter
counts, roles, quantizer sites.

Everything here is traced with ``jax.eval_shape`` (no compilation); numerical parity with
torchvision is in convert_parity_zoo_test.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import layers, models
from faq_jax.policy import ROLES, W4A4

# torchvision's own counts (sum of p.numel() for p in model.parameters()).
PARAMS = {"vgg16_bn": 138_365_992, "densenet161": 28_681_000, "inception_v3": 27_161_264}
INCEPTION_NO_AUX = 23_834_568
# He et al. 2016 section 4.2 (10 classes): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M; the counts of
# the PyTorch reference (weights_convert/cifar_resnet.py), checked in convert_cifar_test.py.
CIFAR_PARAMS = {"cifar_resnet20": 269_722, "cifar_resnet32": 464_154,
                "cifar_resnet44": 658_586, "cifar_resnet56": 853_018,
                "cifar_resnet110": 1_727_962}
ZOO = (*PARAMS, *CIFAR_PARAMS)


def _init_shapes(module, size: int, batch: int = 1, **kw):
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kw), x)


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _paths(tree, leaf: str) -> set[str]:
    """Module paths of every ``leaf`` variable in a collection tree."""
    out = set()
    for keypath, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [k.key for k in keypath if hasattr(k, "key")]  # sown values are tuples
        if keys[-1] == leaf:
            out.add("/".join(keys[:-1]))
    return out


@pytest.fixture(scope="module")
def quantized():
    """arch -> (W4A4 module, its variable shapes) at the registry's smallest input."""
    out = {}
    for arch in ZOO:
        # validate=False: create's own check traces the model again; the role tests below
        # check the same thing (every role names an existing quantizer) directly.
        module = models.create(arch, policy=W4A4, validate=False)
        out[arch] = module, _init_shapes(module, models.spec(arch).min_size)
    return out


def test_every_arch_is_covered():
    resnets = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20"}
    assert set(models.ARCHS) == resnets | set(ZOO)  # models_test.py covers the ResNets


@pytest.mark.parametrize("arch", PARAMS)
def test_param_count_and_logits_shape(arch):
    module = models.create(arch, num_classes=1000)
    size = models.spec(arch).min_size
    shapes = _init_shapes(module, size, batch=2)
    assert _count(shapes["params"]) == PARAMS[arch]
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: module.apply(v, x), shapes, x)
    assert out.shape == (2, 1000)
    small = models.create(arch, num_classes=10)
    assert jax.eval_shape(lambda v, x: small.apply(v, x), _init_shapes(small, size), x).shape \
        == (2, 10)


@pytest.mark.parametrize("arch", CIFAR_PARAMS)
def test_cifar_resnet_param_count_and_shapes(arch):
    module = models.create(arch, num_classes=10)
    n = int(arch.removeprefix("cifar_resnet"))
    blocks = (n - 2) // 6
    shapes = _init_shapes(module, 32, batch=2)
    assert set(shapes) == {"params", "batch_stats"}
    params = shapes["params"]
    assert _count(params) == CIFAR_PARAMS[arch]
    assert sorted(k for k in params if k.startswith("layer")) == sorted(
        f"layer{s}_{i}" for s in (1, 2, 3) for i in range(blocks))
    # Option A: no shortcut parameters anywhere; 16/32/64 channels; classifier "linear".
    assert not [p for p in _paths(params, "kernel") if "downsample" in p]
    assert params["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 16, 32)
    assert params["layer3_0"]["conv1"]["kernel"].shape == (3, 3, 32, 64)
    assert params["linear"]["kernel"].shape == (64, 10) and "fc" not in params
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(lambda v, x: module.apply(v, x), shapes, x).shape == (2, 10)


def test_inception_outputs_and_aux_switch():
    module = models.create("inception_v3")
    shapes = _init_shapes(module, 299)
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    logits, aux = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(1)})[0], shapes, x)
    assert logits.shape == aux.shape == (2, 1000)
    assert jax.eval_shape(lambda v, x: module.apply(v, x), shapes, x).shape == (2, 1000)

    no_aux = models.create("inception_v3", aux_logits=False)
    shapes = _init_shapes(no_aux, 299)
    assert "AuxLogits" not in shapes["params"]
    assert _count(shapes["params"]) == INCEPTION_NO_AUX
    out, _ = jax.eval_shape(lambda v, x: no_aux.apply(v, x, train=True, mutable=["batch_stats"],
                                                      rngs={"dropout": jax.random.key(1)}),
                            shapes, x)
    assert out.shape == (2, 1000)


def test_inception_calibration_reaches_aux_head():
    module = models.create("inception_v3", policy=W4A4)
    shapes = _init_shapes(module, 299)
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    _, sown = jax.eval_shape(lambda v, x: module.apply(v, x, mutable=[layers.CALIB]), shapes, x)
    calibrated = _paths(sown[layers.CALIB], "lsb")
    assert calibrated == _paths(shapes[layers.QUANT], "lsb")
    assert "AuxLogits/conv1/act" in calibrated


@pytest.mark.parametrize("arch", ZOO)
def test_roles_name_existing_quantizers(arch, quantized):
    module, shapes = quantized[arch]
    roles = module.roles()
    assert set(roles) == set(ROLES)
    kernels = _paths(shapes["params"], "kernel")
    lsbs = _paths(shapes[layers.QUANT], "lsb")
    assert roles["first"] in kernels and roles["last"] in kernels
    assert set(roles["last_act"].split("|")) <= lsbs and roles["classifier_input"] in lsbs
    assert len(shapes["params"][roles["last"].split("/")[0]]["kernel"].shape) == 2


@pytest.mark.parametrize("arch", ZOO)
def test_w4a4_keeps_first_last_and_classifier_input_at_8_bits(arch, quantized):
    module, shapes = quantized[arch]
    p, roles = module.policy, module.roles()
    assert p.weight_bits(roles["first"]) == 8
    assert p.weight_bits(roles["last"]) == 8
    last_acts = set(roles["last_act"].split("|"))  # Inception: six branch ReLUs
    assert {p.act_bits(a) for a in last_acts} == {8}
    assert p.act_bits(roles["classifier_input"]) == 8
    others = sorted(_paths(shapes["params"], "kernel") - {roles["first"], roles["last"]})
    assert {p.weight_bits(k) for k in others} == {4}
    acts = sorted(_paths(shapes[layers.QUANT], "lsb") - last_acts - {roles["classifier_input"]})
    assert {p.act_bits(a) for a in acts} == {4}


def _expected_act_sites(arch: str, params) -> set[str]:
    """Every ReLU site (derived from the BatchNorms) plus every re-quantizer."""
    bns = _paths(params, "scale")
    if arch == "vgg16_bn":  # conv features_i, bn features_{i+1}, relu features_{i+2}
        relus = {f"features_{int(b.split('_')[1]) + 1}" for b in bns}
        return relus | {"classifier_1", "classifier_4"}  # 32x32: the 7x7 pool copies
    if arch == "densenet161":  # normX -> reluX; norm5 is followed by the top-level relu5
        relus = {re.sub(r"norm(\d?)$", r"relu\1", b) for b in bns if b != "features/norm5"}
        return relus | {"relu5", "classifier_input"}
    if arch in CIFAR_PARAMS:  # bn1 -> act (stem), layerS_I/bnK -> layerS_I/actK
        return {re.sub(r"bn(\d)$", r"act\1", b) if "/" in b else "act" for b in bns} | {
            "linear_input"}
    relus = {b[: -len("bn")] + "act" for b in bns}  # inception: X/bn -> X/act
    mixed = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    with_pool = [m for m in mixed if m not in ("Mixed_6a", "Mixed_7a")]
    requant = {f"{m}/block_input" for m in mixed[1:]}
    requant |= {f"{m}/branch_pool_input" for m in with_pool}
    return relus | requant | {"AuxLogits/conv0_input", "AuxLogits/fc_input", "fc_input"}


@pytest.mark.parametrize("arch", ZOO)
def test_activation_quantizer_at_every_relu_and_requantizer(arch, quantized):
    _, shapes = quantized[arch]
    lsbs = _paths(shapes[layers.QUANT], "lsb")
    assert lsbs == _expected_act_sites(arch, shapes["params"])
    # ReLUs + re-quantizers: VGG 15 + 0, DenseNet 161 + 1, Inception 96 + 22; a CIFAR
    # ResNet-d: stem 1 + 2 per block ((d - 2) / 2 blocks) + linear_input 1 = d.
    n_cifar = {a: int(a.removeprefix("cifar_resnet")) for a in CIFAR_PARAMS}
    assert len(lsbs) == {"vgg16_bn": 15, "densenet161": 162, "inception_v3": 118,
                         **n_cifar}[arch]



@pytest.mark.parametrize("size,requant", [(32, False), (64, True), (224, False)])
def test_vgg_requantizes_the_pool_only_where_it_averages(size, requant):
    """At 224 the 7x7 pool is the identity and at 32 it replicates the 1x1 map: no
    re-quantizer. At 64 (2x2 -> 7x7) some bins average two values: one re-quantizer at
    classifier_0's 4-bit width. FAQ's 8-bit classifier input is the logits layer's input."""
    module = models.create("vgg16_bn", policy=W4A4, num_classes=10)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    lsbs = _paths(shapes[layers.QUANT], "lsb")
    assert ("classifier_0_input" in lsbs) == requant
    p = module.policy
    assert module.roles()["classifier_input"] == "classifier_4" == module.roles()["last_act"]
    assert p.act_bits("classifier_4") == 8 and p.act_bits("classifier_1") == 4
    if requant:
        assert p.act_bits("classifier_0_input") == 4

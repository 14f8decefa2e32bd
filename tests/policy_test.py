"""The precision policy: data in, bit widths out, clear errors for bad rules."""

import pytest

from faq_jax import models
from faq_jax import policy as policy_lib
from faq_jax.policy import Policy, Rule

ROLES = {"first": "conv1", "last": "fc", "last_act": "layer4_1/act2",
         "classifier_input": "fc_input"}
WEIGHTS = ["conv1", "layer1_0/conv1", "layer4_1/conv2", "fc"]
ACTS = ["act", "layer1_0/act1", "layer4_1/act1", "layer4_1/act2", "fc_input"]


def test_w4a4_paper_policy_first_last_8bit():
    p = policy_lib.W4A4.with_roles(ROLES)
    assert p.weight_bits("conv1") == 8
    assert p.weight_bits("fc") == 8
    assert p.weight_bits("layer1_0/conv1") == 4
    assert p.weight_bits("layer4_1/conv2") == 4
    assert p.act_bits("layer4_1/act2") == 8  # the last ReLU feeds the classifier
    assert p.act_bits("fc_input") == 8
    assert p.act_bits("layer4_1/act1") == 4
    assert p.act_bits("act") == 4
    p.validate(WEIGHTS, ACTS)


def test_w8a8_everything_8bit():
    p = policy_lib.W8A8.with_roles(ROLES)
    assert p.rules == ()
    assert {p.weight_bits(w) for w in WEIGHTS} == {8}
    assert {p.act_bits(a) for a in ACTS} == {8}
    assert p.clip_std(8) is None and p.clip_std(4) == 4.12
    assert p.percentile(8) == 99.99 and p.percentile(4) == 99.9


def test_arbitrary_mix_last_rule_wins():
    p = Policy(w_bits=4, a_bits=8, rules=(
        Rule("layer4_*/*", w_bits=2), Rule("layer4_1/conv2", w_bits=8), ("layer1_*", None, 2),
    )).with_roles(ROLES)
    assert p.weight_bits("layer4_1/conv1") == 2
    assert p.weight_bits("layer4_1/conv2") == 8
    assert p.weight_bits("layer1_0/conv1") == 4
    assert p.act_bits("layer1_0/act1") == 2  # fnmatch: "*" also matches "/"
    assert p.act_bits("layer2_0/act1") == 8


def test_w4a8_mixed_paper_policy():
    p = policy_lib.paper_policy(4, 8).with_roles(ROLES)
    assert p.weight_bits("conv1") == 8 and p.weight_bits("layer1_0/conv1") == 4
    assert {p.act_bits(a) for a in ACTS} == {8}


def test_rule_naming_no_layer_raises():
    p = Policy(rules=(Rule("layer9_9/conv1", w_bits=4),)).with_roles(ROLES)
    with pytest.raises(ValueError, match="layer9_9/conv1.*matches no weight quantizer"):
        p.validate(WEIGHTS, ACTS)
    # An activation-only rule must match an activation, not a weight path.
    p = Policy(rules=(Rule("conv1", a_bits=4),)).with_roles(ROLES)
    with pytest.raises(ValueError, match="matches no activation"):
        p.validate(WEIGHTS, ACTS)


def test_role_missing_from_model_raises():
    p = policy_lib.W4A4.with_roles({"first": "conv1", "last": "fc"})
    with pytest.raises(ValueError, match="no such role"):
        p.validate(WEIGHTS, ACTS)


@pytest.mark.parametrize("kwargs,match", [
    (dict(w_bits=1), "w_bits"),
    (dict(a_bits=40), "a_bits"),
    (dict(input_lsb=-5.5), "input_lsb"),
    (dict(weight_clip_std=0.0), "weight_clip_std"),
    (dict(percentile_8bit=120.0), "percentile_8bit"),
    (dict(rules=(("@nope", 4, None),)), "unknown role"),
])
def test_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Policy(**kwargs)


def test_bad_rule_bits():
    with pytest.raises(ValueError, match="w_bits of rule 'conv1'"):
        Rule("conv1", w_bits=64)


def test_policy_is_hashable():
    assert hash(policy_lib.W4A4.with_roles(ROLES)) == hash(policy_lib.W4A4.with_roles(ROLES))


def test_inception_last_act_role_is_every_relu_the_classifier_reads():
    """Mixed_7c's six branch outputs are concatenated, pooled and read by fc: all at 8 bits
    in a W4A4 network; the ReLUs inside the branches stay at 4."""
    model = models.create("inception_v3", policy=policy_lib.W4A4)
    p = model.policy
    finals = ("branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a",
              "branch3x3dbl_3b", "branch_pool")
    assert [p.act_bits(f"Mixed_7c/{b}/act") for b in finals] == [8] * 6
    inner = ("branch3x3_1", "branch3x3dbl_1", "branch3x3dbl_2")
    assert [p.act_bits(f"Mixed_7c/{b}/act") for b in inner] == [4] * 3
    assert p.act_bits("Mixed_7b/branch_pool/act") == 4


def test_weight_quantizer_is_the_one_recipe():
    """quantize_weight = fixed_point at weight_grid's (b, l): k*std below maxabs_bits,
    max|w| from maxabs_bits up, the width taken from the rules by path."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from faq_jax import quant  # noqa: PLC0415

    w = jax.random.normal(jax.random.key(0), (3, 3, 8, 16)) * 0.05
    p = policy_lib.W4A4.with_roles(ROLES)
    for path, bits, clip in (("layer1_0/conv1", 4, 4.12), ("conv1", 8, None)):
        b, lsb = p.weight_grid(path, w)
        assert b == bits
        assert float(lsb) == float(quant.weight_lsb(w, bits=bits, clip_std=clip))
        np.testing.assert_array_equal(
            p.quantize_weight(path, w), quant.fixed_point(w, bits=bits, lsb=lsb, signed=True))


def test_percentile_threshold_is_maxabs_bits():
    p = Policy(maxabs_bits=6)
    assert p.percentile(6) == p.percentile_8bit and p.percentile(5) == p.percentile_lowbit
    assert p.clip_std(6) is None and p.clip_std(5) == p.weight_clip_std


def test_from_config_builds_the_configured_policy():
    from faq_jax.config import defaults  # noqa: PLC0415

    c = defaults.get_base("resnet18", 4, 4)
    c.quant.rules = (("layer4_*", 2, None),)
    c.calib.percentile_lowbit = 99.5
    p = policy_lib.from_config(c.quant, c.calib)
    assert p == policy_lib.paper_policy(4, 4, rules=(Rule("layer4_*", 2, None),),
                                        percentile_lowbit=99.5)
    c.quant.paper_rules = False
    assert policy_lib.from_config(c.quant, c.calib).rules == (Rule("layer4_*", 2, None),)
    c.quant.enabled = False
    assert policy_lib.from_config(c.quant, c.calib) is None
    c.quant.enabled, c.quant.w_bits = True, 1
    with pytest.raises(ValueError, match="w_bits"):
        policy_lib.from_config(c.quant, c.calib)


def test_method_switch_global_and_per_layer():
    """quant.method picks how steps are set ("faq" | "lsq"), globally or per layer by rule;
    widths and the 8-bit first/last layers are the same policy for both."""
    p = policy_lib.paper_policy(4, 4, method="lsq", lsq_pow2=True).with_roles(ROLES)
    assert p.method_of("layer1_0/conv1") == p.method_of("conv1") == "lsq"
    assert (p.weight_bits("conv1"), p.weight_bits("layer1_0/conv1")) == (8, 4)
    assert p.weight_step_param("conv1") == "weight_log2_step"
    assert p.act_step_param("layer1_0/relu") == "log2_step"
    faq = policy_lib.W4A4.with_roles(ROLES)
    assert faq.weight_step_param("conv1") is None and not faq.uses_lsq()
    mixed = Policy(w_bits=4, a_bits=4, rules=(Rule("layer4_*", method="lsq"),))
    assert mixed.uses_lsq() and mixed.method_of("layer4_1/conv2") == "lsq"
    assert mixed.method_of("layer3_1/conv2") == "faq"
    assert mixed.act_step_param("layer4_1/relu") == "step"  # lsq_pow2=False: s itself
    with pytest.raises(ValueError, match="method.*one of"):
        Policy(method="pact")
    with pytest.raises(ValueError, match="method of rule"):
        Rule("conv1", method="LSQ")


def test_lsq_weight_quantizer_uses_the_learned_step():
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from faq_jax import lsq  # noqa: PLC0415

    w = jax.random.normal(jax.random.key(0), (3, 3, 8, 16)) * 0.05
    p = policy_lib.paper_policy(4, 4, method="lsq", lsq_pow2=True).with_roles(ROLES)
    np.testing.assert_array_equal(p.quantize_weight("layer1_0/conv1", w, -5.2),
                                  lsq.quantize(w, 2.0**-5, bits=4, signed=True))
    with pytest.raises(ValueError, match="learned step"):
        p.quantize_weight("layer1_0/conv1", w)


def test_from_config_reads_the_method_and_defaults_to_faq():
    import ml_collections  # noqa: PLC0415

    from faq_jax.config import defaults  # noqa: PLC0415

    c = defaults.get_base("resnet18", 4, 4)
    assert policy_lib.from_config(c.quant, c.calib).method == "faq"
    c.quant.method, c.quant.lsq_pow2 = "lsq", True
    c.quant.rules = (("@first", None, None, "faq"),)
    p = policy_lib.from_config(c.quant, c.calib)
    assert (p.method, p.lsq_pow2, p.rules[-1]) == ("lsq", True, Rule("@first", method="faq"))
    old = c.quant.to_dict()  # a config.json written before the switch existed
    del old["method"], old["lsq_pow2"]
    assert policy_lib.from_config(ml_collections.ConfigDict(old), c.calib).method == "faq"


def test_describe_names_the_precision():
    assert policy_lib.describe(None) == "fp32"
    assert policy_lib.describe(policy_lib.W4A4) == "W4A4"
    assert policy_lib.describe(policy_lib.W8A8) == "W8A8"
    assert policy_lib.describe(Policy(w_bits=3, a_bits=3)) == "W3A3 all layers"
    mixed = policy_lib.paper_policy(4, 4, rules=(("layer4_*", 2, None), ("@last_act", None, 8),
                                                 ("fc", 3, 3)))
    assert policy_lib.describe(mixed) == "W4A4 + layer4_*: W2, @last_act: A8 and 1 more"
    assert policy_lib.describe(policy_lib.paper_policy(4, 4, method="lsq")) == "W4A4 LSQ"
    assert policy_lib.describe(Policy(w_bits=4, a_bits=4, rules=(Rule("layer4_*", method="lsq"),
                                                                  ))) == \
        "W4A4 all layers + layer4_*: LSQ"

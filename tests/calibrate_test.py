"""The calibrate stage: FAQ's percentile l's, and LSQ's start (weights; the first batch)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import calibrate, layers, lsq
from faq_jax import policy as policy_lib


class Net(nn.Module):
    """conv -> ReLU quantizer -> pooled dense: one weight and one activation site each."""

    policy: policy_lib.Policy | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.Conv(6, (3, 3), padding=((1, 1), (1, 1)), policy=self.policy,
                        name="conv")(x)
        x = layers.ActQuant(policy=self.policy, name="act")(x)
        return layers.Dense(3, policy=self.policy, name="fc")(layers.global_avg_pool(x))


def _act_input(params, x):
    """What the activation quantizer reads in the calibration pass: the float conv + ReLU."""
    conv = layers.Conv(6, (3, 3), padding=((1, 1), (1, 1)))
    return jax.nn.relu(conv.apply({"params": {"kernel": params["conv"]["kernel"]}}, x))


def _batches(seed):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(4, 8, 8, 3)) * (i + 1), jnp.float32) for i in range(3)]


@pytest.mark.parametrize("pow2", [False, True])
def test_lsq_steps_start_from_the_weights_and_the_first_batch(pow2):
    model = Net(policy=policy_lib.Policy(w_bits=4, a_bits=4, method="lsq", lsq_pow2=pow2))
    b = _batches(0)
    v = dict(model.init(jax.random.key(0), b[0]))
    # Weights changed after init (as after a pretraining stage): the start is taken now.
    v["params"] = jax.tree.map(lambda a: a * 1.5, v["params"])
    out = calibrate.initialize(model, v, b)
    p = out["params"]
    w_name, a_name = ("weight_log2_step", "log2_step") if pow2 else ("weight_step", "step")
    enc = (lambda s: np.log2(s)) if pow2 else (lambda s: s)
    for layer in ("conv", "fc"):
        want = enc(lsq.init_step(v["params"][layer]["kernel"], 4, True))
        np.testing.assert_allclose(p[layer][w_name], want, rtol=1e-6)
    first = lsq.init_step(_act_input(v["params"], b[0]), 4, False)
    np.testing.assert_allclose(p["act"][a_name], enc(first), rtol=1e-5)
    # Only the first batch counts: other later batches change nothing.
    again = calibrate.initialize(model, v, [b[0], *_batches(1)])
    np.testing.assert_array_equal(again["params"]["act"][a_name], p["act"][a_name])
    assert "quant" not in out or not out["quant"]
    # batches=None (no calibration): weights still start from the kernels, activations keep
    # their uncalibrated start.
    off = calibrate.initialize(model, v, None)
    np.testing.assert_array_equal(off["params"]["conv"][w_name], p["conv"][w_name])
    np.testing.assert_array_equal(off["params"]["act"][a_name], v["params"]["act"][a_name])


def test_mixed_policy_calibrates_faq_sites_over_all_batches():
    pol = policy_lib.Policy(w_bits=4, a_bits=4, method="lsq",
                            rules=(policy_lib.Rule("act", method="faq"),))
    model = Net(policy=pol)
    b = _batches(0)
    v = dict(model.init(jax.random.key(0), b[0]))
    out = calibrate.initialize(model, v, b)
    faq_only = Net(policy=policy_lib.Policy(w_bits=4, a_bits=4))
    fv = dict(faq_only.init(jax.random.key(0), b[0]))
    fv["params"] = {k: {n: a for n, a in v["params"][k].items() if not lsq.is_step_param(n)}
                    for k in ("conv", "fc")}  # the same weights, without LSQ's steps
    assert jax.tree.map(float, out["quant"]) == \
        jax.tree.map(float, calibrate.calibrate(faq_only, fv, b))
    assert "weight_step" in out["params"]["conv"] and "act" not in out["params"]
    lsq_model = Net(policy=policy_lib.Policy(w_bits=4, a_bits=4, method="lsq"))
    lv = dict(lsq_model.init(jax.random.key(0), b[0]))
    with pytest.raises(ValueError, match="LSQ quantizers.*initialize"):
        calibrate.calibrate(lsq_model, {**lv, "quant": {}}, b)  # would drop LSQ's starts

"""Fig. 1's gradient-noise measure and Fig. 2's weight similarity, on known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import analysis, models, policy, quant, train
from faq_jax.config import demo


def _params(*kernels):
    return {f"layer{i}": {"kernel": jnp.asarray(k, jnp.float32), "bias": jnp.zeros(2)}
            for i, k in enumerate(kernels)}


def test_identity_quantizer_gives_cosine_one():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 3, 4, 8))
    step = rng.normal(size=w0.shape) * 1e-2
    for pol in (None, policy.Policy(w_bits=32, a_bits=32)):
        gn = analysis.GradNoise(pol, ema=0.9)
        state = gn.init(_params(w0))
        for t in range(3):  # a constant step: the EMA points along it at every t
            state, cos = gn.update(state, _params(w0 + t * step), _params(w0 + (t + 1) * step))
            np.testing.assert_allclose(float(cos["layer0"]), 1.0, atol=1e-4)


def test_hand_built_steps():
    # Q at 4 bits with clip_std=None: Δ = max|w| / 7 = 1 -> l = 0, Q rounds to integers.
    pol = policy.Policy(w_bits=4, a_bits=4, maxabs_bits=4)
    gn = analysis.GradNoise(pol, ema=0.5)
    w0, w1, w2 = (np.array([7.0, 0.2, 0.0]), np.array([7.0, 0.6, 0.3]),
                  np.array([7.0, 0.9, 0.4]))
    state = gn.init(_params(w0))
    state, cos1 = gn.update(state, _params(w0), _params(w1))
    # dq1 = [0, 1, 0] -> ema = [0, .5, 0]; δw1 = [0, .4, .3] -> cos = .4 / .5
    np.testing.assert_allclose(float(cos1["layer0"]), 0.8, rtol=1e-5)
    state, cos2 = gn.update(state, _params(w1), _params(w2))
    # dq2 = [0, 0, 0] -> ema = [0, .25, 0]; δw2 = [0, .3, .1] -> cos = .3 / sqrt(.1)
    np.testing.assert_allclose(float(cos2["layer0"]), 0.3 / np.sqrt(0.1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state["layer0"]), [0.0, 0.25, 0.0])


def test_no_quantized_change_gives_zero_and_lower_bits_lower_cosine():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 16, 16))
    steps = [rng.normal(size=w.shape) * 1e-3 + 2e-3 for _ in range(20)]
    means = {}
    for bits in (2, 4, 8):
        gn = analysis.GradNoise(policy.Policy(w_bits=bits, a_bits=8), ema=0.9)
        state, cur, vals = gn.init(_params(w)), w, []
        for s in steps:
            state, cos = gn.update(state, _params(cur), _params(cur + s))
            cur = cur + s
            vals.append(float(cos["layer0"]))
        means[bits] = np.mean(vals[5:])
    assert means[2] < means[4] < means[8] <= 1.0
    gn = analysis.GradNoise(policy.Policy(w_bits=2, a_bits=8))
    _, cos = gn.update(gn.init(_params(w)), _params(w), _params(w + 1e-9))
    assert float(cos["layer0"]) == 0.0  # Q did not move: no quantized step yet


def test_grad_noise_uses_the_layer_bits_of_the_policy():
    pol = policy.paper_policy(4, 4).with_roles({"first": "conv1", "last": "fc"})
    gn = analysis.GradNoise(pol)
    w = jnp.linspace(-1.0, 1.0, 64)
    lsb8 = quant.weight_lsb(w, bits=8, clip_std=None)
    np.testing.assert_array_equal(gn.quantize("conv1", w),
                                  quant.fixed_point(w, bits=8, lsb=lsb8, signed=True))
    assert len(np.unique(np.asarray(gn.quantize("layer1_0/conv1", w)))) <= 15


def test_copy_survives_donation():
    gn = analysis.GradNoise(None)
    p = _params(np.ones((2, 2)))
    old = gn.copy(p)
    jax.jit(lambda x: jax.tree.map(lambda a: a + 1, x), donate_argnums=0)(p)
    np.testing.assert_array_equal(old["layer0"]["kernel"], np.ones((2, 2)))


def test_weight_similarity_self_is_one_and_random_init_near_zero():
    model = models.create("resnet20", num_classes=10)
    x = jnp.zeros((1, 32, 32, 3))
    a = model.init(jax.random.key(0), x)["params"]
    b = model.init(jax.random.key(1), x)["params"]
    same = analysis.weight_similarity(a, a)
    assert same["mean"] == pytest.approx(1.0, abs=1e-9)
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in same["per_layer"].values())
    other = analysis.weight_similarity(a, b)
    assert abs(other["mean"]) < 0.05
    assert set(other["per_layer"]) == set(same["per_layer"]) and "fc" in other["per_layer"]


def test_train_and_evaluate_puts_grad_noise_in_the_summary(tmp_path, capsys):
    c = demo.get_config()
    c.stages = "calibrate,finetune"
    c.batch_size = 32
    c.eval_batch_size = 152
    c.max_steps = 4
    c.max_eval_batches = 1
    c.log_every_steps = 2
    c.checkpoint_every_steps = 1000
    c.analysis.grad_noise = True
    summary = train.train_and_evaluate(c, str(tmp_path))
    gn = summary["grad_noise"]
    kernels = {p for p, _ in analysis._kernel_items(summary["variables"]["params"])}
    assert set(gn["per_layer"]) == kernels and "conv1" in kernels and "fc" in kernels
    vals = np.array(list(gn["per_layer"].values()))
    assert np.all(np.isfinite(vals)) and np.all(np.abs(vals) <= 1.0 + 1e-5)
    assert gn["mean"] == pytest.approx(vals.mean())
    # The EMA is not checkpointed: run again at its last step, the run cannot measure it,
    # says so, and keeps the value measured before.
    capsys.readouterr()
    again = train.train_and_evaluate(c, str(tmp_path))
    assert again["grad_noise"] == gn
    assert "gradient noise (analysis.grad_noise) is not measured again" in capsys.readouterr().err


def test_plots_write_pngs(tmp_path):
    layers = {"conv1": 0.9, "layer1_0/conv1": 0.5, "fc": 0.8}
    analysis.plot_grad_noise({"W8A8": layers, "W4A4": {k: v / 2 for k, v in layers.items()}},
                             tmp_path / "gn.png",
                             curves={"W8A8": {"conv1": [(5, 0.8), (10, 0.9)]}})
    analysis.plot_weight_similarity({"FAQ": {"mean": 0.99, "per_layer": layers}},
                                    tmp_path / "ws.png")
    analysis.plot_accuracy({"fp32": {"train/top1": [(1, 0.2), (2, 0.4)],
                                     "fp32/top1": [(2, 41.0)]},
                            "w4a4": {"train/top1": [(1, 0.4)], "quant_before/top1": [(0, 30.0)],
                                     "quant_after/top1": [(0, 45.0)]}},
                           tmp_path / "acc.png", offsets={"w4a4": 2})
    for name in ("gn.png", "ws.png", "acc.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_zero_norm_neurons_count_as_cosine_zero_in_both_measures():
    """A neuron with all-zero weights has no direction: cosine 0 (not 1), as in Fig. 1's
    measure; weight_similarity counts such neurons."""
    before = np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])  # 2 inputs, 3 neurons
    after = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # neuron 2 -> zero after
    after[:, 2] = 0.0
    np.testing.assert_allclose(analysis.neuron_cosines(before, after), [1.0, 0.0, 0.0])
    sim = analysis.weight_similarity(_params(before), _params(after))
    assert sim["mean"] == pytest.approx(1 / 3) and sim["zero_norm_neurons"] == 2
    flat = analysis.column_cosines(jnp.zeros((4, 1)), jnp.ones((4, 1)), jnp)
    assert float(flat[0]) == 0.0


def test_weight_similarity_and_grad_noise_leave_lsq_steps_out():
    """Fig. 2's cosine compares kernels only; LSQ's steps (in params) are not weights. The
    gradient-noise measure quantizes an LSQ kernel with its learned step."""
    from faq_jax import lsq  # noqa: PLC0415

    k = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32)
    before = {"conv": {"kernel": k, "weight_log2_step": np.float32(-3.0)},
              "act": {"log2_step": np.float32(-2.0)}}
    after = {"conv": {"kernel": k, "weight_log2_step": np.float32(-1.0)},
             "act": {"log2_step": np.float32(5.0)}}
    sim = analysis.weight_similarity(before, after)
    assert sim["mean"] == pytest.approx(1.0) and list(sim["per_layer"]) == ["conv"]
    pol = policy.Policy(w_bits=4, a_bits=4, method="lsq", lsq_pow2=True)
    gn = analysis.GradNoise(pol)
    np.testing.assert_array_equal(gn.quantize("conv", jnp.asarray(k), before),
                                  lsq.quantize(jnp.asarray(k), 0.125, bits=4, signed=True))
    state = gn.init(before)
    assert list(state) == ["conv"]
    moved = {**after, "conv": {**after["conv"], "kernel": k * 1.1}}
    _, cos = gn.update(state, before, moved)
    assert set(cos) == {"conv"} and np.isfinite(float(cos["conv"]))


def test_plots_put_layers_in_numeric_order():
    """Summaries hold layer names sorted as strings; ResNet-110's layer1_10 comes after
    layer1_9 on a plot's axis, not after layer1_1."""
    names = ["layer1_10/conv1", "conv1", "layer1_9/conv2", "layer1_1/conv1", "linear"]
    assert analysis.layer_order(names) == ["conv1", "layer1_1/conv1", "layer1_9/conv2",
                                           "layer1_10/conv1", "linear"]

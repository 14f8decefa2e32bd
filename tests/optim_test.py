"""Learning-rate and batch-size schedules of FAQ.md section 5, in epochs and steps."""

import ml_collections
import numpy as np
import pytest

from faq_jax import optim
from faq_jax.config import defaults


def _sched(c, num_train):
    return optim.batch_schedule(c, num_train, int(c.num_epochs))


def test_4bit_exponential_lr_at_epochs():
    c = defaults.paper_finetune("resnet34", 4)
    num_train = 2560  # 10 steps of 256 per epoch
    lr = optim.lr_schedule(c.optim, _sched(c, num_train))
    for epoch in (0, 1, 30, 109):
        for within in (0, 9):  # constant inside an epoch
            got = float(lr(epoch * 10 + within))
            assert got == pytest.approx(0.0015 * 0.936**epoch, rel=1e-5), epoch
    assert float(lr(109 * 10)) == pytest.approx(1.1e-6, rel=0.05)  # "ends ~1e-6"
    assert c.optim.weight_decay == 1e-4
    assert defaults.paper_finetune("resnet18", 4).optim.weight_decay == 0.5e-4


def test_8bit_constant_lr():
    c = defaults.paper_finetune("resnet50", 8)
    assert c.num_epochs == 1 and c.optim.schedule == "constant"
    lr = optim.lr_schedule(c.optim, _sched(c, 2560))
    assert float(lr(0)) == float(lr(9)) == pytest.approx(1e-4)


def test_step_decay():
    o = defaults.optim_config(1e-3, "step")
    c = ml_collections.ConfigDict(dict(batch_size=256, micro_batch_size=0, batch_schedule=(),
                                       num_epochs=110))
    lr = optim.lr_schedule(o, _sched(c, 2560))
    for epoch, want in [(0, 1e-3), (29, 1e-3), (30, 1e-4), (59, 1e-4), (60, 1e-5), (90, 1e-6),
                        (109, 1e-6)]:
        assert float(lr(epoch * 10)) == pytest.approx(want, rel=1e-5), epoch


def test_batch_size_schedule_256_to_2048():
    # FAQ ablation: 256 doubled at epochs 55, 150, 160, up to 2048, over 165 epochs.
    c = ml_collections.ConfigDict(dict(
        batch_size=256, micro_batch_size=256, num_epochs=165,
        batch_schedule=((0, 256), (55, 512), (150, 1024), (160, 2048))))
    s = _sched(c, 20480)
    assert [s.batch_size(e) for e in (0, 54, 55, 149, 150, 159, 160, 164)] == \
        [256, 256, 512, 512, 1024, 1024, 2048, 2048]
    assert [s.accum(e) for e in (0, 55, 150, 160)] == [1, 2, 4, 8]
    assert [s.steps_in_epoch(e) for e in (0, 55, 150, 160)] == [80, 40, 20, 10]
    starts = s.epoch_starts()
    assert starts[55] == 55 * 80 and starts[150] == 55 * 80 + 95 * 40
    assert s.total_steps() == 55 * 80 + 95 * 40 + 10 * 20 + 5 * 10
    assert s.locate(int(starts[150]) + 3) == (150, 3)
    # Every epoch consumes (nearly) the whole training set in micro-batches.
    assert s.micro_offset(56) == 55 * 80 + 40 * 2
    # The lr still changes per *epoch*, not per step, when epochs hold fewer steps.
    o = defaults.optim_config(0.0015, "exponential")
    lr = optim.lr_schedule(o, s)
    assert float(lr(int(starts[160]))) == pytest.approx(0.0015 * 0.936**160, rel=1e-5)


def test_bad_batch_schedule():
    with pytest.raises(ValueError, match="multiple of the micro-batch"):
        optim.BatchSchedule(num_train=1000, num_epochs=2, micro=64, sizes=((0, 100),))
    with pytest.raises(ValueError, match="start at epoch 0"):
        optim.BatchSchedule(num_train=1000, num_epochs=2, micro=64, sizes=((1, 64),))


def test_sgd_matches_torch_semantics():
    # torch SGD: buf = m*buf + (g + wd*p); p -= lr*buf.
    import jax.numpy as jnp

    o = defaults.optim_config(0.1, "constant", weight_decay=0.01)
    c = ml_collections.ConfigDict(dict(batch_size=1, micro_batch_size=0, batch_schedule=(),
                                       num_epochs=1))
    tx = optim.make_optimizer(o, _sched(c, 100))
    p = {"w": jnp.asarray([1.0, -2.0])}
    state = tx.init(p)
    buf, ref = np.zeros(2), np.asarray([1.0, -2.0])
    for g in ([0.5, 0.5], [-1.0, 0.25]):
        upd, state = tx.update({"w": jnp.asarray(g)}, state, p)
        p = {"w": p["w"] + upd["w"]}
        buf = 0.9 * buf + (np.asarray(g) + 0.01 * ref)
        ref = ref - 0.1 * buf
    np.testing.assert_allclose(p["w"], ref, rtol=1e-6)


def test_per_step_anneal_and_cosine_reach_their_final_lr_whatever_the_epochs():
    """anneal: lr_t = 0.0015 (1e-6 / 0.0015)^(t/T); cosine from lr to final_lr; per step."""
    for epochs in (3, 10):
        c = defaults.paper_finetune("resnet18", 4)
        c.num_epochs, c.optim.schedule, c.optim.final_lr = epochs, "anneal", 1e-6
        b = _sched(c, 2560)  # 10 steps per epoch
        T = b.total_steps()
        lr = optim.lr_schedule(c.optim, b)
        assert T == 10 * epochs
        assert float(lr(0)) == pytest.approx(0.0015)
        assert float(lr(T // 2)) == pytest.approx(np.sqrt(0.0015 * 1e-6), rel=1e-4)
        assert float(lr(T)) == pytest.approx(1e-6, rel=1e-4)
        assert float(lr(1)) < float(lr(0))  # decays inside the first epoch
        c.optim.schedule, c.optim.lr, c.optim.final_lr = "cosine", 0.01, 0.0
        lr = optim.lr_schedule(c.optim, b)
        assert [float(lr(t)) for t in (0, T // 2, T)] == pytest.approx([0.01, 0.005, 0.0],
                                                                     abs=1e-9)


def test_weight_decay_spares_lsq_steps_and_is_optax_elsewhere():
    """LSQ's learned steps get no weight decay; every other parameter gets optax's coupled
    decay, value and (empty) state alike, so FAQ networks train and checkpoint unchanged."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import optax  # noqa: PLC0415

    p = {"conv": {"kernel": jnp.asarray([1.0, -2.0]), "weight_log2_step": jnp.asarray(-3.0)},
         "act": {"step": jnp.asarray(0.5)}, "act2": {"log2_step": jnp.asarray(-1.0)},
         "fc": {"weight_step": jnp.asarray(0.1), "bias": jnp.asarray([0.3])}}
    g = jax.tree.map(jnp.ones_like, p)
    upd, state = optim.coupled_weight_decay(0.01).update(g, optim.coupled_weight_decay(
        0.01).init(p), p)
    ref, ref_state = optax.add_decayed_weights(0.01).update(g, optax.EmptyState(), p)
    for path in ("conv/kernel", "fc/bias"):
        a, b = path.split("/")
        np.testing.assert_array_equal(upd[a][b], ref[a][b])
    for a, b in (("conv", "weight_log2_step"), ("act", "step"), ("act2", "log2_step"),
                 ("fc", "weight_step")):
        np.testing.assert_array_equal(upd[a][b], g[a][b])  # gradient only
    assert state == ref_state == optax.EmptyState()

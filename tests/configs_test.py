"""Every config file loads, names its arch and bits, and carries the paper's values."""

import importlib.util
import pathlib
import re

import pytest

from faq_jax import models, optim
from faq_jax import policy as policy_lib
from faq_jax.config import check as config_check

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = sorted(ROOT.glob("configs/*.py"))
ARCH_PREFIX = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r152": "resnet152",
               "inceptionv3": "inception_v3", "densenet161": "densenet161",
               "vgg16bn": "vgg16_bn", "r20": "resnet20"}


def load(path, arg=None):
    """Loads a config file by path, as --config=PATH[:arg] does."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_there_is_a_config_per_table1_row():
    names = {p.stem for p in CONFIGS}
    assert {"r18_w8a8", "r18_w4a4", "r34_w8a8", "r34_w4a4", "r50_w8a8", "r50_w4a4", "r152_w8a8",
            "inceptionv3_w8a8", "densenet161_w8a8", "vgg16bn_w8a8"} <= names
    assert {"r18_w4a4_ep60_b400", "r18_w4a4_stepdecay", "r18_w4a4_batchsched",
            "r18_w4a4_wd1e-4", "r18_w4a4_nocalib", "r18_w4a4_scratch"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_matches_its_name(path):
    c = load(path)
    assert c.arch in models.ARCHS
    m = re.match(r"(?:cifar10_|digits_)?([a-z0-9]+)_(?:w(\d+)a(\d+)|fp32)", path.stem)
    assert m, path.stem
    assert ARCH_PREFIX[m.group(1)] == c.arch
    if m.group(2):
        assert c.quant.enabled
        assert (c.quant.w_bits, c.quant.a_bits) == (int(m.group(2)), int(m.group(3)))
    else:
        assert not c.quant.enabled
    doc = path.read_text().split('"""')[1]
    assert "python -m faq_jax.main --config=configs/" + path.name in doc
    policy_lib.from_config(c.quant, c.calib)  # valid widths and rules
    assert load(path, "runlocal").max_steps == 2


@pytest.mark.parametrize("name", ["r18_w8a8", "r34_w8a8", "r50_w8a8", "r152_w8a8",
                                  "inceptionv3_w8a8", "densenet161_w8a8", "vgg16bn_w8a8"])
def test_8bit_recipe_values(name):
    c = load(ROOT / "configs" / f"{name}.py")
    assert (c.num_epochs, c.optim.lr, c.optim.schedule) == (1, 1e-4, "constant")
    assert (c.batch_size, c.optim.momentum, c.optim.weight_decay) == (256, 0.9, 1e-4)
    assert c.calib.num_batches == 5 and c.calib.percentile_8bit == 99.99
    assert c.quant.bn_scale_lsb == -4 and c.quant.bn_shift_bits == 32
    if name == "inceptionv3_w8a8":
        assert (c.data.image_size, c.data.eval_resize) == (299, 342)
        assert c.quant.input_lsb == -7  # its input is 2p - 1, not the mean/std image
    else:
        assert c.quant.input_lsb == -5


@pytest.mark.parametrize("name,wd", [("r18_w4a4", 0.5e-4), ("r34_w4a4", 1e-4),
                                     ("r50_w4a4", 1e-4)])
def test_4bit_recipe_values(name, wd):
    c = load(ROOT / "configs" / f"{name}.py")
    assert (c.num_epochs, c.optim.lr, c.optim.schedule, c.optim.decay_rate) == \
        (110, 0.0015, "exponential", 0.936)
    assert c.optim.weight_decay == wd
    assert c.quant.weight_clip_std == 4.12 and c.calib.percentile_lowbit == 99.9
    assert c.quant.paper_rules  # first/last layer 8-bit, last ReLU and FC input 8-bit


def test_ablations():
    cfg = {p.stem: load(p) for p in CONFIGS if p.stem.startswith("r18_w4a4_")}
    e60 = cfg["r18_w4a4_ep60_b400"]
    assert (e60.num_epochs, e60.batch_size) == (60, 400)
    # "the same initial and final learning rates" as the 110-epoch run (paper, section 4)
    last110 = 0.0015 * 0.936 ** 109
    assert e60.optim.lr * e60.optim.decay_rate ** 59 == pytest.approx(last110, rel=1e-3)
    s = cfg["r18_w4a4_stepdecay"].optim
    assert (s.lr, s.schedule, tuple(s.step_epochs), s.step_factor) == \
        (1e-3, "step", (30, 60, 90), 0.1)
    b = cfg["r18_w4a4_batchsched"]
    assert b.num_epochs == 165 and tuple(map(tuple, b.batch_schedule)) == \
        ((0, 256), (55, 512), (150, 1024), (160, 2048))
    assert cfg["r18_w4a4_wd1e-4"].optim.weight_decay == 1e-4
    assert not cfg["r18_w4a4_nocalib"].calib.enabled
    r = cfg["r18_w4a4_scratch"]
    assert (r.init, r.optim.lr, r.optim.decay_rate) == ("random", 0.1, 0.901)
    step = load(ROOT / "configs" / "r18_w4a4_scratch.py", "step")
    assert tuple(step.optim.step_epochs) == (30, 60, 85, 95, 95)
    lrs = [float(optim.lr_at_epoch(step.optim, e)) for e in (29, 30, 94, 95, 109)]
    assert lrs == pytest.approx([0.1, 0.01, 1e-4, 1e-6, 1e-6])


def _with_checkpoint(c, tmp_path):
    """The paper configs start from a converted checkpoint: point them at an existing folder."""
    if c.init == "pretrained" and "pretrain" not in c.stages:
        c.init_checkpoint = str(tmp_path)
    return c


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_on_1_2_4_8_devices(path, tmp_path):
    c = _with_checkpoint(load(path), tmp_path)
    for n in (1, 2, 4, 8):
        config_check.validate(c, num_devices=n)


def test_batch_size_not_divisible_names_the_nearest_valid_values(tmp_path):
    c = _with_checkpoint(load(ROOT / "configs" / "r18_w4a4.py"), tmp_path)
    c.batch_size = 250
    with pytest.raises(ValueError, match=r"batch_size=250.*8 devices.*248 or 256"):
        config_check.validate(c, num_devices=8)
    c.batch_size, c.micro_batch_size = 256, 96
    with pytest.raises(ValueError, match=r"micro_batch_size=96.*nearest divisors: 64 or 128"):
        config_check.validate(c, num_devices=8)
    c.micro_batch_size, c.eval_batch_size = 0, 250  # any eval batch: evaluation pads it
    config_check.validate(c, num_devices=8)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_first_train_step_lowers_on_8_devices(path, tmp_path):
    """Every config's real first step (its batch, image size, policy) lowers on 8 devices."""
    import jax
    import jax.numpy as jnp

    from faq_jax import sharding, steps

    assert jax.device_count() == 8
    c = _with_checkpoint(load(path), tmp_path)
    policy = config_check.validate(c).policy
    model = models.create(c.arch, policy=policy, num_classes=c.num_classes)
    num_train = c.data.num_train or 50 * c.batch_size
    batches = optim.batch_schedule(c, num_train, int(c.num_epochs))
    tx = optim.make_optimizer(c.optim, batches)
    size = c.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    key = jax.random.key(0)
    state = jax.eval_shape(lambda x: steps.create_state(model.init(key, x), tx, key), x)
    batch = {"image": jax.ShapeDtypeStruct((batches.accum(0), batches.micro, size, size, 3),
                                           jnp.float32),
             "label": jax.ShapeDtypeStruct((batches.accum(0), batches.micro), jnp.int32)}
    mesh = sharding.make_mesh()
    repl = sharding.replicated(mesh)
    step = jax.jit(steps.make_train_step(model, tx), in_shardings=(repl, sharding.batch_sharding(
        mesh, 1)), out_shardings=(repl, repl), donate_argnums=0)
    lowered = step.lower(state, batch)
    assert "sharding" in lowered.as_text()[:100_000]


def _lr_at_epoch_starts(c, num_train):
    """The learning rate the optimizer uses at the first step of every epoch."""
    batches = optim.batch_schedule(c, num_train, int(c.num_epochs))
    schedule = optim.lr_schedule(c.optim, batches)
    return [float(schedule(s)) for s in batches.epoch_starts()[:-1]]


def test_schedules_keep_the_paper_first_and_last_learning_rate():
    """Paper: "the same initial and final learning rates in all cases" (0.0015 -> 1.1e-6)."""
    last110 = 0.0015 * 0.936 ** 109
    for name in ("r18_w4a4", "r18_w4a4_ep60_b400", "r18_w4a4_batchsched"):
        c = load(ROOT / "configs" / f"{name}.py")
        lrs = _lr_at_epoch_starts(c, 1_281_167)
        assert lrs[0] == pytest.approx(0.0015), name
        assert lrs[-1] == pytest.approx(last110, rel=2e-3), name
        assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)), name
    # The batch-size phases (512 from epoch 55, 1024 from 150, 2048 from 160) train at
    # learning rates of the 110-epoch run's last third, not at ~1e-7.
    c = load(ROOT / "configs" / "r18_w4a4_batchsched.py")
    lrs = _lr_at_epoch_starts(c, 1_281_167)
    assert lrs[55] == pytest.approx(1.34e-4, rel=1e-2)
    assert lrs[150] == pytest.approx(2.05e-6, rel=1e-2)
    assert lrs[160] == pytest.approx(1.32e-6, rel=1e-2)
    assert min(lrs) > 1e-6


@pytest.mark.parametrize("name", ["r18_w4a4", "r34_w4a4", "r50_w4a4", "r18_w8a8"])
def test_built_policy_keeps_first_and_last_layers_at_8_bits(name):
    """The policy the config builds, bound to the real model: which quantizers are 8-bit."""
    import jax
    import jax.numpy as jnp

    c = load(ROOT / "configs" / f"{name}.py")
    model = models.create(c.arch, policy=policy_lib.from_config(c.quant, c.calib),
                          num_classes=c.num_classes)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    weights, acts = models.quant_sites(shapes)
    pol = model.policy
    w8 = sorted(p for p in weights if pol.weight_bits(p) == 8)
    a8 = sorted(p for p in acts if pol.act_bits(p) == 8)
    if c.quant.w_bits == 8:
        assert len(w8) == len(weights) and len(a8) == len(acts)
        return
    last_relu = {"resnet18": "layer4_1/act2", "resnet34": "layer4_2/act2",
                 "resnet50": "layer4_2/act3"}[c.arch]  # after the last block's residual add
    assert w8 == ["conv1", "fc"]
    assert a8 == ["fc_input", last_relu]
    assert {pol.weight_bits(p) for p in weights if p not in w8} == {4}
    assert {pol.act_bits(p) for p in acts if p not in a8} == {4}

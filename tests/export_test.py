"""The integer export is the simulated network: bit for bit against the float64 simulation.

Small instances of every zoo family (ResNet basic/bottleneck, ResNet-20 with option-B and
option-A shortcuts, VGG, DenseNet, Inception blocks) with random weights, random BN
statistics and calibrated l's; the executor is instrumented so every intermediate is checked
to be an integer tensor.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import export, keypaths, layers, models
from faq_jax import policy as policy_lib
from faq_jax.export import cli as export_cli
from faq_jax.export import executor
from faq_jax.models import densenet, inception, resnet, resnet_cifar, vgg


class MiniInception(nn.Module):
    """Stem + InceptionA (avg-pool branch, den 9) + InceptionB (max-pool of a mixed-l concat)."""

    policy: policy_lib.Policy | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm, act, dense = layers.defs(self.policy, None, train)
        basic = functools.partial(inception.BasicConv2d, conv=conv, norm=norm, act=act)
        x = layers.InputQuant(policy=self.policy, name="input_quant")(x)
        x = basic(16, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
        x = inception.InceptionA(basic=basic, act=act, requant_input=False, pool_features=8,
                                 name="Mixed_5b")(x)
        x = inception.InceptionB(basic=basic, act=act, name="Mixed_6a")(x)
        x = act(relu=False, name="fc_input")(layers.global_avg_pool(x))
        return dense(10, name="fc")(x)


def _small(family: str, policy: policy_lib.Policy) -> tuple[nn.Module, tuple[int, int, int]]:
    """A small instance of a zoo family's module classes, and its input shape."""
    if family in ("resnet20", "cifar_resnet20"):
        return models.create(family, policy=policy, num_classes=10), (32, 32, 3)
    if family == "basic":
        m = resnet.ResNet(stage_sizes=(1, 1, 1, 1), num_classes=10)
    elif family == "bottleneck":
        m = resnet.ResNet(stage_sizes=(1, 1, 1, 1), bottleneck=True, num_classes=10)
    elif family == "vgg":  # 40x40 -> 10x10 -> adaptive 7x7: bins of 2 and 3 (den 4, 6, 9)
        m = vgg.VGG(cfg=(8, "M", 16, "M"), num_classes=10)
        return m.clone(policy=policy.with_roles(m.roles())), (40, 40, 3)
    elif family == "densenet":
        m = densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                              bn_size=2, num_classes=10)
    elif family == "inception":
        return MiniInception(policy=policy), (35, 35, 3)
    else:
        raise ValueError(family)
    return m.clone(policy=policy.with_roles(m.roles())), (32, 32, 3)


def _check_integer(node, t: executor.IntTensor) -> None:
    assert t.q.dtype.kind in "iu", (node, t.q.dtype)
    assert np.asarray(t.d).dtype.kind in "iu", (node, np.asarray(t.d).dtype)
    assert isinstance(t.l, int)


def _simulate_f64(model, variables, codes: np.ndarray, l_in: int) -> np.ndarray:
    with jax.enable_x64(True):
        x = jnp.ldexp(jnp.asarray(codes, jnp.float64), l_in)
        y = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
        assert y.dtype == jnp.float64
        return np.asarray(y)


def _roundtrip_and_compare(model, shape, tmp_path, batch: int = 2, seed: int = 0):
    variables = export.random_variables(model, shape, seed=seed)
    net = export.export(model, variables, input_shape=shape)
    export.save(net, str(tmp_path / "net.npz"))
    net = export.load(str(tmp_path / "net.npz"))
    x = np.asarray(jax.random.normal(jax.random.key(seed + 7), (batch, *shape)))
    codes = executor.input_codes(net, x)
    q, lsb = executor.run(net, codes, trace=_check_integer)
    ref = _simulate_f64(model, variables, codes, net.nodes[0]["l"])
    np.testing.assert_array_equal(np.ldexp(q.astype(np.float64), lsb), ref)
    return net, variables, codes, q, lsb


_slow = pytest.mark.slow


@pytest.mark.parametrize("family,w,a", [
    ("resnet20", 4, 4), pytest.param("resnet20", 8, 8, marks=_slow),
    ("cifar_resnet20", 4, 4), ("cifar_resnet20", 8, 8),
    pytest.param("basic", 4, 4, marks=_slow), pytest.param("vgg", 8, 8, marks=_slow),
    ("densenet", 4, 4), ("inception", 8, 8)])
def test_bit_exact_against_float64_simulation(family, w, a, tmp_path):
    # Inception's input quantizer reads [-1, 1]: its configs use input l = -7.
    lsb = -7 if family == "inception" else -5
    model, shape = _small(family, policy_lib.paper_policy(w, a, input_lsb=lsb))
    _roundtrip_and_compare(model, shape, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bottleneck"])
def test_bit_exact_bottleneck(family, tmp_path):
    model, shape = _small(family, policy_lib.W4A4)
    _roundtrip_and_compare(model, shape, tmp_path, batch=1)


@pytest.mark.slow
def test_bit_exact_full_inception_v3(tmp_path):
    # The aux head is training-only and is not calibrated below 299x299: leave it out.
    model = models.create("inception_v3", policy=policy_lib.W8A8, num_classes=10,
                          transform_input=False, aux_logits=False)
    _roundtrip_and_compare(model, (75, 75, 3), tmp_path, batch=1)


def test_option_a_shortcut_is_one_graph_op(tmp_path):
    """cifar_resnet20's two option-A shortcuts: strided slice + zero channels, exact codes."""
    model, shape = _small("cifar_resnet20", policy_lib.W8A8)
    net, _, codes, _, _ = _roundtrip_and_compare(model, shape, tmp_path, batch=1)
    shortcuts = [n for n in net.nodes if n["op"] == "subsample_pad"]
    assert [(n["args"], n["shape_out"]) for n in shortcuts] == [
        ([2, 8, 8], [16, 16, 32]), ([2, 16, 16], [8, 8, 64])]
    seen = {}
    executor.run(net, codes, trace=lambda node, t: seen.__setitem__(node["id"], t))
    for n in shortcuts:
        src, out = seen[n["inputs"][0]], seen[n["id"]]
        assert out.l == src.l and out.q.dtype == np.int64
        c = src.q.shape[-1]
        np.testing.assert_array_equal(out.q[..., c // 2:c // 2 + c], src.q[:, ::2, ::2, :])
        assert not out.q[..., :c // 2].any() and not out.q[..., c // 2 + c:].any()
        consumer = next(m for m in net.nodes if n["id"] in m["inputs"])
        assert consumer["op"] == "add"  # the residual add aligns it with the BN output


def test_file_holds_integer_constants(tmp_path):
    model, shape = _small("resnet20", policy_lib.W4A4)
    net, *_ = _roundtrip_and_compare(model, shape, tmp_path)
    assert net.graph["format"] == export.FORMAT and net.graph["version"] == export.VERSION
    for node in net.nodes:
        if node["op"] in ("conv", "dense"):
            w = net.arrays[node["w"]]
            assert w.dtype == np.int8 and np.abs(w).max() <= 2 ** (node["w_bits"] - 1) - 1
        if node["op"] == "bn":
            assert net.arrays[node["s"]].dtype == np.int8 and node["s_l"] == -4
            assert net.arrays[node["t"]].dtype == np.int32 and node["t_l"] == -16
    bits = {n["path"]: n["w_bits"] for n in net.nodes if n["op"] in ("conv", "dense")}
    assert bits["conv1"] == bits["fc"] == 8 and bits["layer2_0/conv1"] == 4


def test_requantize_is_add_half_then_shift():
    q = np.arange(-1000, 1000, dtype=np.int64)
    t = executor.IntTensor(q, -8)
    got = executor.requantize(t, 8, -4, signed=True, relu=False)
    want = np.clip((q + 8) >> 4, -127, 127)
    np.testing.assert_array_equal(got, want)
    ref = np.clip(np.floor(q / 16 + 0.5), -127, 127)
    np.testing.assert_array_equal(got, ref)


def test_average_rounding_rule_matches_float_mean():
    """Integer rule floor(2S 2^k + d) / 2d vs float mean then floor(x 2^-l + 1/2)."""
    rng = np.random.default_rng(0)
    for d in (9, 25, 49, 6):
        s = rng.integers(0, 255 * d, 200_000).astype(np.int64)
        for k in (-2, -1, 0, 1):
            got = executor.requantize(executor.IntTensor(s, k, d), 16, 0, False, False)
            mean32 = (np.ldexp(s.astype(np.float32), k) / np.float32(d)).astype(np.float32)
            ref32 = np.clip(np.floor(mean32 + np.float32(0.5)), 0, 2**16 - 1)
            ref64 = np.clip(np.floor(np.ldexp(s.astype(np.float64), k) / d + 0.5), 0, 2**16 - 1)
            np.testing.assert_array_equal(got, ref64)
            assert np.mean(got != ref32) < 1e-3


def test_errors_name_the_problem():
    model, shape = _small("resnet20", policy_lib.W8A8)
    variables = export.random_variables(model, shape)
    with pytest.raises(export.ExportError, match="no precision policy"):
        export.export(models.create("resnet20", num_classes=10), variables)
    with pytest.raises(export.ExportError, match="calibrate"):
        export.export(model, {k: v for k, v in variables.items() if k != "quant"})
    bad = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 1e6 if jax.tree_util.keystr(p).endswith("['bn1']['bias']") else a,
        variables["params"])
    with pytest.raises(export.ExportError, match="bn1 BN shift t overflows 32 bits"):
        export.export(model, {**variables, "params": bad})


def test_cli_refuses_an_uncalibrated_workdir(tmp_path, capsys):
    import json  # noqa: PLC0415

    (tmp_path / "experiment.json").write_text(json.dumps(dict(
        arch="resnet20", num_classes=10, dataset="cifar10", quant=True, w_bits=8, a_bits=8,
        rules=[])))
    (tmp_path / "summary.json").write_text(json.dumps({"fp32": {"top1": 90.0}}))
    with pytest.raises(export.ExportError, match="never calibrated"):
        export_cli.load_workdir(str(tmp_path))
    with pytest.raises(SystemExit) as exit_:  # the CLI: one line, status 1
        export_cli.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "net.npz")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error: ") and "never calibrated" in err
    assert "Traceback" not in err and not (tmp_path / "net.npz").exists()


def test_wide_codes_keep_their_width(tmp_path):
    """Weights, BN scales and input codes wider than 8 bits are stored and run unnarrowed."""
    pol = policy_lib.paper_policy(12, 8, bn_scale_bits=16, bn_scale_lsb=-12, input_bits=12,
                                  input_lsb=-9)
    model, shape = _small("resnet20", pol)
    net, _, codes, _, _ = _roundtrip_and_compare(model, shape, tmp_path)
    assert codes.dtype == np.int16 and np.abs(codes).max() > 127
    s = [net.arrays[n["s"]] for n in net.nodes if n["op"] == "bn"]
    assert all(a.dtype == np.int16 for a in s) and max(np.abs(a).max() for a in s) > 127
    w = [net.arrays[n["w"]] for n in net.nodes if n["op"] == "conv" and n["w_bits"] == 12]
    assert w and all(a.dtype == np.int16 for a in w)


def test_uncalibrated_network_is_refused_unless_asked():
    model, shape = _small("resnet20", policy_lib.W4A4)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)))
    with pytest.raises(export.ExportError, match="uncalibrated default"):
        export.export(model, variables, input_shape=shape)
    net = export.export(model, variables, input_shape=shape, allow_uncalibrated=True)
    assert any(n["op"] == "requant" for n in net.nodes)


def test_extreme_l_is_an_overflow_error_not_garbage():
    """An activation calibrated on all-zero inputs gets l near -130: no int64 alignment."""
    model, shape = _small("resnet20", policy_lib.W8A8)
    variables = export.random_variables(model, shape)
    quant_vars = jax.tree.map(lambda v: v, variables["quant"])
    quant_vars["layer1_0"]["act1"]["lsb"] = jnp.asarray(-134.0)
    net = export.export(model, {**variables, "quant": quant_vars}, input_shape=shape)
    codes = np.ones((1, *shape), np.int8)
    with pytest.raises(executor.IntegerOverflowError, match="layer1_0.*beyond int64"):
        executor.run(net, codes)


class PoolCalls(nn.Module):
    """The pooling helpers called with keywords and positionals in various spellings."""

    policy: policy_lib.Policy | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = self.policy
        x = layers.InputQuant(policy=p, name="input_quant")(x)
        x = layers.Conv(8, (3, 3), padding=((1, 1), (1, 1)), policy=p, name="conv")(x)
        x = layers.ActQuant(policy=p, name="act")(layers.BatchNorm(policy=p, name="bn")(x, train))
        a = layers.avg_pool(x, 3, stride=1, padding=1, count_include_pad=False)
        b = layers.avg_pool(x, 3, 1, 1, False)
        c = layers.max_pool(x, window=3, stride=2, padding=1)
        a = layers.ActQuant(relu=False, policy=p, name="a")(a)
        b = layers.ActQuant(relu=False, policy=p, name="b")(b)
        y = layers.ActQuant(relu=False, policy=p, name="sum")(a + b)
        y = layers.max_pool(y, 3, 2, padding=1) + c
        y = layers.ActQuant(relu=False, policy=p, name="fc_input")(layers.global_avg_pool(y))
        return layers.Dense(10, policy=p, name="fc")(y)


def test_pool_arguments_read_the_same_however_spelled(tmp_path):
    model = PoolCalls(policy=policy_lib.W8A8)
    net, *_ = _roundtrip_and_compare(model, (12, 12, 3), tmp_path)
    pools = [n for n in net.nodes if n["op"] in ("avg_pool", "max_pool")]
    assert [n["args"] for n in pools if n["op"] == "avg_pool"] == [[3, 1, 1, False]] * 2


LSQ_POW2 = policy_lib.paper_policy(4, 4, method="lsq", lsq_pow2=True)


def _tiny_resnet(policy: policy_lib.Policy) -> tuple[nn.Module, tuple[int, int, int]]:
    """Two one-block stages (option-B shortcut: a 1x1 conv + BN), width 4, 8x8 input."""
    m = resnet_cifar.ResNetCifar(stage_sizes=(1, 1), width=4, num_classes=3, shortcut="B",
                                 classifier="fc")
    return m.clone(policy=policy.with_roles(m.roles())), (8, 8, 3)


def test_lsq_power_of_two_network_is_bit_exact(tmp_path):
    """An LSQ network with power-of-two steps is a fixed-point network: l = log2 s, weight
    codes over LSQ's whole signed range (down to -2^(b-1))."""
    model, shape = _tiny_resnet(LSQ_POW2)
    variables = export.random_variables(model, shape)
    assert "quant" not in variables or not variables["quant"]  # every step is in params
    params = jax.tree.map(lambda a: a, variables["params"])
    k = np.array(params["layer1_0"]["conv1"]["kernel"])
    k[0, 0, 0, 0] = -100.0  # clipped to the most negative code, -8
    params["layer1_0"]["conv1"]["kernel"] = jnp.asarray(k)
    variables = {**variables, "params": params}
    net = export.export(model, variables, input_shape=shape)
    export.save(net, str(tmp_path / "net.npz"))
    net = export.load(str(tmp_path / "net.npz"))
    node = next(n for n in net.nodes if n.get("path") == "layer1_0/conv1")
    w = net.arrays[node["w"]]
    assert w.min() == -8 and w.max() <= 7 and node["w_l"] == round(float(
        params["layer1_0"]["conv1"]["weight_log2_step"]))
    act = next(n for n in net.nodes if n.get("path") == "layer1_0/act1")
    assert act["l"] == round(float(params["layer1_0"]["act1"]["log2_step"]))
    x = np.asarray(jax.random.normal(jax.random.key(7), (8, *shape)))
    codes = executor.input_codes(net, x)
    q, lsb = executor.run(net, codes, trace=_check_integer)
    ref = _simulate_f64(model, variables, codes, net.nodes[0]["l"])
    np.testing.assert_array_equal(np.ldexp(q.astype(np.float64), lsb), ref)


def test_lsq_steps_that_are_not_powers_of_two_are_refused_naming_the_layer():
    pol = policy_lib.paper_policy(4, 4, method="lsq", lsq_pow2=False)
    model, shape = _tiny_resnet(pol)
    variables = export.random_variables(model, shape)
    with pytest.raises(export.ExportError, match=r"conv1: its learned LSQ weight step .* not "
                       r"a power of two.*lsq_pow2=True"):
        export.export(model, variables, input_shape=shape)
    # Weight steps that happen to be powers of two pass; the first activation's does not.
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(0.125, a.dtype) if keypaths.key_name(p[-1]) == "weight_step"
        else a, variables["params"])
    with pytest.raises(export.ExportError, match=r"^act: its learned LSQ activation step"):
        export.export(model, {**variables, "params": params}, input_shape=shape)


def test_int_tensordot_is_exact_in_every_precision_tier():
    """float32 below 2^24, float64 below 2^53, int64 beyond: always the int64 result."""
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (3, 5, 64))
    for top in (127, 2**20, 2**40):  # bounds in the float32, float64 and int64 tiers
        w = rng.integers(-top, top + 1, (64, 7), dtype=np.int64)
        w[:, 0] = top  # the largest sum |w| the tier allows
        want = np.einsum("abk,kc->abc", x.astype(object), w.astype(object))
        got = executor.int_tensordot(x, w, axes=([2], [0]))
        assert got.dtype == np.int64 and (got.astype(object) == want).all()

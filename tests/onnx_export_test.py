"""The ONNX export runs in onnxruntime and equals the integer executor bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from faq_jax import export, models
from faq_jax import policy as policy_lib

ort = pytest.importorskip("onnxruntime")
onnx_writer = pytest.importorskip("faq_jax.export.onnx_writer")


def _session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch,w,a", [("resnet20", 4, 4), ("resnet20", 8, 8),
                                      ("cifar_resnet20", 4, 4), ("cifar_resnet20", 8, 8)])
def test_onnx_integer_model_equals_executor(arch, w, a):
    model = models.create(arch, policy=policy_lib.paper_policy(w, a), num_classes=10)
    net = export.export(model, export.random_variables(model, (32, 32, 3)),
                        input_shape=(32, 32, 3))
    codes = np.random.default_rng(0).integers(-127, 128, (3, 32, 32, 3)).astype(np.int8)
    q, lsb = export.run(net, codes)
    proto = onnx_writer.to_onnx(net)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert int(meta["logits_l"]) == lsb and int(meta["input_l"]) == net.nodes[0]["l"]
    float_ops = {"Conv", "Gemm", "Relu", "AveragePool", "QuantizeLinear"}
    assert not float_ops & {n.op_type for n in proto.graph.node}
    out = _session(proto).run(None, {"x_codes": codes.transpose(0, 3, 1, 2)})[0]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, q)


def test_onnx_float_baseline_runs_and_mostly_agrees():
    model = models.create("resnet20", policy=policy_lib.W8A8, num_classes=10)
    net = export.export(model, export.random_variables(model, (32, 32, 3)),
                        input_shape=(32, 32, 3))
    codes = np.random.default_rng(1).integers(-100, 100, (4, 32, 32, 3)).astype(np.int8)
    x = np.ldexp(codes.astype(np.float32), net.nodes[0]["l"]).transpose(0, 3, 1, 2)
    out = _session(onnx_writer.to_onnx(net, float_mode=True)).run(None, {"x": x})[0]
    q, lsb = export.run(net, codes)
    assert out.shape == q.shape and out.dtype == np.float32
    # No activation quantizers in the float graph: close to, not equal to, the integer logits.
    ref = np.ldexp(q.astype(np.float64), lsb)
    assert np.all(np.isfinite(out)) and np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("family", ["densenet", "vgg", "inception"])
def test_onnx_other_families_equal_executor(family):
    """avg pools (d = 4, 9, per-bin d), mixed-l concats, max pools of wide codes."""
    from export_test import _small  # noqa: PLC0415 - tests/ is on sys.path (rootdir conftest)

    model, shape = _small(family, policy_lib.paper_policy(4, 4) if family == "densenet"
                          else policy_lib.W8A8)
    net = export.export(model, export.random_variables(model, shape), input_shape=shape)
    codes = np.random.default_rng(2).integers(-127, 128, (2, *shape)).astype(np.int8)
    q, _ = export.run(net, codes)
    out = _session(onnx_writer.to_onnx(net)).run(None, {"x_codes": codes.transpose(0, 3, 1, 2)})
    np.testing.assert_array_equal(out[0], q)


@pytest.mark.parametrize("arch", ["resnet20", "cifar_resnet20"])
def test_onnx_model_passes_the_checker(arch):
    onnx = pytest.importorskip("onnx")
    model = models.create(arch, policy=policy_lib.W4A4, num_classes=10)
    net = export.export(model, export.random_variables(model, (32, 32, 3)),
                        input_shape=(32, 32, 3))
    for float_mode in (False, True):
        proto = onnx_writer.to_onnx(net, float_mode=float_mode)
        onnx.checker.check_model(proto, full_check=True)
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["N", 10]


def test_onnx_refuses_operands_wider_than_8_bits():
    for kw, match in (({"w_bits": 12}, "12-bit weights"),
                      ({"input_bits": 12, "input_lsb": -9}, "12-bit input")):
        pol = policy_lib.paper_policy(kw.pop("w_bits", 8), 8, **kw)
        model = models.create("resnet20", policy=pol, num_classes=10)
        net = export.export(model, export.random_variables(model, (32, 32, 3)),
                            input_shape=(32, 32, 3))
        with pytest.raises(export.ExportError, match=match):
            onnx_writer.to_onnx(net)

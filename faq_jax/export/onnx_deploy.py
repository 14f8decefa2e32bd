"""Deployment form of an exported integer network: standard int8 ONNX (QDQ) for onnxruntime.

``export.onnx_writer`` writes the fixed-point arithmetic op for op (``ConvInteger`` plus integer
requantization): bit-exact with ``export.executor``, but onnxruntime runs it on slow paths. This
module writes the same fine-tuned network in the QDQ format (QuantizeLinear /
DequantizeLinear around float Conv, Gemm, Add and pools) that onnxruntime's QDQ transformer
fuses into QLinearConv, QLinearAdd, QLinearAveragePool, ... (MLAS int8 kernels, VNNI):

- every activation is uint8 codes with a power-of-two scale ``2^l`` (the network's l):
  zero point 0 for unsigned codes, 128 for signed codes (``c + 128``, exact), so that every
  fused convolution takes u8 activations (u8 x s8 or u8 x u8 -> u8, see weights);
- weights are integer codes with per-output-channel scales ``scale_c = 2^l_w s_c 2^l_s``: a
  folded BatchNorm's 8-bit multiplier ``s_c`` moves into the scale, a negative ``s_c``
  negates that channel's codes, ``s_c = 0`` zeroes them (scale ``2^l_w``); a layer whose
  codes stay within +-``S8_EXACT`` is int8 (u8 x s8, VNNI), a wider one uint8 with zero
  point 128 (u8 x u8), so that no kernel saturates on any x86 CPU (``portable``);
- biases (BN shift ``t``, conv bias, both folded) are int32 at scale ``x_scale scale_c``,
  rounded half up; a convolution whose output is not re-quantized (the logits) keeps a
  float32 bias instead;
- a re-quantization to fewer than 8 bits (or a signed one) clips the uint8 codes with
  ``Clip`` after QuantizeLinear (ReLU is the clip at code 0);
- a residual add whose input is a conv+BN output that the fixed-point network keeps wide
  quantizes that input to 8 bits first (zero point 128) at an intermediate l chosen from
  calibration codes (:func:`choose_residual_l`) or, without them, by
  :func:`default_residual_l` (see ``docs/export.md``).

Input ``x_codes``: int8 NCHW (the bit-exact model's input; ``float_input=True``: float ``x``
quantized in the graph). Output ``logits``: float32 [N, classes]. Where the result can differ
from ``executor.run`` (ties rounded to even, the int32 bias, the extra residual
quantization, float averages) is listed in ``docs/export.md``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from faq_jax import quant
from faq_jax.export import executor, intnet, onnx_writer
from faq_jax.export.intnet import ExportError

FORMAT = "faq_jax.intnet.onnx-deploy"
I64 = np.int64
# Without VNNI, onnxruntime's u8 x s8 kernels (AVX2, AVX-512BW) sum pairs of u8 x s8 products
# into int16 with saturation (vpmaddubsw): exact iff 2 * 255 * max|w| <= 2^15 - 1.
S8_EXACT = 64
# onnxruntime's session option that runs int8 weights with u8 x u8 kernels on AVX2 / AVX-512.
PRECISE_U8S8 = "session.x64quantprecision"
U8 = np.dtype(np.uint8)
_ONNX = {np.dtype(k): v for k, v in [("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8),
         ("int32", TensorProto.INT32), ("int64", TensorProto.INT64),
         ("float32", TensorProto.FLOAT)]}


@dataclasses.dataclass
class _V:
    """A value of the ONNX graph: uint8 codes (zp 0 or 128, scale 2^l) or a float tensor."""

    name: str | None
    zp: int | None = None  # None: float32 tensor; 0 / 128: uint8 codes
    l: int = 0  # noqa: E741 - the paper's l
    nchw: bool = True  # 4-D tensors stored NCHW (logical layout is NHWC)
    shape: list | None = None  # logical shape without the batch axis
    squeezed: bool = False  # stored (N, C, 1, 1) for a logical (C,)
    conv: dict | None = None  # a conv/dense not written yet (BN folds into it)

    @property
    def is_codes(self) -> bool:
        return self.zp is not None and self.conv is None


class _Writer(onnx_writer.GraphBuilder):
    def dq(self, v: _V) -> str:
        """DequantizeLinear of uint8 codes (one node per consumer, as QDQ fusion wants)."""
        return self.op("DequantizeLinear", [v.name, self.const(_scale(v.l, "DequantizeLinear")),
                                            self.const(np.asarray(v.zp, np.uint8))])

    def q(self, x: str, l: int, zp: int, where: str) -> str:  # noqa: E741
        return self.op("QuantizeLinear", [x, self.const(_scale(l, where)),
                                          self.const(np.asarray(zp, np.uint8))], where)

    def clip_codes(self, codes: str, lo: int, hi: int, base: str = "t") -> str:
        return self.op("Clip", [codes, self.const(np.asarray(lo, np.uint8)),
                                self.const(np.asarray(hi, np.uint8))], base)


def _scale(l: int, where: str) -> np.ndarray:  # noqa: E741
    if not -126 <= l <= 127:
        raise ExportError(f"{where}: scale 2^{l} is not a normal float32 (an extreme l; "
                          "recalibrate that layer)")
    return np.asarray(np.ldexp(1.0, l), np.float32)


def _code_range(bits: int, signed: bool, zp: int) -> tuple[int, int]:
    lo, hi = quant.int_range(bits, signed)
    return lo + zp, hi + zp


def _per_channel(arr: np.ndarray, v: _V) -> np.ndarray:
    arr = np.asarray(arr, np.float32)
    if v.nchw and len(v.shape) == 3 or v.squeezed:
        return arr.reshape(1, -1, 1, 1)
    return arr.reshape([1] * len(v.shape) + [-1])


def _phys_axis(v: _V, axis: int) -> int:
    return {1: 2, 2: 3, 3: 1}.get(axis, axis) if v.nchw and len(v.shape) == 3 else axis


class _Graph:
    """Writes the nodes of an IntegerNetwork as QDQ ONNX."""

    def __init__(self, net: intnet.IntegerNetwork, residual_l: dict[int, int],
                 headroom: bool, portable: bool):
        self.net, self.w, self.residual_l, self.headroom = net, _Writer(), residual_l, headroom
        self.s8_max = S8_EXACT if portable else 127  # widest int8 weight code written
        self.requant_codes: dict[int, tuple[str, int]] = {}  # node id: (codes, zero point)

    # -- conversions --------------------------------------------------------------------
    def unsqueeze(self, v: _V) -> _V:
        if not v.squeezed:
            return v
        v = self.dense_ready(v) if v.conv else v
        return dataclasses.replace(v, name=self.w.op("Flatten", [v.name], axis=1), nchw=False,
                                   squeezed=False)

    def dense_ready(self, v: _V) -> _V:
        return self.materialize(v, fused=False)

    def floats(self, v: _V, fused: bool = False) -> _V:
        """v as a float32 tensor (DequantizeLinear of codes; a pending conv written)."""
        if v.conv is not None:
            return self.materialize(v, fused)
        if v.zp is None:
            return v
        return dataclasses.replace(v, name=self.w.dq(v), zp=None)

    def materialize(self, v: _V, fused: bool) -> _V:
        """Writes a pending conv/dense with its folded BN: per-channel weight scales, int8
        codes (uint8 + 128 where they exceed ``s8_max``), an int32 bias at x_scale * w_scale
        (``fused``: a QuantizeLinear follows) or a float bias (its output stays float, e.g.
        the logits)."""
        if v.conv is None:
            return v
        c, w = v.conv, self.w
        path, x, node = c["path"], c["x"], c["node"]
        m, b = c["m"], c["b"]
        sign = np.sign(m).astype(I64)
        scale = np.where(m == 0, np.ldexp(1.0, node["w_l"]), np.abs(m))
        wq = c["w"].astype(I64) * sign  # per output channel (last axis)
        if np.abs(wq).max() > 127:
            raise ExportError(f"{path}: weight codes beyond +-127 do not fit 8 bits")
        # u8 x u8 (uint8 + 128) where codes exceed s8_max: no int16 pair sums on any x86 CPU.
        wide = bool(np.abs(wq).max() > self.s8_max)
        if self.headroom:  # codes * 2^k, scale / 2^k: a 2^k finer int32 bias grid
            top = np.abs(wq).reshape(-1, wq.shape[-1]).max(axis=0)
            room = np.floor(np.log2((127 if wide else self.s8_max) / np.maximum(top, 1)))
            k = np.where((top > 0) & (room > 0), room, 0).astype(I64)
            wq, scale = wq << k, scale / np.exp2(k)
        xs = float(np.ldexp(1.0, x.l))
        if np.any(scale * xs < np.finfo(np.float32).tiny):
            raise ExportError(f"{path}: weight scale x BN scale below float32 range")
        dt_w, zp = (np.uint8, 128) if wide else (np.int8, 0)
        wq = wq + zp
        if node["op"] == "conv":
            w_onnx, axis = np.transpose(wq, (3, 2, 0, 1)).astype(dt_w), 0
        else:
            w_onnx, axis = wq.astype(dt_w), 1
        uniform = np.all(scale == scale[0])
        w_scale = np.asarray(scale[0] if uniform else scale, np.float32)
        w_zp = np.full(w_scale.shape, zp, dt_w)
        kw = {} if uniform else {"axis": axis}
        wd = w.op("DequantizeLinear", [w.const(w_onnx, path), w.const(w_scale), w.const(w_zp)],
                  **kw)
        xd = w.dq(x)
        inputs = [xd, wd]
        if np.any(b != 0):
            if fused:
                bq = np.floor(b / (xs * scale) + 0.5)
                if np.max(np.abs(bq)) > 2**31 - 1:
                    raise ExportError(f"{path}: the folded bias (BN shift t, conv bias) "
                                      "overflows int32 at scale x_scale * w_scale")
                bs = np.asarray(xs * scale, np.float32)
                inputs.append(w.op("DequantizeLinear", [
                    w.const(bq.astype(np.int32), path + "/b"), w.const(bs),
                    w.const(np.zeros(bs.shape, np.int32))], axis=0))
            else:
                inputs.append(w.const(np.asarray(b, np.float32), path + "/b"))
        if node["op"] == "conv":
            (pt, pb), (pl, pr) = node["padding"]
            y = w.op("Conv", inputs, path, pads=[pt, pl, pb, pr], strides=node["strides"],
                     group=node["groups"])
        else:
            y = w.op("Gemm", inputs, path)
        return dataclasses.replace(v, name=y, zp=None, conv=None)

    def codes_input(self, v: _V, path: str) -> _V:
        if v.squeezed:
            v = self.unsqueeze(v)
        if not v.is_codes:
            raise ExportError(f"{path}: its input is not 8-bit codes (a wide sum or average "
                              "not re-quantized first); the int8 path cannot express it")
        return v

    # -- nodes ------------------------------------------------------------------------------
    def node(self, node: dict[str, Any], ins: list[_V]) -> _V:
        op, path, shape = node["op"], node.get("path", node["op"]), node.get("shape_out")
        w, arrays = self.w, self.net.arrays
        if op in ("conv", "dense"):
            if node["w_bits"] > 8:
                raise ExportError(f"{path}: {node['w_bits']}-bit weights; the int8 deployment "
                                  "model takes at most 8-bit operands (the .npz runs them in "
                                  "the executor)")
            x = self.codes_input(ins[0], path)
            if op == "conv" and not x.nchw:
                raise ExportError(f"{path}: convolution of a transposed tensor")
            wq = np.asarray(arrays[node["w"]])
            cout = wq.shape[-1]
            m = np.full(cout, np.ldexp(1.0, node["w_l"]))
            b = np.zeros(cout)
            if node.get("bias"):
                b = np.ldexp(arrays[node["bias"]].astype(np.float64), node["bias_l"])
            pend = dict(path=path, node=node, x=x, w=wq, m=m, b=b)
            return _V(None, 0, 0, op == "conv", shape, conv=pend)
        if op == "bn":
            x = ins[0]
            s = np.ldexp(arrays[node["s"]].astype(np.float64), node["s_l"])
            t = np.ldexp(arrays[node["t"]].astype(np.float64), node["t_l"])
            if x.conv is not None and not x.squeezed:
                c = dict(x.conv, m=x.conv["m"] * s, b=x.conv["b"] * s + t)
                return dataclasses.replace(x, conv=c)
            x = self.floats(x)  # BN not after a conv (DenseNet's pre-activation): float
            y = w.op("Add", [w.op("Mul", [x.name, w.const(_per_channel(s, x))]),
                             w.const(_per_channel(t, x))], path)
            return dataclasses.replace(x, name=y)
        if op == "requant":
            return self.requant(node, ins[0])
        if op == "add":
            qs = [v if v.is_codes else self.residual_codes(node, i, v)
                  for i, v in zip(node["inputs"], ins, strict=True)]
            y = w.op("Add", [w.dq(v) for v in qs])
            return _V(y, None, 0, qs[0].nchw, shape, qs[0].squeezed)
        if op == "concat":
            if all(v.is_codes and v.l == ins[0].l and v.zp == ins[0].zp and not v.squeezed
                   for v in ins):
                y = w.op("Concat", [v.name for v in ins], axis=_phys_axis(ins[0], node["axis"]))
                return dataclasses.replace(ins[0], name=y, shape=shape)
            fs = [self.floats(self.unsqueeze(v)) for v in ins]
            y = w.op("Concat", [v.name for v in fs], axis=_phys_axis(fs[0], node["axis"]))
            return dataclasses.replace(fs[0], name=y, shape=shape)
        if op in ("max_pool", "avg_pool"):
            win, stride, *rest = node["args"]
            pad = rest[0] if rest else node.get("padding", 0)
            include = rest[1] if len(rest) > 1 else node.get("count_include_pad", True)
            kw = dict(kernel_shape=[win, win], strides=[stride, stride], pads=[pad] * 4)
            x = ins[0]
            if op == "max_pool" and x.is_codes:  # on the codes: exact, padding never wins
                return dataclasses.replace(x, name=w.op("MaxPool", [x.name], **kw), shape=shape)
            x = self.floats(x)
            if op == "avg_pool":
                kw["count_include_pad"] = int(include)
            y = w.op("MaxPool" if op == "max_pool" else "AveragePool", [x.name], **kw)
            return dataclasses.replace(x, name=y, shape=shape)
        if op == "global_avg_pool":
            x = self.floats(ins[0])
            return _V(w.op("GlobalAveragePool", [x.name]), None, 0, True, shape, squeezed=True)
        if op == "adaptive_avg_pool":
            return self.adaptive(node, ins[0])
        if op == "subsample_pad":
            return self.subsample_pad(node, ins[0])
        if op in ("transpose", "reshape"):
            return self.layout(node, ins[0])
        raise ExportError(f"{path}: op {op!r} has no int8 deployment form")

    def requant(self, node, v: _V) -> _V:
        path, bits, lo_l, signed = node["path"], node["bits"], node["l"], node["signed"]
        if bits > 8:
            raise ExportError(f"{path}: {bits}-bit activations; the int8 deployment model "
                              "takes at most 8-bit codes (the .npz runs them in the executor)")
        x = self.floats(v, fused=True)
        if node["relu"] and signed:
            x = dataclasses.replace(x, name=self.w.op("Relu", [x.name]))
        zp = 128 if signed else 0
        q = self.w.q(x.name, lo_l, zp, path)
        lo, hi = _code_range(bits, signed, zp)
        if (lo, hi) != (0, 255):
            q = self.w.clip_codes(q, lo, hi, path)
        self.requant_codes[node["id"]] = (q, zp)
        return _V(q, zp, lo_l, x.nchw, node["shape_out"], x.squeezed)

    def residual_codes(self, add: dict, src: int, v: _V) -> _V:
        """A wide input of a residual add (conv + BN) quantized to 8 bits (zero point 128) at
        the intermediate l chosen for it, so that the add runs as QLinearAdd."""
        lm = self.residual_l[src]
        x = self.floats(v, fused=True)
        q = self.w.q(x.name, lm, 128, f"add {add['id']}")
        return _V(q, 128, lm, x.nchw, v.shape, x.squeezed)

    def subsample_pad(self, node, v: _V) -> _V:
        stride, before, after = node["args"]
        v = self.unsqueeze(v)
        v = v if v.is_codes else self.floats(v)
        # zero channels: code = zero point (codes), or 0.0 (floats)
        pad_value = None if v.zp is None else self.w.const(np.asarray(v.zp, np.uint8))
        y = self.w.subsample_pad(v.name, v.shape[:2], v.nchw, stride, before, after, pad_value)
        return dataclasses.replace(v, name=y, shape=node["shape_out"])

    def adaptive(self, node, v: _V) -> _V:
        (oh, ow), (h, wd) = node["args"][0], v.shape[:2]
        if (h, wd) == (oh, ow):
            return v
        x, w = self.floats(v), self.w
        rows = []
        for i in range(oh):
            h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
            cols = []
            for j in range(ow):
                w0, w1 = (j * wd) // ow, -((-(j + 1) * wd) // ow)
                sl = w.op("Slice", [x.name, w.const(np.asarray([h0, w0], I64)),
                                    w.const(np.asarray([h1, w1], I64)),
                                    w.const(np.asarray([2, 3], I64))])
                cols.append(w.op("ReduceMean", [sl, w.const(np.asarray([2, 3], I64))],
                                 keepdims=1))
            rows.append(w.op("Concat", cols, axis=3))
        return dataclasses.replace(x, name=w.op("Concat", rows, axis=2), shape=node["shape_out"])

    def layout(self, node, v: _V) -> _V:
        v = self.unsqueeze(v)
        v = v if v.is_codes else self.floats(v)
        w = self.w
        if node["op"] == "transpose":
            perm = node["perm"]
            phys = [(0, 2, 3, 1)[p] for p in perm] if v.nchw and len(v.shape) == 3 else perm
            y = w.op("Transpose", [v.name], perm=list(phys))
        else:
            src = w.op("Transpose", [v.name], perm=[0, 2, 3, 1]) \
                if v.nchw and len(v.shape) == 3 else v.name
            y = w.op("Reshape", [src, w.const(np.asarray([-1, *node["shape"]], I64))])
        return dataclasses.replace(v, name=y, nchw=False, shape=node["shape_out"])


# ---- residual intermediate l ---------------------------------------------------------------

def _codes_l(by_id: dict[int, dict], i: int) -> int | None:
    """l of node i if it is 8-bit codes in the fixed-point network (through layout ops and
    shortcuts that move codes), else None (a wide conv/BN output, a sum, an average)."""
    src = by_id[i]
    while src["op"] in ("subsample_pad", "max_pool", "transpose", "reshape"):
        src = by_id[src["inputs"][0]]
    return src["l"] if src["op"] in ("requant", "input") else None


def _residual_sources(net: intnet.IntegerNetwork
                      ) -> dict[int, tuple[dict, dict, int, int | None]]:
    """{input id: (add node, its requant, the other input's id, the other input's l or None)}
    for every add input that is not 8-bit codes in the fixed-point network (kept wide)."""
    by_id = {n["id"]: n for n in net.nodes}
    out = {}
    for n in net.nodes:
        if n["op"] != "add":
            continue
        req = next((m for m in net.nodes if m["inputs"] == [n["id"]] and m["op"] == "requant"),
                   None)
        if req is None:
            raise ExportError(f"add node {n['id']}: its sum is not re-quantized; the int8 path "
                              "cannot express a wide residual sum")
        for k, i in enumerate(n["inputs"]):
            if _codes_l(by_id, i) is None:
                other = n["inputs"][1 - k]
                out[i] = (n, req, other, _codes_l(by_id, other))
    return out


def default_residual_l(net: intnet.IntegerNetwork,
                       offset: int | None = None) -> dict[int, int]:
    """Intermediate l of each wide residual-add input without data.

    ``l_out`` (the add's own quantizer) when the other input's codes sit on a grid at least
    as coarse (then ``round(v) + s`` rounds once, like the fixed-point network); otherwise
    ``l_out - (8 - bits)`` (finer, fewer double roundings; int8 range +-127 2^(l_out-8+b)).
    ``offset``: ``l_out + offset`` for every one instead.
    """
    out = {}
    for i, (_, req, _, other_l) in _residual_sources(net).items():
        if offset is not None:
            out[i] = req["l"] + offset
        elif other_l is None or other_l >= req["l"]:
            out[i] = req["l"]
        else:
            out[i] = req["l"] - (8 - req["bits"])
    return out


def choose_residual_l(net: intnet.IntegerNetwork, calib_codes: np.ndarray,
                      candidates: range = range(-4, 3)) -> dict[int, int]:
    """Intermediate l of each wide residual-add input, chosen on calibration codes (NHWC).

    For each candidate ``l_out + k`` the exact wide values (``export.executor``) are rounded to
    8-bit codes (half to even, zero point 128, saturating as QuantizeLinear does), added to
    the other input, and re-quantized with the add's quantizer; the l whose output codes
    differ least from the fixed-point network's (mean absolute code difference, ties: the
    finer l) is kept.
    """
    sources = _residual_sources(net)
    keep = set(sources) | {other for _, _, other, _ in sources.values()}
    seen: dict[int, executor.IntTensor] = {}
    executor.run(net, np.asarray(calib_codes),
                     trace=lambda n, t: seen.__setitem__(n["id"], t) if n["id"] in keep else None)
    out = {}
    for i, (_, req, other, _) in sources.items():
        v = _real(seen[i])
        o = _real(seen[other])
        lo, hi = quant.int_range(req["bits"], req["signed"])

        def requant(s, req=req, lo=lo, hi=hi):
            s = np.maximum(s, 0) if req["relu"] else s
            return np.clip(np.floor(np.ldexp(s, -req["l"]) + 0.5), lo, hi)

        exact = requant(v + o)
        best = None
        for k in candidates:
            lm = req["l"] + k
            vq = np.ldexp(np.clip(np.rint(np.ldexp(v, -lm)), -128, 127), lm)
            err = float(np.mean(np.abs(requant(vq + o) - exact)))
            if best is None or err < best[0]:
                best = (err, lm)
        out[i] = best[1]
    return out


def _real(t: executor.IntTensor) -> np.ndarray:
    return np.ldexp(t.q.astype(np.float64), t.l) / np.asarray(t.d, np.float64)


# ---- public API ----------------------------------------------------------------------------

def check_calibrated(net: intnet.IntegerNetwork) -> None:
    reqs = [n for n in net.nodes if n["op"] == "requant"]
    if reqs and all(n["l"] == quant.uncalibrated_activation_lsb(n["bits"], n["signed"])
                    for n in reqs):
        raise ExportError("every activation l still holds its uncalibrated default: calibrate "
                          "the network before exporting it for deployment (or pass "
                          "allow_uncalibrated=True if that is deliberate)")


def to_onnx(net: intnet.IntegerNetwork, *, calib_codes: np.ndarray | None = None,
            residual_l: dict[int, int] | None = None, float_input: bool = False,
            weight_headroom: bool = True, portable: bool = True,
            allow_uncalibrated: bool = False, opset: int = 21) -> onnx.ModelProto:
    """The deployment (QDQ int8) ONNX model of ``net``.

    Args:
      net: an exported network (``export.export`` / ``export.load``), operands <= 8 bits.
      calib_codes: optional int8 NHWC input codes (``executor.input_codes`` of a few
        representative images) to choose the intermediate l of residual adds
        (:func:`choose_residual_l`); without them :func:`default_residual_l`.
      residual_l: explicit {node id: l} for those intermediates (overrides the above).
      float_input: the model takes normalised float NCHW ``x`` and quantizes it itself
        (QuantizeLinear: ties to even) instead of int8 NCHW ``x_codes``.
      weight_headroom: multiply each output channel's weight codes by the largest 2^k that
        keeps them within the layer's range and divide its scale by 2^k (exact; the int32
        bias grid gets 2^k finer: k = 3 for a 4-bit channel whose largest code is 5-7 in
        an int8 layer of the portable form, k = 4 with ``portable=False``). The range is
        +-127 for uint8 layers and with ``portable=False``, +-64 for int8 layers otherwise.
      portable: write a layer whose weight codes exceed +-``S8_EXACT`` as uint8 with zero
        point 128, so onnxruntime runs it with u8 x u8 kernels, which cannot saturate
        (u8 x s8 kernels saturate int16 pair sums on x86 CPUs without VNNI). Outputs are
        then the same on every x86 CPU. False: int8 everywhere, the fastest form on VNNI
        CPUs, correct only there.
      allow_uncalibrated: accept a network whose activation l's are all uncalibrated defaults.

    Raises:
      ExportError (naming the layer): operands wider than 8 bits, an uncalibrated network, an
      op or a tensor the int8 path cannot express.
    """
    if not allow_uncalibrated:
        check_calibrated(net)
    if residual_l is None:
        residual_l = (default_residual_l(net) if calib_codes is None
                      else choose_residual_l(net, calib_codes))
    g = _Graph(net, residual_l, weight_headroom, portable)
    w = g.w
    vals: dict[int, _V] = {}
    h, wd, c = net.graph["input_shape"]
    out = None
    for node in net.nodes:
        if node["op"] == "input":
            bits, in_l = node["bits"], node["l"]
            if bits > 8:
                raise ExportError(f"{node.get('path', 'input')}: {bits}-bit input codes; the "
                                  "int8 deployment model takes at most 8-bit input codes")
            if float_input:
                in_name, in_type = "x", TensorProto.FLOAT
                q = w.q(in_name, in_l, 128, "input")
            else:  # int8 codes -> uint8 codes + 128 (exact): every conv takes u8 activations
                in_name, in_type = "x_codes", TensorProto.INT8
                xd = w.op("DequantizeLinear", [in_name, w.const(_scale(in_l, "input")),
                                               w.const(np.asarray(0, np.int8))])
                q = w.q(xd, in_l, 128, "input")
            lo, hi = _code_range(bits, True, 128)
            q = w.clip_codes(q, lo, hi) if float_input or (lo, hi) != (1, 255) else q
            vals[node["id"]] = _V(q, 128, in_l, True, [h, wd, c])
            continue
        ins = [vals[i] for i in node["inputs"]]
        if node["op"] == "output":
            out = g.floats(g.unsqueeze(ins[0]))
            continue
        vals[node["id"]] = g.node(node, ins)
    w.nodes.append(helper.make_node("Identity", [out.name], ["logits"]))
    graph = helper.make_graph(
        w.nodes, "faq_jax_deploy",
        [helper.make_tensor_value_info(in_name, in_type, ["N", c, h, wd])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["N", *(int(d) for d in out.shape)])],
        initializer=w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="faq_jax")
    model.ir_version = min(model.ir_version, 10)
    codes = {str(k): f"{name}:{zp}" for k, (name, zp) in g.requant_codes.items()}
    helper.set_model_props(model, {
        "format": FORMAT, "version": str(intnet.VERSION), "input_l": str(in_l),
        "input_bits": str(bits), "input": in_name, "layout": "NCHW",
        "portable": str(int(portable)),
        "residual_l": ",".join(f"{k}:{v}" for k, v in sorted(residual_l.items())),
        "requant_codes": json.dumps(codes)})
    return model


def save(net: intnet.IntegerNetwork, path: str, **kw) -> None:
    """Writes :func:`to_onnx` ``(net, **kw)`` to ``path`` (nothing is written on an error)."""
    model = to_onnx(net, **kw)
    onnx.save(model, path)


def expose_codes(model: onnx.ModelProto, node_ids) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the uint8 codes of these requant nodes (named
    ``codes_<id>``, zero point in metadata ``requant_codes``) for layer-by-layer checks."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    codes = json.loads({p.key: p.value for p in model.metadata_props}["requant_codes"])
    for i in node_ids:
        name = codes[str(i)].rsplit(":", 1)[0]
        model.graph.node.append(helper.make_node("Identity", [name], [f"codes_{i}"]))
        model.graph.output.append(helper.make_tensor_value_info(f"codes_{i}",
                                                                TensorProto.UINT8, None))
    return model


def x86_without_vnni(cpuinfo: str | None = None) -> bool:
    """True where the CPU (``/proc/cpuinfo``, or the text given) is an AVX2 x86 CPU without
    VNNI (``avx512_vnni``, ``avx_vnni``): there onnxruntime's u8 x s8 kernels saturate int16
    pair sums. False where that is unknown (no /proc/cpuinfo, not x86)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    line = next((t for t in cpuinfo.splitlines() if t.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}


def session(model: onnx.ModelProto | str, *, threads: int | None = None,
            optimized_path: str | None = None):
    """An onnxruntime CPU session with ``ORT_ENABLE_ALL`` (QDQ fusion, NHWC int8 kernels).

    ``optimized_path``: also write the graph onnxruntime actually runs (to check fusion).
    A model written with ``portable=False`` (or before that option existed) on an x86 CPU
    without VNNI: turns on onnxruntime's ``session.x64quantprecision`` (its u8 x u8 kernels
    for int8 weights, slower) and warns.
    """
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    # Models written before the portable form have no "portable" key: all int8 weights.
    if (meta.get("format") == FORMAT and meta.get("portable", "0") == "0"
            and x86_without_vnni()):
        warnings.warn("this int8 deployment model has int8 weights everywhere (written with "
                      "portable=False / --onnx_int8_vnni) and this CPU has no VNNI, where "
                      "onnxruntime's u8 x s8 kernels can saturate: running it with "
                      "session.x64quantprecision (slower); write it again with "
                      "portable=True (the default; without --onnx_int8_vnni) for this CPU",
                      stacklevel=2)
        opts.add_session_config_entry(PRECISE_U8S8, "1")
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def run(sess, *, images: np.ndarray | None = None, codes: np.ndarray | None = None
        ) -> np.ndarray:
    """float32 logits of a deployment session on normalised float NHWC ``images`` (quantized
    with the network's own input quantizer, ``executor.input_codes``) or on int8 NHWC
    input ``codes``. A session of the bit-exact model (``onnx_writer``) gives its int64
    logit codes (scale: ``2^logits_l`` of its metadata)."""
    meta = sess.get_modelmeta().custom_metadata_map
    name = sess.get_inputs()[0].name
    if (images is None) == (codes is None):
        raise ValueError("pass exactly one of images= or codes=")
    if name == "x":
        if images is None:
            images = np.ldexp(np.asarray(codes, np.float32), int(meta["input_l"]))
        return sess.run(None, {"x": np.asarray(images, np.float32).transpose(0, 3, 1, 2)})[0]
    if codes is None:
        # The bit-exact model (onnx_writer) records no input_bits: its input is int8.
        codes = np.asarray(quant.to_codes(images, bits=int(meta.get("input_bits", 8)),
                                          lsb=int(meta["input_l"]), signed=True), np.int8)
    return sess.run(None, {"x_codes": np.asarray(codes, np.int8).transpose(0, 3, 1, 2)})[0]

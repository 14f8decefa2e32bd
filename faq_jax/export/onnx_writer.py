"""ONNX form of an exported integer network, op for op the arithmetic of the executor.

Integer mode (default): convolutions and dense layers as exact float32 ``Conv`` / ``MatMul``
of the integer codes where a static bound proves every partial sum is an integer below 2^24
(and, by default, the input is at most 32x32), else ``ConvInteger`` / ``MatMulInteger`` with
int32 accumulators (``conv_impl`` chooses;
``"float"`` splits the input channels into groups that each stay below the bound), and
``Mul``/``Add``/``Div``/``Mod``/``Clip``/``Cast`` in int32 where a static bound (max input
code x per-channel sum |w|) proves it fits, else int64: a folded
BatchNorm followed by its quantizer becomes ``y = acc * (s A) + (t A + B)``, ``floor(y / D)``,
clip, cast to uint8 (see ``executor.requantize`` for A, B, D). Max pooling casts the
codes to float32 (8-bit codes) or float64 (wider, exact below 2^53) and back; average
pools are int64 window sums of ``Slice``s; the option-A shortcut (``subsample_pad``) is a
strided ``Slice`` and a zero channel ``Pad`` of the codes. Input ``x_codes``: int8 NCHW;
output ``logits``: int64 codes, real logits = codes * 2^logits_l (model metadata
``logits_l``).

Float mode (``float_mode=True``): the same graph as an fp32 network (dequantized weights,
biases and folded BatchNorm constants, ReLU without quantizers, no input quantizer), the
baseline for benchmarks: the simulated network without its activation quantizers, up to
float32 rounding (docs/export.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from faq_jax import layers
from faq_jax.export import executor, intnet

I64 = executor.I64

_NP2ONNX = {np.dtype(k): v for k, v in [("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8),
            ("int16", TensorProto.INT16), ("uint16", TensorProto.UINT16),
            ("int32", TensorProto.INT32), ("int64", TensorProto.INT64),
            ("float32", TensorProto.FLOAT), ("float64", TensorProto.DOUBLE)]}


class _Val:
    """An ONNX tensor: name, NumPy dtype, l, denominator d (logical layout), NCHW-stored?"""

    def __init__(self, name, dtype, l=0, d=1, nchw=False, shape=None,  # noqa: E741
                 affine=None, bound=None):
        self.name, self.dtype, self.l, self.d, self.nchw = name, np.dtype(dtype), l, d, nchw
        self.shape = shape  # logical shape without batch
        self.affine = affine  # pending int64 (mul, add) constants of a folded BatchNorm
        self.bound = bound  # max |q| before the affine (per channel), when known


class GraphBuilder:
    """Collects ONNX nodes and initializers under unique names (both ONNX writers use it)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base.replace('/', '.')}_{self.n}"

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def op(self, op_type: str, inputs: list[str], base: str = "t", **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def subsample_pad(self, x: str, hw: list[int], nchw: bool, stride: int, before: int,
                      after: int, pad_value: str | None = None) -> str:
        """The option-A shortcut: ``x[:, ::stride, ::stride, :]`` in x's physical layout,
        then ``before``/``after`` channels of ``pad_value`` (a constant's name; default 0)."""
        h_ax, w_ax, c_ax = (2, 3, 1) if nchw else (1, 2, 3)
        y = self.op("Slice", [x, self.const(np.asarray([0, 0], I64)),
                              self.const(np.asarray(hw, I64)),
                              self.const(np.asarray([h_ax, w_ax], I64)),
                              self.const(np.asarray([stride, stride], I64))])
        pads = np.zeros(8, I64)
        pads[c_ax], pads[4 + c_ax] = before, after
        return self.op("Pad", [y, self.const(pads), *([pad_value] if pad_value else [])])


CONV_IMPLS = ("auto", "float", "integer")
EXACT_F32 = 2**24  # float32 holds every integer of magnitude <= 2^24 exactly
# "auto" runs a conv in float32 up to this input size (H x W): 2x ConvInteger's throughput
# at 32x32, none at 224x224 (onnxruntime 1.32, 2-core AVX-512 CPU; benchmarks/inference.py)
FLOAT_CONV_MAX_PIXELS = 32 * 32


def channel_groups(per_input: np.ndarray, limit: int = EXACT_F32) -> list[tuple[int, int]] | None:
    """Contiguous input-channel ranges whose accumulations stay below ``limit``.

    ``per_input[c, o]``: the largest |contribution| of input channel c to output channel o
    (max code x sum over the kernel window of |w|). Every partial sum of a range is bounded
    by the range's column sums, so a float32 convolution over one range is exact when they
    are below ``limit``. ``None`` when a single channel already reaches it.
    """
    groups, start, acc = [], 0, np.zeros(per_input.shape[1], np.int64)
    for c in range(per_input.shape[0]):
        if np.max(per_input[c]) >= limit:
            return None
        if np.max(acc + per_input[c]) >= limit:
            groups.append((start, c))
            start, acc = c, np.zeros_like(acc)
        acc = acc + per_input[c]
    groups.append((start, per_input.shape[0]))
    return groups


class _Writer(GraphBuilder):
    def __init__(self, net: intnet.IntegerNetwork, float_mode: bool, conv_impl: str = "auto"):
        super().__init__()
        self.net, self.float_mode, self.conv_impl = net, float_mode, conv_impl
        self._as_float: dict[str, str] = {}

    def as_float(self, v: _Val) -> str:
        """v's codes as float32 (exact for 8-bit codes), one Cast per tensor."""
        if v.name not in self._as_float:
            self._as_float[v.name] = self.cast(v, np.float32)
        return self._as_float[v.name]

    def cast(self, v: _Val, dtype) -> str:
        dtype = np.dtype(dtype)
        return v.name if v.dtype == dtype else self.op("Cast", [v.name], to=_NP2ONNX[dtype])

    def phys(self, arr: np.ndarray, v: _Val) -> np.ndarray:
        """A per-channel or logical-layout constant in v's physical layout (with batch)."""
        arr = np.asarray(arr)
        if arr.ndim == 1:  # per channel (last logical axis)
            return arr.reshape((1, -1, 1, 1)) if v.nchw else arr.reshape(1, -1)
        if arr.ndim == 0:
            return arr
        return np.transpose(arr, (0, 3, 1, 2)) if v.nchw else arr

    @staticmethod
    def _bound(v: _Val):
        if v.bound is not None:
            return v.bound
        return np.iinfo(v.dtype).max if v.dtype.itemsize == 1 else None

    @staticmethod
    def _fits32(bound) -> bool:
        return bound is not None and np.max(bound) < 2**31 - 1

    def materialize(self, v: _Val) -> _Val:
        """A tensor without pending affine constants (int32 where it provably fits)."""
        if v.affine is None:
            return v
        mul, add = v.affine
        bound = None if v.bound is None else v.bound * np.abs(mul) + np.abs(add)
        ct = np.int32 if self._fits32(bound) else I64
        y = self.op("Add", [self.op("Mul", [self.cast(v, ct), self.const(mul.astype(ct))]),
                            self.const(add.astype(ct))])
        return _Val(y, ct, v.l, v.d, v.nchw, v.shape, bound=bound)

    def aligned(self, vs: list[_Val]) -> tuple[list[str], int, np.dtype, Any]:
        """Inputs shifted to the smallest l, their dtype and the bound of their sum."""
        vs = [self.materialize(v) for v in vs]
        lmin = min(v.l for v in vs)
        bounds = [self._bound(v) for v in vs]
        total = None if any(b is None for b in bounds) else \
            sum(int(np.max(b)) << (v.l - lmin) for b, v in zip(bounds, vs, strict=True))
        ct = np.int32 if self._fits32(total) else I64
        names = []
        for v in vs:
            x = self.cast(v, ct)
            if v.l != lmin:
                x = self.op("Mul", [x, self.const(executor.shl(np.asarray(1, I64), v.l - lmin,
                                                        "add/concat").astype(ct))])
            names.append(x)
        return names, lmin, ct, total

    def fdq(self, arr: np.ndarray, l: int) -> np.ndarray:  # noqa: E741
        return np.ldexp(arr.astype(np.float64), l).astype(np.float32)


def _axis(v: _Val, axis: int) -> int:
    return {1: 2, 2: 3, 3: 1}.get(axis, axis) if v.nchw else axis


def _conv(w: _Writer, node: dict[str, Any], x: _Val, wq: np.ndarray, path: str,
          pads: list[int]) -> str:
    """int32 accumulators of a convolution of 8-bit codes ``x`` with HWIO int8 ``wq``."""
    kw = dict(pads=pads, strides=node["strides"], group=node["groups"])
    w_oihw = np.transpose(wq, (3, 2, 0, 1))
    xmax = np.iinfo(x.dtype).max
    # per_input[c, o]: input channel c's largest contribution to output o (groups == 1)
    per_input = xmax * np.abs(wq.astype(I64)).sum(axis=(0, 1))
    if node["groups"] != 1:  # grouped convs are not split: all or nothing
        per_input = per_input.sum(axis=0, keepdims=True)
    groups = None if w.conv_impl == "integer" else channel_groups(per_input)
    if w.conv_impl == "auto" and groups is not None and (
            len(groups) > 1 or x.shape[0] * x.shape[1] > FLOAT_CONV_MAX_PIXELS):
        groups = None  # measured no faster than one ConvInteger (docs/export.md)
    if groups is not None:  # exact float32 convolution(s), summed in int32
        xf, parts = w.as_float(x), []
        for lo, hi in groups:
            xs = xf if len(groups) == 1 else w.op("Slice", [
                xf, w.const(np.asarray([lo], I64)), w.const(np.asarray([hi], I64)),
                w.const(np.asarray([1], I64))])
            wf = w_oihw if len(groups) == 1 else w_oihw[:, lo:hi]
            y = w.op("Conv", [xs, w.const(wf.astype(np.float32), path)], path, **kw)
            parts.append(w.op("Cast", [y], to=TensorProto.INT32))
        acc = parts[0]
        for part in parts[1:]:  # ONNX Sum takes float types only
            acc = w.op("Add", [acc, part])
        return acc
    # uint8 operands with zero point 128 (exact: ConvInteger sums (x-zx)(w-zw) in int32):
    # onnxruntime's uint8 x uint8 kernel is MLAS's, several times faster than its int8-weight
    # one.
    zp = w.const(np.asarray(128, np.uint8))
    w_u8 = (w_oihw.astype(np.int16) + 128).astype(np.uint8)
    xu, xz = x.name, ""
    if x.dtype == np.int8:
        xu = w.op("Cast", [w.op("Add", [w.op("Cast", [xu], to=TensorProto.INT16),
                                        w.const(np.asarray(128, np.int16))])],
                  to=TensorProto.UINT8)
        xz = zp
    return w.op("ConvInteger", [xu, w.const(w_u8, path), xz, zp], path, **kw)


def _matmul(w: _Writer, x: _Val, wq: np.ndarray, path: str) -> str:
    """int32 accumulators of a dense layer (exact float32 MatMul where the bound allows)."""
    bound = np.iinfo(x.dtype).max * np.abs(wq.astype(I64)).sum(axis=0)
    if w.conv_impl != "integer" and np.max(bound) < EXACT_F32:
        y = w.op("MatMul", [w.as_float(x), w.const(wq.astype(np.float32), path)], path)
        return w.op("Cast", [y], to=TensorProto.INT32)
    return w.op("MatMulInteger", [x.name, w.const(wq, path)], path)


def _int_node(w: _Writer, node: dict[str, Any], ins: list[_Val], arrays) -> _Val:
    op, path = node["op"], node.get("path", node["op"])
    shape = node.get("shape_out")
    if op in ("conv", "dense"):
        x = w.materialize(ins[0])
        if x.dtype not in (np.int8, np.uint8) or np.any(np.asarray(x.d) != 1):
            raise intnet.ExportError(f"{path}: ONNX needs 8-bit codes as input, got {x.dtype}")
        if node["w_bits"] > 8:
            raise intnet.ExportError(
                f"{path}: {node['w_bits']}-bit weights; ONNX ConvInteger/MatMulInteger take "
                "8-bit operands. Use <= 8-bit weights, or run the .npz with faq_jax.export.run")
        wq = arrays[node["w"]].astype(np.int8)
        if op == "conv":
            (pt, pb), (pl, pr) = node["padding"]
            # uint8 operands with zero point 128 (exact: ConvInteger sums (x-zx)(w-zw) in
            # int32): onnxruntime's uint8 x uint8 kernel is MLAS's, several times faster than
            # its int8-weight one.
            acc = _conv(w, node, x, wq, path, [pt, pl, pb, pr])
        else:
            acc = _matmul(w, x, wq, path)
        out = _Val(acc, np.int32, x.l + node["w_l"], 1, op == "conv", shape)
        xmax = np.iinfo(x.dtype).max  # 8-bit codes: 255 unsigned, 127 signed (symmetric)
        sum_w = np.abs(wq.astype(I64)).sum(axis=tuple(range(wq.ndim - 1)))
        out.bound = w.phys(xmax * sum_w, out)
        if node.get("bias"):
            b = arrays[node["bias"]].astype(I64)
            lmin = min(out.l, node["bias_l"])
            mul = executor.shl(np.ones_like(b), out.l - lmin, path)
            add = executor.shl(b, node["bias_l"] - lmin, path)
            out = _Val(acc, np.int32, lmin, 1, out.nchw, shape,
                       (w.phys(mul, out), w.phys(add, out)), out.bound)
        return out
    if op == "bn":
        x = ins[0]
        s, t = arrays[node["s"]].astype(I64), arrays[node["t"]].astype(I64)
        lp = x.l + node["s_l"]
        lmin = min(lp, node["t_l"])
        s, t = executor.shl(s, lp - lmin, path), executor.shl(t, node["t_l"] - lmin, path)
        if x.affine is not None:  # (acc*m + a)*s + t
            m, a = x.affine
            s, t = m * w.phys(s, x), a * w.phys(s, x) + w.phys(t, x)
        else:
            s, t = w.phys(s, x), w.phys(t, x)
        return _Val(x.name, x.dtype, lmin, x.d, x.nchw, shape, (s, t), x.bound)
    if op == "requant":
        x, bits, lo = ins[0], node["bits"], node["l"]
        k = x.l - lo
        d = w.phys(np.broadcast_to(np.asarray(x.d, I64), (1, *x.shape)), x) \
            if np.ndim(x.d) else np.asarray(x.d, I64)
        a, b, den = (executor.shl(np.asarray(1, I64), k + 1, path), d, 2 * d) if k >= 0 else \
            (np.asarray(2, I64), executor.shl(d, -k, path), executor.shl(d, 1 - k, path))
        mul, add = x.affine if x.affine is not None else (np.asarray(1, I64),
                                                          np.asarray(0, I64))
        # int32 arithmetic where the numerator provably fits (half the memory traffic).
        ct = I64
        if w._bound(x) is not None and x.dtype.itemsize <= 4:
            worst = w._bound(x) * np.abs(mul * a) + np.abs(add * a + b)
            ct = np.int32 if np.max(worst) < 2**31 - 1 and np.max(den) < 2**31 else I64
        num = w.op("Add", [w.op("Mul", [w.cast(x, ct), w.const((mul * a).astype(ct))]),
                           w.const((add * a + b).astype(ct))])
        signed = node["signed"]
        if node["relu"] and signed:
            num = w.op("Max", [num, w.const(np.asarray(b).astype(ct))])
        if signed:  # floor division of a possibly negative numerator
            num = w.op("Sub", [num, w.op("Mod", [num, w.const(den.astype(ct))])])
        # unsigned: a negative numerator truncates to <= 0 and clips to 0 anyway
        q = w.op("Div", [num, w.const(den.astype(ct))])
        hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        q = w.op("Clip", [q, w.const(np.asarray(-hi if signed else 0, ct)),
                          w.const(np.asarray(hi, ct))])
        dt = intnet.int_dtype(bits, signed)
        return _Val(w.op("Cast", [q], path, to=_NP2ONNX[dt]), dt, lo, 1, x.nchw, shape)
    if op in ("add", "concat"):
        if op == "concat" and all(v.affine is None and v.dtype == ins[0].dtype
                                  and v.l == ins[0].l for v in ins):
            names, lsb, dt, bound = [v.name for v in ins], ins[0].l, ins[0].dtype, None
        else:
            names, lsb, dt, bound = w.aligned(ins)
            bound = bound if op == "add" else None
        y = w.op("Add" if op == "add" else "Concat", names,
                 **({} if op == "add" else {"axis": _axis(ins[0], node["axis"])}))
        return _Val(y, dt, lsb, 1, ins[0].nchw, shape, bound=bound)
    if op == "max_pool":
        x = w.materialize(ins[0])
        win, stride, pad = node["args"]
        kw = dict(kernel_shape=[win, win], strides=[stride, stride], pads=[pad] * 4)
        # Integer codes through a float MaxPool: exact (float32 holds 8-bit codes, float64
        # every int64 code below 2^53), and onnxruntime's uint8 MaxPool is a slow kernel.
        ft = np.float32 if x.dtype.itemsize <= 2 else np.float64
        y = w.op("MaxPool", [w.cast(x, ft)], **kw)
        return _Val(w.op("Cast", [y], to=_NP2ONNX[x.dtype]), x.dtype, x.l, x.d, True, shape,
                    bound=x.bound)
    if op == "avg_pool":
        return _avg_pool(w, node, w.materialize(ins[0]))
    if op == "subsample_pad":
        return _subsample_pad(w, node, w.materialize(ins[0]))
    if op == "global_avg_pool":
        x = w.materialize(ins[0])
        y = w.op("ReduceSum", [w.cast(x, I64), w.const(np.asarray([2, 3], I64))], keepdims=0)
        return _pow2(_Val(y, I64, x.l, x.shape[0] * x.shape[1], False, shape))
    if op == "adaptive_avg_pool":
        return _adaptive(w, node, w.materialize(ins[0]))
    if op in ("transpose", "reshape"):
        return _layout(w, node, w.materialize(ins[0]))
    raise intnet.ExportError(f"ONNX writer: unsupported op {op!r}")


def _pow2(v: _Val) -> _Val:
    d = np.asarray(v.d)
    if d.ndim == 0 and int(d) & (int(d) - 1) == 0:
        v.l, v.d = v.l - (int(d).bit_length() - 1), 1
    return v


def _window_sum(w: _Writer, x: str, hw, win: int, stride: int, pad: int) -> str:
    xp = w.op("Pad", [x, w.const(np.asarray([0, 0, pad, pad, 0, 0, pad, pad], I64))]) \
        if pad else x
    h, wd = hw[0] + 2 * pad, hw[1] + 2 * pad
    ho, wo = (h - win) // stride + 1, (wd - win) // stride + 1
    parts = []
    for i in range(win):
        for j in range(win):
            parts.append(w.op("Slice", [xp, w.const(np.asarray([i, j], I64)),
                                        w.const(np.asarray([i + (ho - 1) * stride + 1,
                                                            j + (wo - 1) * stride + 1], I64)),
                                        w.const(np.asarray([2, 3], I64)),
                                        w.const(np.asarray([stride, stride], I64))]))
    total = parts[0]
    for p in parts[1:]:
        total = w.op("Add", [total, p])
    return total


def _subsample_pad(w: _Writer, node, x: _Val) -> _Val:
    """x[:, ::s, ::s, :] and zero channels before/after, in x's physical layout."""
    stride, before, after = node["args"]
    if np.any(np.asarray(x.d) != 1):
        raise intnet.ExportError(f"{node.get('path', 'subsample_pad')}: input is an "
                                     "unrounded average; re-quantize it first")
    y = w.subsample_pad(x.name, x.shape[:2], x.nchw, stride, before, after)
    c_ax = 1 if x.nchw else 3
    bound = x.bound
    if bound is not None and np.ndim(bound) == 4 and np.shape(bound)[c_ax] > 1:
        width = [(0, 0)] * 4
        width[c_ax] = (before, after)
        bound = np.pad(bound, width)  # the zero channels are bounded by 0
    return _Val(y, x.dtype, x.l, 1, x.nchw, node["shape_out"], bound=bound)


def _pool_args(node) -> tuple[int, int, int, bool]:
    """(window, stride, padding, count_include_pad) of a pool node (older files kept some
    of them as named fields)."""
    win, stride, *rest = node["args"]
    pad = rest[0] if rest else node.get("padding", 0)
    include = rest[1] if len(rest) > 1 else node.get("count_include_pad", True)
    return win, stride, pad, bool(include)


def _avg_pool(w: _Writer, node, x: _Val) -> _Val:
    win, stride, pad, include = _pool_args(node)
    y = _window_sum(w, w.cast(x, I64), x.shape[:2], win, stride, pad)
    if include or pad == 0:
        return _pow2(_Val(y, I64, x.l, win * win, True, node["shape_out"]))
    ones = np.ones((1, *x.shape[:2], 1), I64)
    return _Val(y, I64, x.l, executor.window_sum(ones, win, stride, pad), True,
                node["shape_out"])


def _adaptive(w: _Writer, node, x: _Val) -> _Val:
    (oh, ow), (h, wd) = node["args"][0], x.shape[:2]
    if (h, wd) == (oh, ow):
        return x
    xi, rows, den = w.cast(x, I64), [], np.zeros((1, oh, ow, 1), I64)
    for i, (h0, h1) in enumerate(layers.adaptive_pool_bins(h, oh)):
        cols = []
        for j, (w0, w1) in enumerate(layers.adaptive_pool_bins(wd, ow)):
            sl = w.op("Slice", [xi, w.const(np.asarray([h0, w0], I64)),
                                w.const(np.asarray([h1, w1], I64)),
                                w.const(np.asarray([2, 3], I64))])
            cols.append(w.op("ReduceSum", [sl, w.const(np.asarray([2, 3], I64))], keepdims=1))
            den[0, i, j, 0] = (h1 - h0) * (w1 - w0)
        rows.append(w.op("Concat", cols, axis=3))
    return _pow2(_Val(w.op("Concat", rows, axis=2), I64, x.l, den, True, node["shape_out"]))


def _layout(w: _Writer, node, x: _Val) -> _Val:
    """transpose / reshape in the logical (NHWC) frame; the result is stored as is."""
    d = x.d
    if np.ndim(d):
        d = np.broadcast_to(d, (1, *x.shape))
    if node["op"] == "transpose":
        perm = node["perm"]
        phys = [(0, 2, 3, 1)[p] for p in perm] if x.nchw else perm
        y = w.op("Transpose", [x.name], perm=phys)
        d = np.transpose(d, perm) if np.ndim(d) else d
    else:
        src = w.op("Transpose", [x.name], perm=[0, 2, 3, 1]) if x.nchw else x.name
        y = w.op("Reshape", [src, w.const(np.asarray([-1, *node["shape"]], I64))])
        d = d.reshape(1, *node["shape"]) if np.ndim(d) else d
    return _Val(y, x.dtype, x.l, d, False, node["shape_out"])


def _float_node(w: _Writer, node: dict[str, Any], ins: list[_Val], arrays) -> _Val:
    op, path, shape = node["op"], node.get("path", node["op"]), node.get("shape_out")
    x = ins[0] if ins else None
    f32 = np.float32
    if op in ("conv", "dense"):
        wf = w.fdq(arrays[node["w"]], node["w_l"])
        inputs = [x.name, w.const(np.transpose(wf, (3, 2, 0, 1)) if op == "conv" else wf, path)]
        if node.get("bias"):
            inputs.append(w.const(w.fdq(arrays[node["bias"]], node["bias_l"])))
        if op == "conv":
            (pt, pb), (pl, pr) = node["padding"]
            y = w.op("Conv", inputs, path, pads=[pt, pl, pb, pr], strides=node["strides"],
                     group=node["groups"])
        else:
            y = w.op("Gemm", inputs, path)
        return _Val(y, f32, 0, 1, op == "conv", shape)
    if op == "bn":
        s = w.phys(w.fdq(arrays[node["s"]], node["s_l"]), x)
        t = w.phys(w.fdq(arrays[node["t"]], node["t_l"]), x)
        return _Val(w.op("Add", [w.op("Mul", [x.name, w.const(s)]), w.const(t)]), f32, 0, 1,
                    x.nchw, shape)
    if op == "requant":
        return x if not node["relu"] else _Val(w.op("Relu", [x.name]), f32, 0, 1, x.nchw, shape)
    if op in ("add", "concat"):
        y = w.op("Add" if op == "add" else "Concat", [v.name for v in ins],
                 **({} if op == "add" else {"axis": _axis(x, node["axis"])}))
        return _Val(y, f32, 0, 1, x.nchw, shape)
    if op in ("max_pool", "avg_pool"):
        win, stride, pad, include = _pool_args(node)
        kw = dict(kernel_shape=[win, win], strides=[stride, stride], pads=[pad] * 4)
        if op == "avg_pool":
            kw["count_include_pad"] = int(include)
        return _Val(w.op("MaxPool" if op == "max_pool" else "AveragePool", [x.name], **kw),
                    f32, 0, 1, True, shape)
    if op == "global_avg_pool":
        y = w.op("GlobalAveragePool", [x.name])
        y = w.op("Flatten", [y])
        return _Val(y, f32, 0, 1, False, shape)
    if op == "adaptive_avg_pool" and tuple(node["args"][0]) == tuple(x.shape[:2]):
        return x
    if op == "subsample_pad":
        return _subsample_pad(w, node, x)
    if op in ("transpose", "reshape"):
        return _layout(w, node, x)
    raise intnet.ExportError(f"ONNX float writer: unsupported op {op!r} at {path}")


def to_onnx(net: intnet.IntegerNetwork, *, float_mode: bool = False, conv_impl: str = "auto",
            opset: int = 21) -> onnx.ModelProto:
    """The ONNX model of ``net`` (integer arithmetic; ``float_mode``: the fp32 baseline).

    ``conv_impl="auto"`` runs a convolution as one float32 ``Conv`` where every partial sum
    is an integer below 2^24 (exact) and its input is at most 32x32 (where onnxruntime's
    float kernels beat ConvInteger), else as ``ConvInteger``; ``"float"`` always in float32
    (input channels split into exact groups where needed), ``"integer"`` always
    ``ConvInteger``/``MatMulInteger``. All give the same bits.
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={conv_impl!r}; choose one of {CONV_IMPLS}")
    w = _Writer(net, float_mode, conv_impl)
    vals: dict[int, _Val] = {}
    out_val = None
    h, wd, c = net.graph["input_shape"]
    for node in net.nodes:
        if node["op"] == "input":
            if not float_mode and node["bits"] > 8:
                raise intnet.ExportError(
                    f"{node['bits']}-bit input codes; the ONNX integer model takes int8 "
                    "input. Use policy.input_bits <= 8, or run the .npz with faq_jax.export.run")
            dt = np.float32 if float_mode else np.int8
            vals[node["id"]] = _Val("x_codes" if not float_mode else "x", dt, node["l"], 1,
                                    True, [h, wd, c])
            in_l = node["l"]
            continue
        ins = [vals[i] for i in node["inputs"]]
        if node["op"] == "output":
            out_val = ins[0] if float_mode else w.materialize(ins[0])
            continue
        vals[node["id"]] = (_float_node if float_mode else _int_node)(w, node, ins, net.arrays)
    out_dt = np.float32 if float_mode else I64
    final = w.op("Identity", [w.cast(out_val, out_dt)], "logits")
    w.nodes[-1].output[0] = "logits"
    del final
    in_dt = TensorProto.FLOAT if float_mode else TensorProto.INT8
    graph = helper.make_graph(
        w.nodes, "faq_jax_" + ("float" if float_mode else "int"),
        [helper.make_tensor_value_info(vals[0].name, in_dt, ["N", c, h, wd])],
        [helper.make_tensor_value_info("logits", _NP2ONNX[np.dtype(out_dt)],
                                       ["N", *(int(d) for d in out_val.shape)])],
        initializer=w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="faq_jax")
    model.ir_version = min(model.ir_version, 10)
    meta = {"format": "faq_jax.intnet.onnx", "version": str(intnet.VERSION),
            "input_l": str(in_l), "logits_l": str(0 if float_mode else out_val.l),
            "layout": "NCHW"}
    helper.set_model_props(model, meta)
    return model


def save(net: intnet.IntegerNetwork, path: str, *, float_mode: bool = False,
         conv_impl: str = "auto") -> None:
    """Writes the ONNX model of ``net`` to ``path``."""
    onnx.save(to_onnx(net, float_mode=float_mode, conv_impl=conv_impl), path)

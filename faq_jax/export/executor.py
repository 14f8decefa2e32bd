"""Integer-only reference executor of an exported FAQ network (NumPy, no floating point).

A tensor is ``q 2^l / d``: integer codes ``q`` (int64 while computing), an integer
exponent ``l`` (the lsb) and an integer denominator ``d`` (1, except after average pooling
over a window whose size is not a power of two). Every operation is integer multiply, add,
shift (``<< k`` or a floor division by ``2^k``), floor division and clip:

- conv/dense: ``q_x * q_w`` summed in int64, ``l = l_x + l_w``; the bias (l = -16) is added
  after aligning both to the smaller l (a left shift: exact).
- folded BatchNorm: ``q_x * q_s`` (l_x + l_s) plus ``q_t`` (l_t), aligned the same way.
- requantize to (b, l'): ``floor(q 2^(l-l') / d + 1/2)`` computed as
  ``floor((q * A + B) / D)`` with ``A = 2^(k+1), B = d, D = 2 d`` for ``k = l - l' >= 0`` and
  ``A = 2, B = d 2^-k, D = d 2^(1-k)`` for ``k < 0``; then clip to the b-bit range. For
  d = 1 and k < 0 this is add-half-then-arithmetic-shift, ``(q + 2^(-k-1)) >> -k``.
- residual add / concat: align to the smallest l (left shifts), then add / concatenate.
- subsample_pad (the option-A shortcut): every s-th pixel of the codes, zero channels
  before and after; l unchanged (exact: it moves codes and adds zeros).
- max pool on the codes (padding never wins); average pool and global mean: the integer
  window sum with ``d`` = the window's element count (a power of two becomes ``l - log2 d``).
  The exact rounding rule is therefore round-half-up of the exact rational mean, which is what
  the float simulation computes (``mean`` then ``floor(x 2^-l + 1/2)``) unless the float mean
  itself was rounded across a half-integer; ``docs/export.md`` reports how often.

Accumulators are int64 (products of 8-bit codes summed over up to ~10^4 terms fit 32 bits, but
the BatchNorm fold at l = -16 needs up to ~48 bits). Output: the logits' codes (int64) and l.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from faq_jax import layers, quant
from faq_jax.export import intnet

I64 = np.int64


class IntTensor:
    """``q 2^l / d`` with integer ``q``, ``l``, ``d`` (d: int or an int array)."""

    def __init__(self, q: np.ndarray, l: int, d: Any = 1):  # noqa: E741 - the paper's l
        if q.dtype.kind not in "iu":
            raise TypeError(f"integer executor got a {q.dtype} tensor")
        self.q, self.l, self.d = q.astype(I64, copy=False), int(l), d

    def exact(self, where: str) -> IntTensor:
        """Returns self with d folded into l (d a power of two); else raises."""
        d = np.asarray(self.d)
        if np.all(d == 1):
            return self
        if d.ndim == 0 and int(d) & (int(d) - 1) == 0:
            return IntTensor(self.q, self.l - (int(d).bit_length() - 1))
        raise NotImplementedError(f"{where}: input is an average over a window of {d} "
                                  "elements (not a power of two) not re-quantized first")

    def exact_or_self(self) -> IntTensor:
        """d folded into l where it is a power of two; unchanged otherwise."""
        d = np.asarray(self.d)
        return self.exact("") if d.ndim == 0 and int(d) & (int(d) - 1) == 0 else self


class IntegerOverflowError(OverflowError):
    """An exponent gap too wide for int64 arithmetic; the message names the node."""


def shl(q: np.ndarray, k: int, where: str) -> np.ndarray:
    """q * 2^k (k >= 0) in int64, refusing results that would not fit."""
    if k == 0:
        return q
    top = int(np.max(np.abs(q), initial=0)).bit_length()
    if k > 62 or (top and top + k > 62):
        raise IntegerOverflowError(
            f"{where}: aligning exponents needs q * 2^{k}, beyond int64. An extreme l causes "
            "this: an activation calibrated on all-zero inputs (l near -130) or an all-zero "
            "weight tensor. Recalibrate on batches that reach that layer, or fix its weights.")
    return q << k


def _align(ts: list[IntTensor], where: str = "") -> tuple[list[np.ndarray], int]:
    lmin = min(t.l for t in ts)
    return [shl(t.q, t.l - lmin, where) for t in ts], lmin


def floor_div(num: np.ndarray, den: Any) -> np.ndarray:
    """floor(num / den) for positive integer den (NumPy's // floors)."""
    return num // den


def requantize(t: IntTensor, bits: int, l_out: int, signed: bool, relu: bool,
               where: str = "requant") -> np.ndarray:
    """Codes of Q_{b,l'}(t) (round half up, clip), optionally after a ReLU."""
    q = np.maximum(t.q, 0) if relu else t.q
    k = t.l - l_out
    d = np.asarray(t.d, I64)
    if k >= 0:
        codes = floor_div(shl(q, k + 1, where) + d, 2 * d)
    else:
        codes = floor_div(2 * q + shl(d, -k, where), shl(d, 1 - k, where))
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return np.clip(codes, -hi if signed else 0, hi)


# Integers below these magnitudes, and sums that stay below them, are exact in floating point.
EXACT_FLOAT = ((2 ** 24, np.float32), (2 ** 53, np.float64))


def int_tensordot(x: np.ndarray, w: np.ndarray, axes) -> np.ndarray:
    """``np.tensordot`` of integer arrays, exactly, as int64. Through float32 or float64 BLAS
    when ``max|x| * max_out sum|w|`` (a bound on every partial sum, in any order) is below
    2^24 or 2^53, so every intermediate is an exact integer; int64 loops (slow) otherwise."""
    w_axes = axes[1]
    out_axes = [a for a in range(w.ndim) if a not in w_axes]
    per_out = np.abs(w.astype(I64)).transpose(*w_axes, *out_axes).reshape(
        int(np.prod([w.shape[a] for a in w_axes])), -1).sum(0)
    bound = int(np.abs(x).max(initial=0)) * int(per_out.max(initial=0))
    for limit, dtype in EXACT_FLOAT:
        if bound < limit:
            return np.tensordot(x.astype(dtype), w.astype(dtype), axes).astype(I64)
    return np.tensordot(x.astype(I64), w.astype(I64), axes)


def _conv(x: np.ndarray, w: np.ndarray, strides, padding, groups: int) -> np.ndarray:
    """NHWC x HWIO integer convolution (torch-style explicit padding), exact int64 sums."""
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, cin_g, cout = w.shape
    win = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::strides[0], ::strides[1]]
    # win: (N, Ho, Wo, C, kh, kw)
    cout_g = cout // groups
    outs = []
    for g in range(groups):
        patch = win[:, :, :, g * cin_g:(g + 1) * cin_g]
        wg = w[..., g * cout_g:(g + 1) * cout_g]
        outs.append(int_tensordot(patch, wg, axes=([3, 4, 5], [2, 0, 1])))
    return outs[0] if groups == 1 else np.concatenate(outs, axis=-1)


def window_sum(q: np.ndarray, window: int, stride: int, padding: int) -> np.ndarray:
    """int64 sums of q (NHWC) over every ``window`` x ``window`` window (zero padding)."""
    qp = np.pad(q, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = sliding_window_view(qp, (window, window), axis=(1, 2))[:, ::stride, ::stride]
    return win.sum(axis=(-2, -1), dtype=I64)


def _avg_pool(t: IntTensor, window: int, stride: int, padding: int = 0,
              count_include_pad: bool = True) -> IntTensor:
    t = t.exact("avg_pool")
    s = window_sum(t.q, window, stride, padding)
    if count_include_pad or padding == 0:
        return IntTensor(s, t.l, window * window).exact_or_self()
    ones = np.ones((1, *t.q.shape[1:3], 1), I64)
    return IntTensor(s, t.l, window_sum(ones, window, stride, padding))


def _adaptive_avg_pool(t: IntTensor, out_hw) -> IntTensor:
    t = t.exact("adaptive_avg_pool")
    n, h, w, c = t.q.shape
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return t
    sums = np.zeros((n, oh, ow, c), I64)
    den = np.zeros((1, oh, ow, 1), I64)
    for i, (h0, h1) in enumerate(layers.adaptive_pool_bins(h, oh)):
        for j, (w0, w1) in enumerate(layers.adaptive_pool_bins(w, ow)):
            sums[:, i, j] = t.q[:, h0:h1, w0:w1].sum(axis=(1, 2))
            den[0, i, j, 0] = (h1 - h0) * (w1 - w0)
    return IntTensor(sums, t.l, den).exact_or_self()


def _max_pool(t: IntTensor, window: int, stride: int, padding: int) -> IntTensor:
    lo = np.iinfo(I64).min
    qp = np.pad(t.q, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=lo)
    win = sliding_window_view(qp, (window, window), axis=(1, 2))[:, ::stride, ::stride]
    return IntTensor(win.max(axis=(-2, -1)), t.l, t.d)


def _subsample_pad(t: IntTensor, stride: int, before: int, after: int) -> IntTensor:
    q = t.q[:, ::stride, ::stride, :]
    return IntTensor(np.pad(q, ((0, 0), (0, 0), (0, 0), (before, after))), t.l)


def _bcast_d(t: IntTensor) -> np.ndarray:
    return np.broadcast_to(np.asarray(t.d, I64), t.q.shape)


def run_node(node: dict[str, Any], ins: list[IntTensor], arrays: dict[str, np.ndarray]
             ) -> IntTensor:
    """Executes one graph node on integer tensors."""
    op, where = node["op"], node.get("path", node["op"])
    if op in ("conv", "dense"):
        x = ins[0].exact(where)
        w = arrays[node["w"]]
        if op == "conv":
            acc = _conv(x.q, w, node["strides"], node["padding"], node["groups"])
        else:
            acc = int_tensordot(x.q, w, axes=([x.q.ndim - 1], [0]))
        out = IntTensor(acc, x.l + node["w_l"])
        if node.get("bias"):
            (a, b), lsb = _align([out, IntTensor(arrays[node["bias"]], node["bias_l"])], where)
            out = IntTensor(a + b, lsb)
        return out
    if op == "bn":
        x = ins[0].exact(where)
        prod = IntTensor(x.q * arrays[node["s"]].astype(I64), x.l + node["s_l"])
        (a, b), lsb = _align([prod, IntTensor(arrays[node["t"]], node["t_l"])], where)
        return IntTensor(a + b, lsb)
    if op == "requant":
        return IntTensor(requantize(ins[0], node["bits"], node["l"], node["signed"],
                                    node["relu"], where), node["l"])
    if op == "add":
        qs, lsb = _align([t.exact(where) for t in ins], where)
        return IntTensor(qs[0] + qs[1], lsb)
    if op == "concat":
        qs, lsb = _align([t.exact(where) for t in ins], where)
        return IntTensor(np.concatenate(qs, axis=node["axis"]), lsb)
    if op == "subsample_pad":
        return _subsample_pad(ins[0].exact(where), *node["args"])
    if op == "max_pool":
        return _max_pool(ins[0], *node["args"])
    if op == "avg_pool":
        kw = {k: node[k] for k in ("padding", "count_include_pad") if k in node}
        return _avg_pool(ins[0], *node["args"], **kw)
    if op == "global_avg_pool":
        t = ins[0].exact(where)
        return IntTensor(t.q.sum(axis=(1, 2)), t.l, t.q.shape[1] * t.q.shape[2]).exact_or_self()
    if op == "adaptive_avg_pool":
        return _adaptive_avg_pool(ins[0], *node["args"])
    if op == "transpose":
        t = ins[0]
        d = t.d if np.ndim(t.d) == 0 else np.transpose(_bcast_d(t), node["perm"])
        return IntTensor(np.transpose(t.q, node["perm"]), t.l, d)
    if op == "reshape":
        t = ins[0]
        shape = (t.q.shape[0], *node["shape"])
        d = t.d if np.ndim(t.d) == 0 else _bcast_d(t).reshape(shape)
        return IntTensor(t.q.reshape(shape), t.l, d)
    if op == "output":
        return ins[0].exact(where)
    raise ValueError(f"unknown op {op!r} in node {node['id']}")


def run(net: intnet.IntegerNetwork, x_codes: np.ndarray,
        trace: Callable[[dict[str, Any], IntTensor], None] | None = None
        ) -> tuple[np.ndarray, int]:
    """Runs ``net`` on the int8 input codes (NHWC); returns (logit codes int64, l).

    ``trace(node, tensor)`` (optional) sees every intermediate tensor.
    """
    x_codes = np.asarray(x_codes)
    if x_codes.dtype.kind not in "iu":
        raise TypeError(f"input codes must be integers, got {x_codes.dtype}")
    values: dict[int, IntTensor] = {}
    out = None
    for node in net.nodes:
        if node["op"] == "input":
            t = IntTensor(x_codes, node["l"])
        else:
            t = run_node(node, [values[i] for i in node["inputs"]], net.arrays)
        values[node["id"]] = t
        if trace is not None:
            trace(node, t)
        if node["op"] == "output":
            out = t
    return out.q, out.l


def input_codes(net: intnet.IntegerNetwork, x: np.ndarray) -> np.ndarray:
    """The input quantizer (outside the integer network): normalised float image -> codes
    (int8 for the default 8-bit input, wider for wider inputs)."""
    node = next(n for n in net.nodes if n["op"] == "input")
    return np.asarray(quant.to_codes(x, bits=node["bits"], lsb=node["l"], signed=True),
                      intnet.int_dtype(node["bits"], True))

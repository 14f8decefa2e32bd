"""Paired accuracy comparison of two networks on the same test images.

Two accuracies measured on one test set are not independent samples: most images are right
(or wrong) for both networks. What differs is the discordant images, and the comparison is
made on them: the difference of accuracies with a paired 95% interval (normal approximation
on the per-image differences) and McNemar's exact test (two-sided binomial on the
discordant pairs).

Evaluations keep each image's top-1 hit as a short string (:func:`pack`), so two
evaluations of one split, written at different times, can be compared later.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # exact ints, any n
    return min(1.0, 2.0 * tail)


def compare(base_correct: Any, run_correct: Any, z: float = 1.959964) -> dict[str, float]:
    """``run`` against ``base`` on the same images (boolean arrays, one entry per image).

    Returns the accuracies and their difference in points, the paired 95% interval of the
    difference, ``b`` (right in base only), ``c`` (right in run only) and McNemar's p.
    """
    a = np.asarray(base_correct, bool)
    r = np.asarray(run_correct, bool)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal-length 1-D per-image arrays, got {a.shape} and "
                         f"{r.shape}")
    d = r.astype(np.float64) - a.astype(np.float64)
    n = d.size
    se = float(np.std(d, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    diff = float(d.mean())
    b, c = int(np.sum(a & ~r)), int(np.sum(~a & r))
    return {"n": n, "base": 100.0 * a.mean(), "run": 100.0 * r.mean(), "diff": 100.0 * diff,
            "ci_low": 100.0 * (diff - z * se), "ci_high": 100.0 * (diff + z * se),
            "b": b, "c": c, "mcnemar_p": mcnemar_p(b, c)}


def format_p(p: float, digits: int = 3) -> str:
    """McNemar's p for a table: ``digits`` significant digits, and "<1e-300" where the exact
    tail is below what a float holds (it would print as 0)."""
    return "<1e-300" if p < 1e-300 else f"{p:.{digits}g}"


def format_row(name: str, cmp: dict[str, float]) -> str:
    """``name  run%  diff [low, high]  p`` as one Markdown table row."""
    return (f"| {name} | {cmp['run']:.2f} | {cmp['diff']:+.2f} | "
            f"[{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}] | {cmp['b']}/{cmp['c']} | "
            f"{format_p(cmp['mcnemar_p'])} |")


def pack(correct: Any) -> str:
    """Per-image hits (boolean, one per image in split order) as base64 of their bits."""
    return base64.b64encode(np.packbits(np.asarray(correct, bool)).tobytes()).decode("ascii")


def unpack(packed: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack` for ``n`` images."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), np.uint8))
    if bits.size < n or bits.size - n >= 8:
        raise ValueError(f"packed hits hold {bits.size} bits, not the bits of {n} images")
    return bits[:n].astype(bool)


def describe(cmp: dict[str, float], what: str = "after - before") -> str:
    """One line: the difference, its paired 95% interval, the image count and McNemar's p."""
    return (f"{what}: {cmp['diff']:+.2f} points, paired 95% interval "
            f"[{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}] on {cmp['n']} images "
            f"({cmp['c']} fixed, {cmp['b']} broken; McNemar p = {format_p(cmp['mcnemar_p'], 2)})")

"""LSQ: learned step size quantization (Esser, McKinstry et al., ICLR 2020, arXiv 1902.08153).

Where FAQ fixes each step by rule (weights: k·σ every step; activations: calibrated once),
LSQ learns the step ``s`` of every quantizer by gradient descent:

    v̂ = s · round(clip(v / s, -Q_N, Q_P))

with the paper's gradients (straight-through for ``v``; for ``s`` the step's own term):

    ∂v̂/∂v = 1 if -Q_N < v/s < Q_P else 0
    ∂v̂/∂s = round(v/s) - v/s  inside,  -Q_N  below,  Q_P  above

The gradient reaching ``s`` is scaled by ``g = 1 / sqrt(N · Q_P)`` (N: elements per example
for activations, weights of the layer for weights), and ``s`` starts at ``2 <|v|> / sqrt(Q_P)``.
Ranges are LSQ's: unsigned ``[0, 2^b - 1]`` after a ReLU, signed ``[-2^(b-1), 2^(b-1) - 1]``.
Rounding is half up, ``floor(x + 1/2)`` (faq_jax's rule: what integer hardware computes; it
differs from ``torch.round``'s half-to-even only on exact ties).

``pow2_step`` keeps ``s`` a power of two: the learned parameter is ``log2 s``, rounded in the
forward pass with a straight-through gradient, so an LSQ network stays a fixed-point network
(``l = round(log2 s)``) that exports to integers like FAQ's. Every forward value is exact
then: ``s`` is built with ``ldexp`` (XLA's ``exp2`` is not exact) and the gradient scale
adds an exact zero, so ``v / s`` and ``codes * s`` are the fixed-point arithmetic.
The gradient that reaches ``log2 s`` is the paper's gradient for ``s`` divided by
``s · ln 2``: a descent step then moves ``s`` as the paper's update of ``s`` would, to first
order (``Δ log2 s = Δs / (s ln 2)``). The chain rule through ``2^t`` multiplies by
``s · ln 2`` instead, which makes ``s`` move ``(s ln 2)^2`` times as fast as the paper's
rule (under 1/100 at ``s = 2^-3``): the exponents would stay where they started.

Quantizers compute in float32 at least (``quant.compute_dtype``): bfloat16 holds integers
exactly only up to 256, so an 8-bit code plus the 1/2 of rounding needs more.

Where the learned step lives: a parameter of the layer (``params``, trained with everything
else, never weight-decayed), named by :func:`param_name`: ``step`` / ``log2_step`` on an
activation quantizer, ``weight_step`` / ``weight_log2_step`` beside a conv/dense kernel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from faq_jax import quant


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): codes span ``[-Q_N, Q_P]``."""
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _round_clip(x: jax.Array, q_n: int, q_p: int) -> jax.Array:
    """The codes ``round(clip(x, -Q_N, Q_P))``, rounding half up (in x's float dtype)."""
    return jnp.floor(jnp.clip(x, -q_n, q_p) + 0.5)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lsq(v: jax.Array, s: jax.Array, q_n: int, q_p: int) -> jax.Array:
    return _round_clip(v / s, q_n, q_p) * s


def _lsq_fwd(v, s, q_n, q_p):
    x = v / s
    r = _round_clip(x, q_n, q_p)
    return r * s, (x, r, s)


def _lsq_bwd(q_n, q_p, res, g):
    x, r, s = res
    inside = (x > -q_n) & (x < q_p)
    dv = jnp.where(inside, g, 0.0)
    ds_elem = jnp.where(inside, r - x, jnp.where(x <= -q_n, -float(q_n), float(q_p)))
    ds = jnp.sum(g * ds_elem).astype(s.dtype).reshape(jnp.shape(s))
    return dv.astype(g.dtype), ds


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def scale_grad(x: jax.Array, scale: float) -> jax.Array:
    """``x`` in the forward pass (exactly: ``x + (y - y)``); its gradient multiplied by
    ``scale`` in the backward."""
    y = x * scale
    return jax.lax.stop_gradient(x) + (y - jax.lax.stop_gradient(y))


def grad_scale(bits: int, signed: bool, num_elements: int) -> float:
    """The paper's ``g = 1 / sqrt(N · Q_P)``."""
    return 1.0 / math.sqrt(num_elements * code_range(bits, signed)[1])


def quantize(v: jax.Array, s: jax.Array, *, bits: int, signed: bool,
             num_elements: int | None = None) -> jax.Array:
    """``v̂`` with the learned scalar step ``s``; ``num_elements`` (default ``v.size``) sets
    the gradient scale (activations: elements per example)."""
    q_n, q_p = code_range(bits, signed)
    n = v.size if num_elements is None else num_elements
    ct = quant.compute_dtype(v.dtype)
    s = scale_grad(jnp.asarray(s, ct), grad_scale(bits, signed, n))
    return _lsq(v.astype(ct), s, q_n, q_p).astype(v.dtype)


def codes(v: jax.Array, s: jax.Array, *, bits: int, signed: bool) -> jax.Array:
    """The integer codes of ``v̂ = s · codes`` (int32): what an integer network stores."""
    q_n, q_p = code_range(bits, signed)
    v = jnp.asarray(v)
    ct = quant.compute_dtype(v.dtype)
    return _round_clip(v.astype(ct) / jnp.asarray(s, ct), q_n, q_p).astype(jnp.int32)


def init_step(v: jax.Array, bits: int, signed: bool) -> jax.Array:
    """The paper's initial step ``2 <|v|> / sqrt(Q_P)`` (weights: the initial weights;
    activations: the first batch), in float32. An all-zero ``v`` gives the smallest normal
    float32 instead of 0 (a step of 0 would divide by zero)."""
    s = 2.0 * jnp.mean(jnp.abs(jnp.asarray(v, jnp.float32))) / math.sqrt(
        code_range(bits, signed)[1])
    return jnp.maximum(s, jnp.finfo(jnp.float32).tiny)


@jax.custom_vjp
def pow2_step(log2_s: jax.Array) -> jax.Array:
    """``s = 2^round(log2_s)`` forward (exact: ``ldexp``), so the learned step stays a power of
    two; backward, the cotangent of ``s`` divided by ``s · ln 2`` (straight through the
    rounding, and the paper's rate for ``s``: see the module docstring)."""
    return _pow2(log2_s)


def _pow2(log2_s):
    log2_s = jnp.asarray(log2_s)
    k = jnp.floor(log2_s + 0.5).astype(jnp.int32)
    return jnp.ldexp(jnp.ones((), log2_s.dtype), k)


def _pow2_fwd(log2_s):
    s = _pow2(log2_s)
    return s, s


def _pow2_bwd(s, g):
    return (g / (s * math.log(2.0)),)


pow2_step.defvjp(_pow2_fwd, _pow2_bwd)


STEP, LOG2_STEP = "step", "log2_step"  # an activation quantizer's learned parameter
WEIGHT = "weight_"  # prefix of a conv/dense layer's: weight_step, weight_log2_step


def param_name(*, weight: bool, pow2: bool) -> str:
    """The name of an LSQ quantizer's learned parameter (``log2 s`` with ``pow2``, else s)."""
    return (WEIGHT if weight else "") + (LOG2_STEP if pow2 else STEP)


def is_step_param(name: str) -> bool:
    """Whether a parameter called ``name`` is an LSQ step (no weight decay on it)."""
    return name in (STEP, LOG2_STEP, WEIGHT + STEP, WEIGHT + LOG2_STEP)


def to_param(s: jax.Array, pow2: bool) -> jax.Array:
    """The parameter that stores step ``s``: ``log2 s`` (pow2) or ``s``, float32."""
    s = jnp.asarray(s, jnp.float32)
    return jnp.log2(s) if pow2 else s


def step_of(param: jax.Array, pow2: bool) -> jax.Array:
    """The step the forward pass uses: :func:`pow2_step` of ``log2 s`` (pow2), or ``s``."""
    return pow2_step(param) if pow2 else param


def pow2_exponent(s: float) -> int | None:
    """``l`` with ``s == 2^l`` exactly, or None when ``s`` is not a power of two."""
    mantissa, exponent = math.frexp(float(s))
    return exponent - 1 if mantissa == 0.5 else None

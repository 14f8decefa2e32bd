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
(``l = round(log2 s)``) that exports to integers like FAQ's.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): codes span ``[-Q_N, Q_P]``."""
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lsq(v: jax.Array, s: jax.Array, q_n: int, q_p: int) -> jax.Array:
    return jnp.floor(jnp.clip(v / s, -q_n, q_p) + 0.5) * s


def _lsq_fwd(v, s, q_n, q_p):
    x = v / s
    r = jnp.floor(jnp.clip(x, -q_n, q_p) + 0.5)
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
    """``x`` in the forward pass; its gradient multiplied by ``scale`` in the backward."""
    return jax.lax.stop_gradient(x - x * scale) + x * scale


def grad_scale(bits: int, signed: bool, num_elements: int) -> float:
    """The paper's ``g = 1 / sqrt(N · Q_P)``."""
    return 1.0 / math.sqrt(num_elements * code_range(bits, signed)[1])


def quantize(v: jax.Array, s: jax.Array, *, bits: int, signed: bool,
             num_elements: int | None = None) -> jax.Array:
    """``v̂`` with the learned scalar step ``s``; ``num_elements`` (default ``v.size``) sets
    the gradient scale (activations: elements per example)."""
    q_n, q_p = code_range(bits, signed)
    n = v.size if num_elements is None else num_elements
    s = scale_grad(jnp.asarray(s, v.dtype), grad_scale(bits, signed, n))
    return _lsq(v, s, q_n, q_p)


def init_step(v: jax.Array, bits: int, signed: bool) -> jax.Array:
    """The paper's initial step ``2 <|v|> / sqrt(Q_P)`` (weights: the initial weights;
    activations: the first batch)."""
    return 2.0 * jnp.mean(jnp.abs(v)) / math.sqrt(code_range(bits, signed)[1])


def pow2_step(log2_s: jax.Array) -> jax.Array:
    """``2^round(log2_s)`` forward; the gradient of ``2^log2_s`` backward (straight-through
    for the rounding), so the learned step stays a power of two."""
    rounded = log2_s + jax.lax.stop_gradient(jnp.floor(log2_s + 0.5) - log2_s)
    return jnp.exp2(rounded)

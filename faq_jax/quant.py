"""The FAQ fixed-point quantizer Q_{b,l} and the rules that choose its l.

Q_{b,l}(x) rounds x to the grid of multiples of 2^l (the least-significant bit, ``lsb`` = l)
and clips it to what ``b`` bits hold:

- unsigned (ReLU outputs):  clip(round(x 2^-l), 0, 2^b - 1) 2^l
- signed (weights, BN constants, normalised input):
  clip(round(x 2^-l), -(2^(b-1) - 1), 2^(b-1) - 1) 2^l   (symmetric; -2^(b-1) is unused)

Rounding is half up, floor(v + 1/2): what an integer add-half-then-shift computes, so a
simulated network and its integer-only export agree bit for bit. The gradient is the
straight-through estimator: identity where the value was not clipped, zero where it was.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

MIN_BITS = 2
MAX_BITS = 32


def check_bits(bits: int, what: str = "bits") -> int:
    """Returns ``bits`` if it is an int in [2, 32]; raises ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"{what} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"{what}={bits} is outside the supported range [{MIN_BITS}, {MAX_BITS}]; "
            "use e.g. 8 or 4 bits."
        )
    return int(bits)


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """The integer codes Q_b uses: [0, 2^b-1] unsigned, [-(2^(b-1)-1), 2^(b-1)-1] signed."""
    bits = check_bits(bits)
    if signed:
        hi = 2 ** (bits - 1) - 1
        return -hi, hi
    return 0, 2**bits - 1


def _check_lsb(lsb) -> None:
    """Rejects concrete non-integer l; traced values are the caller's responsibility."""
    if isinstance(lsb, jax.core.Tracer):
        return
    if isinstance(lsb, bool):
        raise ValueError(f"lsb must be an integer (the exponent l of the step 2^l), got {lsb!r}")
    arr = np.asarray(lsb)
    if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(
            f"lsb must be an integer (the exponent l of the step 2^l), got {lsb!r}"
        )


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype a quantizer computes in: bf16/f16 inputs are computed in f32, since codes up
    to 2^b - 1 and the + 1/2 of rounding must be exact (bf16 holds 8 significant bits)."""
    return jnp.promote_types(dtype, jnp.float32)


def _shift_mode(lsb) -> str:
    """How :func:`_shift` scales by 2^(+-l): decided at trace time, from l alone.

    "scalar": l is concrete and 2^l, 2^-l are normal numbers (one multiply);
    "ldexp": l is concrete and extreme (jnp.ldexp per element, the reference);
    "split": l is traced (up to three normal power-of-two factors, see ``_shift``).
    """
    if isinstance(lsb, jax.core.Tracer):
        return "split"
    a = np.asarray(lsb)
    return "scalar" if a.size and np.all(np.abs(a) <= 126) else "ldexp"


def _shift(x: jax.Array, lsb: jax.Array, mode: str) -> jax.Array:
    """x * 2^l, equal to ``jnp.ldexp(x, l)`` for every value the quantizer produces.

    ``ldexp`` of a whole tensor costs a frexp, a float ``pow`` and selects per element:
    most of a quantized network's elementwise work. Instead 2^l is built with ``ldexp``
    on the (scalar) l and the tensor multiplied by it: a product with a power of two is
    exact whenever it is a normal number, so it equals ``ldexp``'s. A traced l may lie
    outside the normal exponent range (an all-zero calibration batch gives l = -134 at 8
    bits), so it is split into three normal factors; only results below the smallest
    normal number could then round twice, and the callers never see a difference: codes
    floor(v + 1/2) of such v are 0, and shifted nonzero integer codes are normal.
    (``exp2`` of an integer is not exact on XLA; ``ldexp`` is.)
    """
    k = jnp.asarray(lsb).astype(jnp.int32)
    if mode == "ldexp":
        return jnp.ldexp(x, k)
    one = jnp.ones((), x.dtype)
    if mode == "scalar":
        return x * jnp.ldexp(one, k)
    fi = jnp.finfo(x.dtype)
    lo, hi = fi.minexp, fi.maxexp - 1  # exponents of the normal powers of two
    k = jnp.clip(k, 3 * lo, 3 * hi)  # beyond this every finite x gives 0 or inf anyway
    k1 = jnp.clip(k, lo, hi)
    k2 = jnp.clip(k - k1, lo, hi)
    return x * jnp.ldexp(one, k1) * jnp.ldexp(one, k2) * jnp.ldexp(one, k - k1 - k2)


def _codes(x: jax.Array, lsb: jax.Array, bits: int, signed: bool, mode: str) -> jax.Array:
    """Unclipped integer codes floor(x 2^-l + 1/2), in the compute dtype."""
    ct = compute_dtype(x.dtype)
    return jnp.floor(_shift(x.astype(ct), -jnp.asarray(lsb), mode) + 0.5)


# Codes of at most this many bits pass through bfloat16 (8 significant bits) on their way
# to the output: exact, and it makes XLA store them instead of recomputing them (below).
STORED_CODE_BITS = 8


def _stored(codes: jax.Array, bits: int, signed: bool) -> jax.Array:
    """The clipped codes, rounded through bfloat16 when b <= 8: the same values.

    bfloat16 holds every integer of magnitude <= 256 exactly, so the round trip changes no
    code (a NaN stays NaN; its payload bits are not kept). It changes what XLA does with
    them: XLA:CPU's fusion counts a float32 -> bfloat16 conversion as expensive and does
    not duplicate it into consumers, so the codes are computed once and stored. Without it
    XLA:CPU recomputes the cheap elementwise chain BN -> residual add -> ReLU -> quantizer
    inside every consumer: in a ResNet-50 W4A4 step, up to 20 quantizers deep in the
    transposes that feed the weight-gradient convolutions (benchmarks/RESULTS.md, change 6;
    tests/fusion_test.py). GPU compilers may remove the pair (excess precision allowed).
    """
    lo, hi = int_range(bits, signed)
    codes = jnp.clip(codes, lo, hi)
    if bits <= STORED_CODE_BITS:
        codes = codes.astype(jnp.bfloat16).astype(codes.dtype)
    return codes


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fixed_point(x: jax.Array, lsb: jax.Array, bits: int, signed: bool, mode: str,
                 ) -> jax.Array:
    codes = _stored(_codes(x, lsb, bits, signed, mode), bits, signed)
    return _shift(codes, lsb, mode).astype(x.dtype)


def _fixed_point_fwd(x, lsb, bits, signed, mode):
    lo, hi = int_range(bits, signed)
    codes = _codes(x, lsb, bits, signed, mode)
    y = _shift(_stored(codes, bits, signed), lsb, mode).astype(x.dtype)
    in_range = (codes >= lo) & (codes <= hi)
    return y, (in_range, jnp.zeros_like(lsb))


def _fixed_point_bwd(bits, signed, mode, res, g):
    in_range, zero_lsb = res
    # Straight-through: pass the gradient where x was representable, block it where clipped.
    # l is a frozen (activations) or non-differentiable (weights) quantity: zero cotangent.
    return jnp.where(in_range, g, jnp.zeros_like(g)), zero_lsb


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


def fixed_point(x: jax.Array, *, bits: int, lsb, signed: bool) -> jax.Array:
    """Q_{b,l}(x): fixed-point fake quantization with a straight-through gradient.

    Args:
      x: float array (float32, bfloat16, float64 ...); the output has the same dtype.
      bits: precision b, an int in [2, 32].
      lsb: the integer l (step 2^l); a Python int or an int/float array broadcasting
        against ``x``. Concrete values must be integral; traced ones are trusted.
      signed: symmetric signed range (weights, BN constants, input) or unsigned (ReLU).

    Returns:
      x rounded half up to multiples of 2^l and clipped to b bits, as ``x.dtype``.
    """
    bits = check_bits(bits)
    _check_lsb(lsb)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"fixed_point expects a floating-point x, got dtype {x.dtype}")
    mode = _shift_mode(lsb)
    lsb = jnp.asarray(lsb, compute_dtype(x.dtype))
    return _fixed_point(x, lsb, bits, bool(signed), mode)


def to_codes(x: jax.Array, *, bits: int, lsb, signed: bool) -> jax.Array:
    """The clipped integer codes of Q_{b,l}(x) (int32/int64): what an integer network stores."""
    return codes_and_overflow(x, bits=bits, lsb=lsb, signed=signed)[0]


def codes_and_overflow(x: jax.Array, *, bits: int, lsb, signed: bool,
                       ) -> tuple[jax.Array, jax.Array]:
    """:func:`to_codes` of x, and whether any value of x lay beyond the ``bits`` range
    (was clipped): the exporter refuses constants that the quantizer would clip."""
    bits = check_bits(bits)
    _check_lsb(lsb)
    x = jnp.asarray(x)
    lo, hi = int_range(bits, signed)
    mode = _shift_mode(lsb)
    raw = _codes(x, jnp.asarray(lsb, compute_dtype(x.dtype)), bits, signed, mode)
    codes = jnp.clip(raw, lo, hi)
    dtype = jnp.int64 if bits > 31 and jax.config.jax_enable_x64 else jnp.int32
    return codes.astype(dtype), jnp.any((raw < lo) | (raw > hi))


def weight_lsb(w: jax.Array, *, bits: int, clip_std: float | None) -> jax.Array:
    """The per-tensor weight l of FAQ: ``l = ceil(log2 Δ)``, recomputed every step.

    ``Δ = clip_std * std(w) / (2^(b-1) - 1)`` (the paper clips at a multiple k of the
    standard deviation, k = 4.12 for 4 bits), or ``Δ = max|w| / (2^(b-1) - 1)`` when
    ``clip_std`` is None (faq_jax's 8-bit rule: no clipping). l carries no gradient.

    Returns:
      A float32 scalar holding an integer.
    """
    bits = check_bits(bits)
    if clip_std is not None and not clip_std > 0:
        raise ValueError(f"clip_std must be positive or None (max-abs rule), got {clip_std!r}")
    w = jax.lax.stop_gradient(jnp.asarray(w, jnp.float32))
    hi = 2 ** (bits - 1) - 1
    spread = jnp.max(jnp.abs(w)) if clip_std is None else clip_std * jnp.std(w)
    delta = spread / hi
    # An all-zero tensor has no scale; any l represents it exactly. Keep l finite.
    return round_up_pow2_exponent(delta)


def round_up_pow2_exponent(y_max: jax.Array) -> jax.Array:
    """ceil(log2 y_max): the exponent of y_max rounded up to a power of two."""
    y_max = jnp.asarray(y_max, jnp.float32)
    y_max = jnp.maximum(y_max, jnp.finfo(jnp.float32).tiny)
    # frexp, not log2: y = m 2^e with m in [0.5, 1) is exact, and XLA's log2 is not.
    mantissa, exponent = jnp.frexp(y_max)
    return jnp.where(mantissa == 0.5, exponent - 1, exponent).astype(jnp.float32)


def activation_lsb(y_max: jax.Array, *, bits: int, signed: bool = False) -> jax.Array:
    """l for an activation with calibrated range y_max: ``l = log2(y_max') - b``.

    y_max' is y_max rounded up to a power of two (FAQ section 3). A signed tensor spends
    one bit on the sign: ``l = log2(y_max') - (b - 1)``.
    """
    bits = check_bits(bits)
    return round_up_pow2_exponent(y_max) - (bits - 1 if signed else bits)


def uncalibrated_activation_lsb(bits: int, signed: bool = False) -> int:
    """l used without calibration (FAQ control experiment): y_max = 2^(b/2) - 1."""
    bits = check_bits(bits)
    y_max = 2.0 ** (bits / 2) - 1
    return int(np.ceil(np.log2(y_max))) - (bits - 1 if signed else bits)


def percentile(x: jax.Array, q: float) -> jax.Array:
    """The q-th percentile of all of x (linear interpolation, as ``np.percentile``).

    Computed from a ``top_k`` of the upper tail instead of a full sort: calibration asks
    for q >= 99.9 of tensors with 10^8 elements, where only the top 0.1% matters.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must lie in [0, 100], got {q!r}")
    flat = jnp.ravel(x).astype(jnp.float32)
    n = flat.shape[0]
    rank = q / 100.0 * (n - 1)
    lo_rank = int(np.floor(rank))
    frac = rank - lo_rank
    # Elements sorted descending: position from the top of ascending rank r is n-1-r.
    k = n - lo_rank  # covers ranks lo_rank .. n-1
    top = jax.lax.top_k(flat, k)[0]
    lo_val = top[k - 1]
    hi_val = top[k - 2] if k >= 2 else lo_val
    return lo_val + frac * (hi_val - lo_val)

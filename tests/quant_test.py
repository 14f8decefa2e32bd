"""The quantizer against FAQ.md section 1-3, case by case and by property."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import quant


def q(x, bits, lsb, signed):
    return np.asarray(quant.fixed_point(jnp.asarray(x, jnp.float32), bits=bits, lsb=lsb,
                                        signed=signed))


# Hand-computed from q = clip(floor(x 2^-l + 1/2), lo, hi) 2^l.
@pytest.mark.parametrize(
    "bits,lsb,signed,x,expected",
    [
        # 8-bit signed, l = -5 (the input quantizer): codes -127..127, step 1/32.
        (8, -5, True, [0.0, 0.015625, 0.0156, -0.015625, 1.0, 3.97, 4.0, -9.0],
         [0.0, 0.03125, 0.0, 0.0, 1.0, 3.96875, 3.96875, -3.96875]),
        # 8-bit unsigned, l = -4: codes 0..255, step 1/16, max 15.9375.
        (8, -4, False, [-1.0, 0.03, 0.03125, 0.5, 15.9375, 16.0, 100.0],
         [0.0, 0.0, 0.0625, 0.5, 15.9375, 15.9375, 15.9375]),
        # 4-bit signed, l = -2: codes -7..7, step 1/4, max 1.75; -8 is never used.
        (4, -2, True, [-2.0, -1.75, -0.125, -0.126, 0.125, 0.375, 1.8],
         [-1.75, -1.75, 0.0, -0.25, 0.25, 0.5, 1.75]),
        # 4-bit unsigned, l = -1: codes 0..15, step 1/2, max 7.5.
        (4, -1, False, [-0.3, 0.24, 0.25, 0.74, 0.75, 7.4, 9.0],
         [0.0, 0.0, 0.5, 0.5, 1.0, 7.5, 7.5]),
        # 2-bit signed, l = 0: codes -1..1.
        (2, 0, True, [-3.0, -0.5, -0.51, 0.49, 0.5, 5.0], [-1.0, 0.0, -1.0, 0.0, 1.0, 1.0]),
        # 2-bit unsigned, l = 1: codes 0..3, step 2, max 6.
        (2, 1, False, [0.9, 1.0, 2.9, 3.0, 4.99, 5.0, 100.0], [0.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0]),
        # Positive l: 8-bit signed with step 4.
        (8, 2, True, [1.9, 2.0, 6.0, 1000.0], [0.0, 4.0, 8.0, 508.0]),
    ],
)
def test_hand_computed(bits, lsb, signed, x, expected):
    np.testing.assert_array_equal(q(x, bits, lsb, signed), np.asarray(expected, np.float32))


def test_round_half_up_not_half_even():
    # Python's round() is half-to-even; FAQ's integer network adds 1/2 and shifts.
    np.testing.assert_array_equal(q([0.5, 1.5, 2.5, -0.5, -1.5], 8, 0, True),
                                  [1.0, 2.0, 3.0, 0.0, -1.0])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_properties(bits, signed):
    rng = np.random.default_rng(bits)
    x = rng.normal(0, 3, size=4096).astype(np.float32)
    lsb = -2
    y = q(x, bits, lsb, signed)
    codes = y * 2.0**-lsb
    lo, hi = quant.int_range(bits, signed)
    # On the 2^l grid, inside the range.
    np.testing.assert_array_equal(codes, np.round(codes))
    assert codes.min() >= lo and codes.max() <= hi
    # Idempotent.
    np.testing.assert_array_equal(q(y, bits, lsb, signed), y)
    # Never further than half a step from x where not clipped.
    inside = (x >= lo * 2.0**lsb) & (x <= hi * 2.0**lsb)
    assert np.all(np.abs(y - x)[inside] <= 2.0**lsb / 2)


@pytest.mark.parametrize("signed", [True, False])
def test_gradient_is_the_in_range_mask(signed):
    x = jnp.linspace(-3, 3, 601)
    bits, lsb = 4, -2
    g = jax.grad(lambda x: jnp.sum(quant.fixed_point(x, bits=bits, lsb=lsb, signed=signed)))(x)
    lo, hi = quant.int_range(bits, signed)
    codes = np.floor(np.asarray(x) * 4 + 0.5)
    np.testing.assert_array_equal(np.asarray(g), ((codes >= lo) & (codes <= hi)).astype(float))
    # The lsb is not learned: its cotangent is zero.
    glsb = jax.grad(lambda e: jnp.sum(quant.fixed_point(x, bits=4, lsb=e, signed=signed)))(-2.0)
    assert float(glsb) == 0.0


def test_int_range():
    assert quant.int_range(8, True) == (-127, 127)
    assert quant.int_range(8, False) == (0, 255)
    assert quant.int_range(4, True) == (-7, 7)
    assert quant.int_range(2, False) == (0, 3)
    assert quant.int_range(32, True) == (-(2**31 - 1), 2**31 - 1)


def test_jit_vmap_and_array_lsb():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16)), jnp.float32)
    lsb = jnp.asarray([-1.0, -2.0, -3.0, -4.0])[:, None]
    eager = quant.fixed_point(x, bits=4, lsb=lsb, signed=True)
    jitted = jax.jit(lambda x, e: quant.fixed_point(x, bits=4, lsb=e, signed=True))(x, lsb)
    vmapped = jax.vmap(lambda x, e: quant.fixed_point(x, bits=4, lsb=e, signed=True))(x, lsb)
    np.testing.assert_array_equal(eager, jitted)
    np.testing.assert_array_equal(eager, vmapped)
    for i, (row, e) in enumerate(zip(np.asarray(eager), [-1, -2, -3, -4], strict=True)):
        np.testing.assert_array_equal(row, q(np.asarray(x)[i], 4, e, True))


def test_bfloat16_exact_and_dtype_kept():
    rng = np.random.default_rng(1)
    x32 = jnp.asarray(rng.normal(0, 2, size=2048), jnp.float32)
    x16 = x32.astype(jnp.bfloat16)
    for bits, signed in [(8, True), (8, False), (4, True), (4, False)]:
        y16 = quant.fixed_point(x16, bits=bits, lsb=-3, signed=signed)
        assert y16.dtype == jnp.bfloat16
        # The bf16 result is the f32 quantization of the same (bf16) values, exactly.
        y32 = quant.fixed_point(x16.astype(jnp.float32), bits=bits, lsb=-3, signed=signed)
        np.testing.assert_array_equal(np.asarray(y16, np.float32), np.asarray(y32))
        g = jax.grad(lambda v, b=bits, s=signed: jnp.sum(
            quant.fixed_point(v, bits=b, lsb=-3, signed=s).astype(jnp.float32)))(x16)
        assert g.dtype == jnp.bfloat16


def test_float64_under_x64():
    with jax.enable_x64(True):
        x = jnp.asarray([0.1, 0.2, 1e-9], jnp.float64)
        y = quant.fixed_point(x, bits=32, lsb=-16, signed=True)
        assert y.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(y), np.floor(np.asarray(x) * 65536 + 0.5) / 65536)


@pytest.mark.parametrize("bits", [1, 0, 33, 4.0, "8", True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        quant.fixed_point(jnp.ones(3), bits=bits, lsb=0, signed=True)


@pytest.mark.parametrize("lsb", [0.5, -2.25, np.asarray([1.0, 0.3]), float("nan"), True])
def test_bad_lsb(lsb):
    with pytest.raises(ValueError, match="lsb"):
        quant.fixed_point(jnp.ones(2), bits=8, lsb=lsb, signed=True)


def test_weight_lsb_clip_std_rule():
    # A tensor with std exactly 0.1: Δ = 4.12 * 0.1 / 7 = 0.0589 -> l = ceil(log2 Δ) = -4.
    w = np.tile(np.array([0.1, -0.1], np.float32), 500)
    assert np.isclose(np.std(w), 0.1)
    assert float(quant.weight_lsb(w, bits=4, clip_std=4.12)) == -4.0
    # std 0.2: Δ = 0.1177 -> l = -3; std 0.05 -> Δ = 0.0294 -> l = -5.
    assert float(quant.weight_lsb(2 * w, bits=4, clip_std=4.12)) == -3.0
    assert float(quant.weight_lsb(w / 2, bits=4, clip_std=4.12)) == -5.0
    # Exactly representable boundary: k*std/7 = 2^-3 exactly stays -3 (ceil of an integer).
    w8 = np.tile(np.array([7 / 8 / 4.0, -7 / 8 / 4.0], np.float32), 8)  # std 7/32
    assert float(quant.weight_lsb(w8, bits=4, clip_std=4.0)) == -3.0


def test_weight_lsb_maxabs_rule_and_no_gradient():
    w = jnp.asarray([0.5, -1.27, 0.01])
    # 8-bit: Δ = 1.27 / 127 = 0.01 -> l = ceil(log2 0.01) = -6 (step 1/64 covers 1.27).
    assert float(quant.weight_lsb(w, bits=8, clip_std=None)) == -6.0
    y = quant.fixed_point(w, bits=8, lsb=quant.weight_lsb(w, bits=8, clip_std=None), signed=True)
    assert float(jnp.max(jnp.abs(y))) == pytest.approx(81 / 64)  # no clipping: 1.27 -> 81/64
    g = jax.grad(lambda w: quant.weight_lsb(w, bits=8, clip_std=None))(w)
    np.testing.assert_array_equal(g, 0.0)
    assert np.isfinite(float(quant.weight_lsb(jnp.zeros(4), bits=4, clip_std=4.12)))


def test_activation_lsb():
    # y_max rounded up to a power of two, then l = log2(y_max) - b.
    assert float(quant.activation_lsb(5.3, bits=8)) == 3 - 8
    assert float(quant.activation_lsb(8.0, bits=8)) == 3 - 8  # already a power of two
    assert float(quant.activation_lsb(8.01, bits=4)) == 4 - 4
    assert float(quant.activation_lsb(0.3, bits=4)) == -1 - 4  # 0.3 -> 0.5
    assert float(quant.activation_lsb(5.3, bits=8, signed=True)) == 3 - 7
    # Without calibration (FAQ control experiment): y_max = 2^(b/2) - 1.
    assert quant.uncalibrated_activation_lsb(8) == 4 - 8  # y_max 15 -> 16
    assert quant.uncalibrated_activation_lsb(4) == 2 - 4  # y_max 3 -> 4


def test_percentile_matches_numpy():
    x = np.random.default_rng(3).exponential(size=(7, 333)).astype(np.float32)
    for p in [99.99, 99.9, 50.0, 100.0, 0.0]:
        assert float(quant.percentile(jnp.asarray(x), p)) == pytest.approx(
            np.percentile(x, p), rel=1e-6)


def test_power_of_two_exponents_exact():
    # Every power of two (and its neighbours) over the float32 normal range.
    e = np.arange(-120, 120)
    y = np.ldexp(np.float32(1), e).astype(np.float32)
    np.testing.assert_array_equal(quant.round_up_pow2_exponent(y), e)
    np.testing.assert_array_equal(quant.round_up_pow2_exponent(np.nextafter(y, np.inf)), e + 1)
    np.testing.assert_array_equal(quant.round_up_pow2_exponent(np.nextafter(y, 0)), e)


def test_to_codes():
    codes = quant.to_codes(jnp.asarray([0.26, -5.0, 1.0]), bits=4, lsb=-2, signed=True)
    assert codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, [1, -7, 4])


@pytest.mark.parametrize("bits", [2, 4, 7, 8, 9, 12])
@pytest.mark.parametrize("signed", [True, False])
def test_every_code_is_kept_at_any_lsb(bits, signed):
    # Codes of <= 8 bits pass through bfloat16 inside the quantizer (quant._stored); every
    # code times 2^l must come back unchanged, from the bottom of the normal float32 range
    # to its top, with concrete and traced l. (XLA flushes subnormals to zero, with or
    # without the round trip.)
    lo, hi = quant.int_range(bits, signed)
    codes = np.arange(lo, hi + 1, dtype=np.float64)
    traced = jax.jit(lambda x, k: quant.fixed_point(x, bits=bits, lsb=k, signed=signed))
    for lsb in (-126, -120, -5, 0, 7, 100, 127 - bits):
        want = np.ldexp(codes, lsb).astype(np.float32)  # exact
        x = jnp.asarray(want)
        for got in (quant.fixed_point(x, bits=bits, lsb=lsb, signed=signed),
                    traced(x, jnp.float32(lsb))):
            np.testing.assert_array_equal(np.asarray(got).view(np.uint32),
                                          want.view(np.uint32), err_msg=f"l={lsb}")


def _q_sum(v, **kw):
    return jnp.sum(quant.fixed_point(v, **kw))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_numpy_formula_on_random_values(dtype):
    # clip(floor(x 2^-l + 1/2), lo, hi) 2^l in float64 NumPy, against the implementation
    # (including its bfloat16 round trip of <= 8-bit codes), and the STE mask as gradient.
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 20, 3000), rng.integers(-600, 600, 1000) / 4,
                        [np.inf, -np.inf, 0.0, -0.0]])
    x = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)  # on dtype's grid
    for bits, signed in ((2, False), (4, True), (4, False), (8, True), (8, False), (12, True)):
        lo, hi = quant.int_range(bits, signed)
        for lsb in (-6, -2, 0, 3):
            codes = np.floor(x * 2.0**-lsb + 0.5)
            want = np.clip(codes, lo, hi) * 2.0**lsb
            xj = jnp.asarray(x, dtype)
            got = quant.fixed_point(xj, bits=bits, lsb=lsb, signed=signed)
            assert got.dtype == dtype
            np.testing.assert_array_equal(np.asarray(got, np.float64), want.astype(dtype))
            q_sum = functools.partial(_q_sum, bits=bits, lsb=lsb, signed=signed)
            grad = jax.grad(q_sum)(xj)
            np.testing.assert_array_equal(np.asarray(grad, np.float64),
                                          ((codes >= lo) & (codes <= hi)).astype(np.float64))


def test_codes_and_overflow():
    codes, over = quant.codes_and_overflow(jnp.asarray([0.5, -1.0, 6.9]), bits=4, lsb=0,
                                           signed=True)
    np.testing.assert_array_equal(codes, [1, -1, 7])
    assert not bool(over)
    codes, over = quant.codes_and_overflow(jnp.asarray([8.0]), bits=4, lsb=0, signed=True)
    assert int(codes[0]) == 7 and bool(over)

"""LSQ's quantizer and gradients (arXiv 1902.08153, section 2) on hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faq_jax import lsq


def test_forward_is_step_times_clipped_rounded_codes():
    v = jnp.array([0.3, -1.7, 5.0, 0.25, -0.75])
    got = lsq.quantize(v, 0.5, bits=2, signed=True)  # codes in [-2, 1]
    np.testing.assert_allclose(got, [0.5, -1.0, 0.5, 0.5, -0.5])  # 0.5 and -1.5 tie half up
    u = lsq.quantize(jnp.array([-1.0, 0.2, 9.0]), 1.0, bits=3, signed=False)  # [0, 7]
    np.testing.assert_allclose(u, [0.0, 0.0, 7.0])


def test_step_gradient_matches_the_paper_by_hand():
    """∂v̂/∂s: round(v/s) - v/s inside, -Q_N below, Q_P above; times g = 1/sqrt(N Q_P)."""
    v = jnp.array([0.3, -1.7, 5.0])  # v/s = 0.6 (inside), -3.4 (below -2), 10 (above 1)
    s = jnp.asarray(0.5)
    dv, ds = jax.grad(lambda v, s: jnp.sum(lsq.quantize(v, s, bits=2, signed=True)),
                      argnums=(0, 1))(v, s)
    g = 1.0 / math.sqrt(3 * 1)
    assert float(ds) == pytest.approx(((1 - 0.6) + (-2) + 1) * g, rel=1e-6)
    np.testing.assert_array_equal(dv, [1.0, 0.0, 0.0])  # straight through inside only


def test_step_gradient_agrees_with_finite_differences_between_code_changes():
    """Away from rounding boundaries v̂ = s · r is linear in s with slope r (clipped values:
    ±Q); LSQ's gradient adds -v/s inside, the term the STE gives for round(v/s)."""
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=64) * 0.8, jnp.float32)
    s, eps = 0.3, 1e-4
    loss = lambda s: jnp.sum(lsq._lsq(v, s, 4, 3) * v)  # noqa: E731 - unscaled quantizer
    fd = (loss(s + eps) - loss(s - eps)) / (2 * eps)
    x = np.asarray(v) / s
    r = np.clip(np.floor(np.clip(x, -4, 3) + 0.5), -4, 3)
    assert float(fd) == pytest.approx(float(np.sum(r * np.asarray(v))), rel=1e-3)
    lsq_grad = float(jax.grad(loss)(s))
    inside = (x > -4) & (x < 3)
    want = np.sum(np.asarray(v) * np.where(inside, r - x, r))
    assert lsq_grad == pytest.approx(float(want), rel=1e-4)


def test_init_step_and_gradient_scale():
    v = jnp.array([1.0, -3.0, 2.0, 0.0])
    assert float(lsq.init_step(v, 4, True)) == pytest.approx(2 * 1.5 / math.sqrt(7))
    assert lsq.grad_scale(4, False, 100) == pytest.approx(1 / math.sqrt(100 * 15))
    assert lsq.code_range(4, True) == (8, 7) and lsq.code_range(4, False) == (0, 15)


def test_power_of_two_step_rounds_forward_and_passes_the_gradient_straight_through():
    theta = jnp.asarray(-2.4)  # 2^-2.4 rounds to 2^-2
    assert float(lsq.pow2_step(theta)) == 0.25
    assert float(lsq.pow2_step(jnp.asarray(-2.6))) == 0.125
    grad = jax.grad(lambda t: lsq.pow2_step(t))(theta)
    assert float(grad) == pytest.approx(1 / (0.25 * math.log(2)))  # 1 / (s ln 2), s rounded
    # Through the quantizer: every forward value is a code times a power of two.
    out = lsq.quantize(jnp.array([0.3, 0.7, -0.9]), lsq.pow2_step(theta), bits=4, signed=True)
    codes = np.asarray(out) / 0.25
    np.testing.assert_array_equal(codes, np.round(codes))


def test_a_power_of_two_step_moves_at_the_papers_rate_for_s():
    """One SGD step on log2 s changes s as the same step on s itself would (to first order),
    so learned exponents move; the chain rule through 2^t would move s (s ln 2)^2 times as
    fast, ~1/130 here, and the exponents would stay where they started."""
    v = jnp.asarray(np.random.default_rng(2).normal(size=500), jnp.float32)
    loss = lambda s: jnp.sum((lsq.quantize(v, s, bits=3, signed=True) - v) ** 2)  # noqa: E731
    lr, s0 = 1e-5, 0.125
    ds = -lr * float(jax.grad(loss)(jnp.float32(s0)))
    dlog2 = -lr * float(jax.grad(lambda t: loss(lsq.pow2_step(t)))(jnp.float32(-3.0)))
    assert abs(ds) > 1e-4
    assert s0 * 2.0**dlog2 - s0 == pytest.approx(ds, rel=1e-2)


def test_bfloat16_inputs_are_quantized_in_float32():
    """bf16 holds integers exactly only up to 256: an 8-bit code plus the 1/2 of rounding is
    computed in float32, so odd codes above 128 and the clip at Q_P stay right."""
    x = jnp.array([129.0, 131.0, 255.0, 300.0], jnp.bfloat16)
    out = lsq.quantize(x, lsq.pow2_step(jnp.float32(0.0)), bits=8, signed=False)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), [129, 131, 255, 255])
    np.testing.assert_array_equal(lsq.codes(x, 1.0, bits=8, signed=False), [129, 131, 255, 255])


def test_power_of_two_forward_is_exact_fixed_point():
    """With s = 2^l the quantizer is Q_{b,l} on LSQ's range: the gradient scale adds an exact
    zero and the step is built with ldexp, so every value is codes * 2^l bit for bit."""
    v = jnp.asarray(np.random.default_rng(1).normal(size=1000) * 3, jnp.float32)
    for theta in (-7.3, -2.5001, 0.2, 3.49):
        s = lsq.pow2_step(jnp.asarray(theta, jnp.float32))
        k = int(np.floor(theta + 0.5))
        assert float(s) == 2.0**k
        out = lsq.quantize(v, s, bits=3, signed=True, num_elements=7)
        codes = np.clip(np.floor(np.asarray(v, np.float64) * 2.0**-k + 0.5), -4, 3)
        np.testing.assert_array_equal(np.asarray(out, np.float64), np.ldexp(codes, k))
        np.testing.assert_array_equal(lsq.codes(v, s, bits=3, signed=True), codes)
    assert float(lsq.scale_grad(jnp.float32(0.1), 1 / 3.0)) == np.float32(0.1)


def test_step_parameter_names_and_encoding():
    assert lsq.param_name(weight=True, pow2=True) == "weight_log2_step"
    assert lsq.param_name(weight=False, pow2=False) == "step"
    assert all(lsq.is_step_param(n) for n in ("step", "log2_step", "weight_step",
                                             "weight_log2_step"))
    assert not lsq.is_step_param("kernel") and not lsq.is_step_param("scale")
    assert float(lsq.step_of(lsq.to_param(0.25, True), True)) == 0.25
    assert lsq.pow2_exponent(0.125) == -3 and lsq.pow2_exponent(0.3) is None
    assert float(lsq.init_step(jnp.zeros(5), 4, False)) > 0  # never a zero step

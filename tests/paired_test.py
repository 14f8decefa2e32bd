"""Paired comparison: the interval and McNemar's exact test on known answers."""

import numpy as np
import pytest
from scipy import stats

from faq_jax import paired


def test_mcnemar_matches_the_exact_binomial_test():
    for b, c in ((10, 2), (0, 5), (7, 7), (30, 12), (0, 0), (700, 640), (2000, 1900)):
        want = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
        assert paired.mcnemar_p(b, c) == pytest.approx(want, rel=1e-12)


def test_compare_counts_discordant_pairs_and_the_paired_interval():
    rng = np.random.default_rng(0)
    base = rng.random(10_000) < 0.9
    run = base.copy()
    flip = rng.choice(10_000, 60, replace=False)
    run[flip] = ~run[flip]
    r = paired.compare(base, run)
    d = run.astype(float) - base.astype(float)
    assert (r["b"], r["c"]) == (int(np.sum(base & ~run)), int(np.sum(~base & run)))
    assert r["diff"] == pytest.approx(100 * d.mean())
    half = 1.959964 * d.std(ddof=1) / np.sqrt(d.size) * 100
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((r["diff"] - half, r["diff"] + half))
    # The paired interval is far narrower than that of two independent accuracies.
    indep = 1.96 * np.sqrt(2 * 0.9 * 0.1 / 10_000) * 100
    assert r["ci_high"] - r["ci_low"] < indep
    same = paired.compare(base, base)
    assert same["diff"] == 0 and same["mcnemar_p"] == 1.0


def test_compare_refuses_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        paired.compare(np.ones(3, bool), np.ones(4, bool))


def test_pack_round_trips_and_describe_says_the_interval():
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 300, 10_001):
        hits = rng.random(n) < 0.7
        np.testing.assert_array_equal(paired.unpack(paired.pack(hits), n), hits)
    with pytest.raises(ValueError, match="not the bits of 20 images"):
        paired.unpack(paired.pack(np.ones(300, bool)), 20)
    cmp = paired.compare([True, False, False, True], [True, True, True, False])
    assert paired.describe(cmp) == ("after - before: +25.00 points, paired 95% interval "
                                    f"[{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}] on 4 "
                                    "images (2 fixed, 1 broken; McNemar p = 1)")


def test_a_p_below_what_a_float_holds_is_printed_as_a_bound_not_as_zero():
    p = paired.mcnemar_p(4404, 261)  # the ResNet-20 FAQ W2A2 study row: the tail underflows
    assert p == 0.0 and paired.format_p(p) == "<1e-300"
    assert paired.format_p(paired.mcnemar_p(129, 126)) == "0.9"
    assert paired.format_p(1.25e-7, 2) == "1.2e-07"
    row = paired.format_row("w2a2", paired.compare(np.r_[np.ones(4404, bool), np.zeros(261, bool)],
                                                   np.r_[np.zeros(4404, bool), np.ones(261, bool)]))
    assert row.endswith("| <1e-300 |")

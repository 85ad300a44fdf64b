"""gate.stats.mann_whitney_p is scipy.stats.mannwhitneyu's default test, computed without scipy.

scipy is the reference here (it is installed with the test extra): on random samples, with and
without ties, small and large, both one-sided alternatives agree to rounding.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from attnprof.gate.stats import mann_whitney_p

# Whole numbers from a small range make ties common; floats from a wide one make them rare.
values = st.one_of(
    st.lists(st.integers(0, 6).map(float), min_size=1, max_size=25),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=25),
)


@settings(max_examples=400, deadline=None)
@given(x=values, y=values, alternative=st.sampled_from(["greater", "less"]))
def test_agrees_with_scipy(x, y, alternative):
    expected = float(mannwhitneyu(x, y, alternative=alternative).pvalue)
    assert math.isclose(mann_whitney_p(x, y, alternative), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_exact_distribution_of_a_small_case():
    # x above all of y: U = n1·n2 = 6, reached by 1 of the C(5, 2) = 10 orderings.
    assert math.isclose(mann_whitney_p([10.0, 11.0], [1.0, 2.0, 3.0], "greater"), 1 / 10)
    assert math.isclose(mann_whitney_p([10.0, 11.0], [1.0, 2.0, 3.0], "less"), 1.0)


def test_a_large_one_sided_sample_uses_the_exact_distribution_quickly():
    x = [float(i) + 0.5 for i in range(8)]
    y = [float(i) for i in range(2000)]
    expected = float(mannwhitneyu(x, y, alternative="less").pvalue)
    assert math.isclose(mann_whitney_p(x, y, "less"), expected, rel_tol=1e-9)


def test_all_values_equal_is_no_evidence():
    assert mann_whitney_p([1.0] * 10, [1.0] * 12, "greater") == 1.0

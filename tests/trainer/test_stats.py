"""trainer/stats.py against independent computations: the published t table, a Simpson integration
of the t density written here, and scipy when it is installed."""
from __future__ import annotations

import math
import statistics

import pytest

from trainer import stats

# two-sided 95 % critical values t_{0.975, df}, from the standard printed tables (3 decimals)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 30: 2.042}


def _t_quantile_by_integration(p: float, df: int) -> float:
    """The t with CDF p: Simpson's rule on the t density from 0, bisection on the upper limit."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def density(x):
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    def cdf(t, n=4000):
        h = t / n
        s = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 64.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_table_and_an_integration(df):
    q = stats.t_quantile(0.975, df)
    assert q == pytest.approx(T_TABLE[df], abs=6e-4)
    assert q == pytest.approx(_t_quantile_by_integration(0.975, df), rel=1e-6)
    assert stats.t_quantile(0.025, df) == -q


def test_t_quantile_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 29, 200):
        for p in (0.9, 0.95, 0.975, 0.995):
            assert stats.t_quantile(p, df) == pytest.approx(float(scipy_stats.t.ppf(p, df)), rel=1e-9)


def test_paired_interval_against_an_independent_computation():
    # three seeds of two rows (val top-1): the second row is better by 2.1, 0.9 and 1.6 points
    kd = [0.612, 0.598, 0.605]
    mix = [0.633, 0.607, 0.621]
    d = stats.paired(mix, kd)
    diffs = [0.021, 0.009, 0.016]
    assert d["differences"] == pytest.approx(diffs)
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    half = T_TABLE[2] * sd / math.sqrt(3)
    assert d["mean"] == pytest.approx(mean) and d["std"] == pytest.approx(sd)
    assert d["interval"] == pytest.approx([mean - half, mean + half], abs=1e-5)  # the table has 3 decimals
    assert d["excludes_zero"] is True   # 0.0153 ± 0.0149
    try:
        from scipy import stats as scipy_stats
    except ImportError:
        return
    low, high = scipy_stats.t.interval(0.95, 2, loc=mean, scale=scipy_stats.sem(diffs))
    assert d["interval"] == pytest.approx([low, high], rel=1e-9)


def test_an_interval_straddling_zero_is_not_marked():
    d = stats.paired([0.60, 0.62, 0.61], [0.61, 0.60, 0.60])
    assert d["interval"][0] < 0 < d["interval"][1] and d["excludes_zero"] is False
    # a pairing is needed: the unpaired summaries overlap, the same numbers paired do not
    a, b = [0.70, 0.60, 0.65], [0.69, 0.59, 0.64]
    assert stats.paired(a, b)["excludes_zero"] is True
    assert stats.summary(a)["interval"][0] < stats.summary(b)["interval"][1]


def test_summary_edge_cases():
    one = stats.summary([0.5])
    assert one == {"n": 1, "mean": 0.5, "std": 0.0, "interval": None}
    assert stats.paired([0.5], [0.4])["excludes_zero"] is False
    s = stats.summary([0.1, 0.3, 0.2, 0.4])
    assert s["std"] == pytest.approx(statistics.stdev([0.1, 0.3, 0.2, 0.4]))
    with pytest.raises(ValueError, match="3 values against 2"):
        stats.paired([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        stats.summary([])

"""Statistics over seeds for `tsd compare`: mean, std and a Student-t interval per row, and paired
differences between rows (the same seed shares the data order, so a row's seed s is compared with
another row's seed s).

Standard library only (the trainer does not need scipy): the t quantile comes from the regularised
incomplete beta function (a continued fraction, Numerical Recipes §6.4) inverted by bisection.
"""
from __future__ import annotations

import math
import statistics

CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on the monotone CDF."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: p must be in (0, 1) and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def summary(values: list[float], confidence: float = CONFIDENCE) -> dict:
    """n, mean, sample std (n - 1) and the two-sided t interval of the mean; the interval is None
    with a single value (no spread to estimate)."""
    n = len(values)
    if n == 0:
        raise ValueError("summary: no values")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    interval = None
    if n > 1:
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
        interval = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "interval": interval}


def paired(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> dict:
    """a - b seed by seed: the differences, their summary, and whether the interval excludes zero."""
    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} values against {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    s = summary(diffs, confidence)
    interval = s["interval"]
    return {"differences": diffs, **s,
            "excludes_zero": bool(interval) and (interval[0] > 0.0 or interval[1] < 0.0)}

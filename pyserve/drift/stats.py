"""The drift tests: one window of live values of a feature against its reference (docs/drift.md).

The reference is the profile's sketch, not the training rows: a numerical feature's CDF and quantile
function are read off its quantiles (linear between them; a value repeated over several quantiles is
an atom, a jump of the CDF), a categorical feature's distribution off its value counts. The methods,
their defaults and which one is chosen follow Evidently's default data drift algorithm
(https://docs.evidentlyai.com/reference/data-drift-algorithm; evidentlyai/evidently
``src/evidently/legacy/calculations/stattests/``):

===============  ===========  ==============================================  ==================
method           kind         score                                           drift when
===============  ===========  ==============================================  ==================
ks               numerical    p-value of the Kolmogorov-Smirnov test          p < threshold
wasserstein      numerical    Wasserstein-1 distance / reference std          score >= threshold
chisquare        categorical  p-value of Pearson's chi-square test            p < threshold
jensenshannon    categorical  Jensen-Shannon distance of the proportions      score >= threshold
psi              both         population stability index                      score >= threshold
===============  ===========  ==============================================  ==================

``auto`` takes ks / chisquare for windows under :data:`LARGE_WINDOW_ROWS` rows and wasserstein /
jensenshannon from there on. Evidently switches on the *reference's* size because its tests compare
two samples; here the reference is a fixed distribution and the window's size is what makes a p-value
test over-sensitive (a 1,000-row window detects shifts of a few hundredths of a standard deviation),
so the window's size decides.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats
from scipy.spatial import distance

from pyserve.drift.profile import QUANTILE_PROBS, CategoricalFeature, NumericalFeature

LARGE_WINDOW_ROWS = 1000
KS_EXACT_BELOW = 50  # effective sizes below which the KS p-value is exact (above: Stephens' approximation)
P_VALUE_METHODS = frozenset({"ks", "chisquare"})
PSI_BINS = 10  # equal-mass bins of the reference (deciles), the usual choice for PSI
PSI_FLOOR = 1e-4  # Evidently's stand-in for an empty bin's share (get_binned_data's feel_zeroes)
WASSERSTEIN_POINTS = 2000  # points of the reference quantile function scipy integrates against


def choose(kind: str, rows: int, numerical_method: str = "auto", categorical_method: str = "auto") -> str:
    """The method of a feature of ``kind`` for a window of ``rows`` rows (``auto`` as the module says)."""
    method = numerical_method if kind == "numerical" else categorical_method
    if method != "auto":
        return method
    small = rows < LARGE_WINDOW_ROWS
    if kind == "numerical":
        return "ks" if small else "wasserstein"
    return "chisquare" if small else "jensenshannon"


# -- numerical ------------------------------------------------------------------------------------

def _cdf(quantiles: np.ndarray, x: np.ndarray, left: bool) -> np.ndarray:
    """Reference CDFs at ``x`` [n, k]: column j's through ``quantiles[:, j]`` ([len(QUANTILE_PROBS), k]),
    linear between quantiles, right-continuous (``left``: left limits)."""
    m = quantiles.shape[0]
    side = "left" if left else "right"
    idx = np.empty(x.shape, dtype=np.intp)
    for j in range(x.shape[1]):  # one search per feature; the elements are vectorized
        idx[:, j] = np.searchsorted(quantiles[:, j], x[:, j], side=side)
    i = np.clip(idx, 1, m - 1)
    lo_q = np.take_along_axis(quantiles, i - 1, axis=0)
    hi_q = np.take_along_axis(quantiles, i, axis=0)
    span = np.where(hi_q > lo_q, hi_q - lo_q, 1.0)
    frac = np.clip((x - lo_q) / span, 0.0, 1.0)
    inside = QUANTILE_PROBS[i - 1] + frac * (QUANTILE_PROBS[i] - QUANTILE_PROBS[i - 1])
    return np.where((idx > 0) & (idx < m), inside, np.where(idx == 0, 0.0, 1.0))


def reference_cdf(feature: NumericalFeature, x: np.ndarray, left: bool = False) -> np.ndarray:
    """The reference CDF at ``x`` (float64, 1-D): linear between the quantiles, right-continuous;
    ``left``: its left limits (they differ at atoms, values several quantiles share)."""
    return _cdf(feature.quantiles[:, None], np.asarray(x, dtype=np.float64).reshape(-1, 1), left)[:, 0]


def ks_statistics(features: list[NumericalFeature], window: np.ndarray) -> np.ndarray:
    """sup |F_window - F_reference| (Kolmogorov-Smirnov's D) of each column of ``window`` [n, k] (float64,
    no NaN) against ``features[j]``, taken at both sides of every window value so that atoms of either
    distribution count as the jumps they are. Vectorized over the columns."""
    n = window.shape[0]
    s = np.sort(window, axis=0)
    index = np.arange(n)[:, None]
    new = np.ones(s.shape, dtype=bool)
    new[1:] = s[1:] != s[:-1]  # the first of a run of equal values
    last = np.ones(s.shape, dtype=bool)
    last[:-1] = new[1:]
    below = np.maximum.accumulate(np.where(new, index, 0), axis=0)  # values < s[i]
    upto = np.minimum.accumulate(np.where(last, index, n)[::-1], axis=0)[::-1] + 1  # values <= s[i]
    quantiles = np.stack([f.quantiles for f in features], axis=1)
    gaps = np.maximum(np.abs(upto / n - _cdf(quantiles, s, left=False)),
                      np.abs(below / n - _cdf(quantiles, s, left=True)))
    return gaps.max(axis=0)


def ks_statistic(feature: NumericalFeature, values: np.ndarray) -> float:
    """D of one feature's window ``values`` (:func:`ks_statistics`)."""
    return float(ks_statistics([feature], np.asarray(values, dtype=np.float64).reshape(-1, 1))[0])


def ks_tests(features: list[NumericalFeature], window: np.ndarray) -> np.ndarray:
    """The p-values of the Kolmogorov-Smirnov test of each column of ``window`` [n, k] against
    ``features[j]``.

    The reference is a sample of ``feature.count`` rows, so the p-value is the two-sample test's
    (Evidently's ``ks``: scipy.stats.ks_2samp): D's distribution at the effective size
    n_e = n·N/(n+N), as scipy's ``ks_2samp(method="asymp")`` takes it. For a large reference it is the
    one-sample test against the reference CDF. Below :data:`KS_EXACT_BELOW` the exact distribution
    (``scipy.stats.kstwo``, a Python loop per value: ~0.5 ms a feature); from there Stephens'
    approximation P(D > d) = Q_KS((sqrt(n_e) + 0.12 + 0.11/sqrt(n_e))·d), Q_KS the Kolmogorov
    distribution (``scipy.special.kolmogorov``, vectorized; M. A. Stephens, JRSS B 32, 1970; Numerical
    Recipes 14.3), within 4% of the exact p-value between 1e-5 and 1e-2 for n_e >= 50."""
    n = window.shape[0]
    counts = np.array([f.count for f in features], dtype=np.float64)
    effective = np.maximum(1, np.round(n * counts / (n + counts)))
    d = ks_statistics(features, window)
    if effective.min() < KS_EXACT_BELOW:
        return np.asarray(stats.kstwo.sf(d, effective), dtype=np.float64)
    root = np.sqrt(effective)
    return np.asarray(special.kolmogorov((root + 0.12 + 0.11 / root) * d), dtype=np.float64)


def ks_test(feature: NumericalFeature, values: np.ndarray) -> float:
    """The p-value of one feature's window ``values`` (:func:`ks_tests`)."""
    return float(ks_tests([feature], np.asarray(values, dtype=np.float64).reshape(-1, 1))[0])


def reference_points(feature: NumericalFeature, points: int = WASSERSTEIN_POINTS) -> np.ndarray:
    """The reference quantile function at the midpoints of ``points`` equal steps of probability:
    ``points`` equally weighted values distributed as the reference."""
    u = (np.arange(points) + 0.5) / points
    return np.interp(u, QUANTILE_PROBS, feature.quantiles)


def wasserstein(feature: NumericalFeature, values: np.ndarray) -> float:
    """The Wasserstein-1 distance of the window from the reference, divided by the reference's standard
    deviation (at least 0.001): Evidently's ``wasserstein`` (``wasserstein_distance_norm.py``). The
    distance is the integral of |Q_ref(u) - Q_window(u)| over u in [0, 1], computed by
    ``scipy.stats.wasserstein_distance`` between the window and :func:`reference_points`."""
    norm = max(feature.std, 0.001)
    return float(stats.wasserstein_distance(reference_points(feature), values) / norm)


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI = sum((cur - ref) * ln(cur / ref)) over bins of shares, empty bins at :data:`PSI_FLOOR`
    (Evidently's ``psi``; Siddiqi, *Credit Risk Scorecards*, 2006)."""
    ref = np.where(ref > 0, ref, PSI_FLOOR)
    cur = np.where(cur > 0, cur, PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_numerical(feature: NumericalFeature, values: np.ndarray) -> float:
    """PSI over :data:`PSI_BINS` bins of equal reference mass (the reference's deciles)."""
    edges = np.unique(np.interp(np.linspace(0, 1, PSI_BINS + 1)[1:-1], QUANTILE_PROBS, feature.quantiles))
    ref = np.diff(np.concatenate([[0.0], reference_cdf(feature, edges, left=True), [1.0]]))
    cur = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1) / values.size
    return _psi(ref, cur)


# -- categorical ----------------------------------------------------------------------------------

def category_counts(feature: CategoricalFeature, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference counts, window counts) over the reference's values plus one bucket for every other
    value (values the reference saw beyond its top ones, and new values)."""
    index = {k: i for i, k in enumerate(feature.values)}
    ref = np.array([*feature.values.values(), feature.other], dtype=np.float64)
    keys, counts = np.unique(values, return_counts=True)
    cur = np.zeros(ref.size)
    for key, count in zip(keys.tolist(), counts.tolist()):  # distinct values only: few
        cur[index.get(key, ref.size - 1)] += count
    return ref, cur


def chisquare_test(feature: CategoricalFeature, values: np.ndarray) -> float:
    """The p-value of Pearson's chi-square test that the window and the reference sample come from one
    categorical distribution (``scipy.stats.chi2_contingency`` on their 2 x k counts, no continuity
    correction). Evidently's ``chisquare`` takes the reference's shares as exact; the contingency test
    also counts the reference's own sampling. With two categories it is Evidently's ``z`` test of two
    proportions (the chi-square statistic is z squared)."""
    ref, cur = category_counts(feature, values)
    keep = (ref + cur) > 0
    if keep.sum() < 2:
        return 1.0  # one category on both sides: nothing can differ
    return float(stats.chi2_contingency(np.stack([ref[keep], cur[keep]]), correction=False).pvalue)


def jensenshannon(feature: CategoricalFeature, values: np.ndarray) -> float:
    """The Jensen-Shannon distance (natural logarithm, so at most sqrt(ln 2)) between the reference's
    and the window's shares of each category (Evidently's ``jensenshannon``;
    ``scipy.spatial.distance.jensenshannon``)."""
    ref, cur = category_counts(feature, values)
    return float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum()))


def psi_categorical(feature: CategoricalFeature, values: np.ndarray) -> float:
    """PSI over the categories (:func:`category_counts`)."""
    ref, cur = category_counts(feature, values)
    return _psi(ref / ref.sum(), cur / cur.sum())


def numerical_scores(features: list[NumericalFeature], window: np.ndarray, method: str) -> np.ndarray:
    """The scores of ``method`` for each column of ``window`` [n, k] (float64, no NaN) against
    ``features[j]``; ks vectorized over the columns."""
    if method == "ks":
        return ks_tests(features, window)
    return np.array([score(f, window[:, j], method) for j, f in enumerate(features)])


def score(feature: NumericalFeature | CategoricalFeature, values: np.ndarray, method: str) -> float:
    """The score of ``method`` for a window of ``values`` of ``feature`` (a p-value for ks and chisquare,
    a distance otherwise). ``values``: float64 for numerical features, category keys
    (:func:`pyserve.drift.profile.categorical_values`) for categorical ones; at least one value."""
    if isinstance(feature, NumericalFeature):
        if method == "ks":
            return ks_test(feature, values)
        if method == "wasserstein":
            return wasserstein(feature, values)
        if method == "psi":
            return psi_numerical(feature, values)
    else:
        if method == "chisquare":
            return chisquare_test(feature, values)
        if method == "jensenshannon":
            return jensenshannon(feature, values)
        if method == "psi":
            return psi_categorical(feature, values)
    raise ValueError(f"method {method!r} does not apply to a {feature.kind} feature")


def p_value_cutoffs(p_values: np.ndarray, alpha: float, correction: str) -> float:
    """The cutoff under which a p-value means drift, for ``p_values`` of the m features tested together
    at family-wise level ``alpha``: ``bonferroni`` alpha/m (Bonferroni: P(any false alarm) <= alpha);
    ``benjamini-hochberg`` the largest k·alpha/m with p_(k) <= k·alpha/m, or alpha/m when there is none
    (Benjamini & Hochberg 1995: false discovery rate <= alpha; P(any false alarm) = alpha when nothing
    drifts); ``none`` alpha (each feature alone, Evidently's per-column rule)."""
    m = p_values.size
    if m == 0 or correction == "none":
        return alpha
    if correction == "bonferroni":
        return alpha / m
    ranked = np.sort(p_values)
    bounds = alpha * np.arange(1, m + 1) / m
    passing = np.nonzero(ranked <= bounds)[0]
    return float(bounds[passing[-1]]) if passing.size else alpha / m

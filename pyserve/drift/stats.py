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
from scipy import stats
from scipy.spatial import distance

from pyserve.drift.profile import QUANTILE_PROBS, CategoricalFeature, NumericalFeature

LARGE_WINDOW_ROWS = 1000
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

def reference_cdf(feature: NumericalFeature, x: np.ndarray, left: bool = False) -> np.ndarray:
    """The reference CDF at ``x`` (float64, any shape): linear between the quantiles, right-continuous;
    ``left``: its left limits (they differ at atoms, values several quantiles share)."""
    q = feature.quantiles
    p = QUANTILE_PROBS
    idx = np.searchsorted(q, x, side="left" if left else "right")
    inner = (idx > 0) & (idx < q.size)
    i = np.clip(idx, 1, q.size - 1)
    lo_q, hi_q = q[i - 1], q[i]
    span = np.where(hi_q > lo_q, hi_q - lo_q, 1.0)
    frac = np.clip((x - lo_q) / span, 0.0, 1.0)
    inside = p[i - 1] + frac * (p[i] - p[i - 1])
    return np.where(inner, inside, np.where(idx == 0, 0.0, 1.0))


def ks_statistic(feature: NumericalFeature, values: np.ndarray) -> float:
    """sup |F_window - F_reference| (Kolmogorov-Smirnov's D), taken at both sides of every window value
    so that atoms of either distribution count as the jumps they are."""
    xs, counts = np.unique(values, return_counts=True)
    n = values.size
    right = np.cumsum(counts) / n
    left = right - counts / n
    return float(max(np.max(np.abs(right - reference_cdf(feature, xs))),
                     np.max(np.abs(left - reference_cdf(feature, xs, left=True)))))


def ks_test(feature: NumericalFeature, values: np.ndarray) -> float:
    """The p-value of the Kolmogorov-Smirnov test of the window ``values`` against the reference.

    The reference is a sample of ``feature.count`` rows, so the p-value is the two-sample test's
    (Evidently's ``ks``: scipy.stats.ks_2samp): D's asymptotic distribution with the effective size
    n·N/(n+N), as scipy's ``ks_2samp(method="asymp")`` takes it (``scipy.stats.kstwo``). For a large
    reference it is the one-sample test against the reference CDF."""
    n, m = values.size, feature.count
    effective = max(1, round(n * m / (n + m)))
    return float(stats.kstwo.sf(ks_statistic(feature, values), effective))


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

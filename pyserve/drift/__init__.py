"""Drift detection: each model version's logged traffic compared with its reference profile
(docs/drift.md).

- :mod:`pyserve.drift.profile`: the reference profile (``drift_profile.json`` beside the model file);
- :mod:`pyserve.drift.build`: building a profile from training data or golden samples (``pyserve profile``);
- :mod:`pyserve.drift.stats`: the tests (Kolmogorov-Smirnov, Wasserstein, chi-square, Jensen-Shannon, PSI);
- :mod:`pyserve.drift.monitor`: the windows, fed by the payload log's writer thread, and the gauges.

scipy is needed (``pip install 'pyserve[drift]'``); :func:`require_scipy` says so.
"""

from __future__ import annotations

__all__ = ["require_scipy"]


def require_scipy() -> None:
    """Raises ImportError, saying what to install, when scipy (the drift tests) is missing."""
    try:
        import scipy.spatial  # noqa: F401
        import scipy.stats  # noqa: F401
    except ImportError as e:
        raise ImportError("drift detection tests windows with scipy, which is not installed: "
                          "pip install 'pyserve[drift]'") from e

"""One ``/metrics`` for the whole server: every worker's text exposition merged into one.

prometheus-client's multiprocess mode does not fit: pyserve's metrics are custom collectors that
read the core's statistics at scrape time, not values written to shared files. So the worker that
is scraped gathers the others' expositions over the private channel and merges them here, keeping
series names and labels exactly those of one process (no ``worker`` label), so that dashboards and
alerts work unchanged:

- counters, histograms and summaries: summed per label set (``_created``: the earliest);
- gauges that count something now (:data:`SUMMED_GAUGES`: connections, queued and in-flight
  requests): summed;
- other gauges (rollout step and weight, gate values, drift scores, timestamps): the largest value
  of any worker (each worker holds the same state, or a pessimistic one is shown).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

# Gauges that count things of each process now: the server's count is the sum.
SUMMED_GAUGES = frozenset({
    "pyserve_queue_depth",
    "pyserve_inflight_requests",
    "pyserve_http_connections",
    "pyserve_http_max_connections",
    "pyserve_payload_log_queue_depth",
})
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram", "untyped", "unknown"})


def _combine(family_type: str, family: str, sample: str) -> str:
    """How the values of ``sample`` from several workers merge: "sum", "min" or "max"."""
    if sample.endswith("_created"):
        return "min"
    if family_type in _SUMMED_TYPES or family in SUMMED_GAUGES:
        return "sum"
    return "max"


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def merge_families(expositions: Iterable[str]) -> list[Metric]:
    """The metric families of several processes' expositions (Prometheus text format 0.0.4) merged
    as the module says. Series keep their first worker's order; a series only some workers have is
    kept. Raises ValueError for a text that is not the exposition format."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                values[fam.name] = {}
            series = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(s.labels.items()))
                old = series.get(key)
                if old is None:
                    series[key] = s.value
                    continue
                how = _combine(fam.type, fam.name, s.name)
                series[key] = (old + s.value if how == "sum" else min(old, s.value) if how == "min"
                               else max(old, s.value))
    for name, merged in families.items():
        merged.samples = [Sample(sample, dict(labels), value)
                          for (sample, labels), value in values[name].items()]
    return list(families.values())


def exposition(families: list[Metric]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families))
    return generate_latest(registry)


def merge(expositions: Iterable[str]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of several processes' expositions merged as the
    module says (:func:`merge_families`). Raises ValueError for a text that is not the exposition
    format."""
    return exposition(merge_families(expositions))

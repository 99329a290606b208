"""Prometheus metrics (served by ``GET /metrics``), read from the core's statistics at scrape time.

Every metric carries the labels ``model`` and ``version``, as Triton's do. The core counts in
microseconds; Prometheus convention is seconds, so durations are exported in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pyserve.runtime import ModelRunner

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (core stats key, outcome label): every request ends in exactly one of these.
OUTCOMES = (
    ("requests_succeeded", "success"),
    ("requests_failed", "failure"),
    ("requests_timed_out", "timeout"),
    ("requests_rejected", "rejected"),
    ("requests_cancelled", "cancelled"),
)
# (metric name, core stats key, help, scale to the exported unit)
HISTOGRAMS = (
    ("pyserve_request_duration_seconds", "request_us", "Time from queueing to answer, per request.", 1e-6),
    ("pyserve_queue_duration_seconds", "queue_us", "Time spent queued before the batch ran, per request.", 1e-6),
    ("pyserve_compute_duration_seconds", "compute_us", "Time of one backend call, per batch.", 1e-6),
    ("pyserve_batch_size", "batch_size", "Samples per executed batch.", 1.0),
)


def _histogram(name: str, doc: str, labels: list[str], snap: dict, scale: float) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model", "version"])
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(snap["upper_bounds"], snap["counts"]):
        running += count
        # 12 significant digits: 10 us * 1e-6 is 9.999999999999999e-06 in binary floating point, and
        # dashboards match le labels as text (le="1e-05").
        buckets.append((repr(float(f"{bound * scale:.12g}")), running))
    buckets.append(("+Inf", snap["count"]))
    family.add_metric(labels, buckets, snap["sum"] * scale)
    return family


class CoreCollector(Collector):
    """Collects the statistics of every loaded model version."""

    def __init__(self, runners: Callable[[], Iterable[ModelRunner]]) -> None:
        self._runners = runners

    def collect(self):  # type: ignore[override]
        requests = CounterMetricFamily(
            "pyserve_requests", "Requests by outcome.", labels=["model", "version", "outcome"]
        )
        samples = CounterMetricFamily("pyserve_samples", "Samples inferred.", labels=["model", "version"])
        batches = CounterMetricFamily("pyserve_batches", "Batches executed.", labels=["model", "version"])
        depth = GaugeMetricFamily("pyserve_queue_depth", "Requests queued now.", labels=["model", "version"])
        in_flight = GaugeMetricFamily(
            "pyserve_inflight_requests", "Requests accepted and not yet answered.", labels=["model", "version"]
        )
        histograms = {name: [] for name, *_ in HISTOGRAMS}
        for runner in self._runners():
            labels = [runner.config.name, runner.version]
            s = runner.stats()
            for key, outcome in OUTCOMES:
                requests.add_metric([*labels, outcome], s[key])
            samples.add_metric(labels, s["samples_inferred"])
            batches.add_metric(labels, s["batches_executed"])
            depth.add_metric(labels, s["queue_depth"])
            in_flight.add_metric(labels, s["in_flight"])
            for name, key, doc, scale in HISTOGRAMS:
                histograms[name].append(_histogram(name, doc, labels, s[key], scale))
        yield from (requests, samples, batches, depth, in_flight)
        for name, _key, doc, _scale in HISTOGRAMS:
            merged = HistogramMetricFamily(name, doc, labels=["model", "version"])
            for family in histograms[name]:
                merged.samples.extend(family.samples)
            yield merged


class TransportCollector(Collector):
    """The HTTP transport's connections and the requests it answered 408, read from ``server`` (a
    :class:`pyserve.server.http.HttpServer`) at scrape time."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def collect(self):  # type: ignore[override]
        server = self._server
        yield GaugeMetricFamily("pyserve_http_connections", "HTTP connections open now.",
                                value=len(server.connections))
        yield GaugeMetricFamily("pyserve_http_max_connections", "The cap on open HTTP connections "
                                "(--max-connections).", value=server.limits.max_connections)
        yield CounterMetricFamily("pyserve_http_connections_refused", "HTTP connections closed as soon as they "
                                  "were accepted, for being over --max-connections.",
                                  value=server.connections_refused)
        timeouts = CounterMetricFamily("pyserve_http_request_timeouts", "Requests answered 408 because their "
                                       "headers (phase header) or body (phase body) did not arrive in time.",
                                       labels=["phase"])
        timeouts.add_metric(["header"], server.header_timeouts)
        timeouts.add_metric(["body"], server.body_timeouts)
        yield timeouts


def make_registry(runners: Callable[[], Iterable[ModelRunner]]) -> tuple[CollectorRegistry, Counter]:
    """A registry holding pyserve's collector (no process metrics of the test runner), and the
    counter of infer calls answered with an error (labels ``model`` and ``kind``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(runners))
    errors = Counter(
        "pyserve_infer_errors",
        "Infer requests answered with an error, by error kind, including those refused before the model's "
        "queue (bad input, unknown model or version, body too large).",
        ["model", "kind"],
        registry=registry,
    )
    return registry, errors


def policy_changes_counter(registry: CollectorRegistry) -> Counter:
    """The counter of traffic-policy changes (aliases set, moved, removed; policies replaced), label
    ``model``, registered in ``registry``."""
    return Counter("pyserve_traffic_policy_changes", "Traffic policy changes made (alias set, moved or removed; "
                   "policy replaced), each one written to the audit log.", ["model"], registry=registry)


def golden_checks_counter(registry: CollectorRegistry) -> Counter:
    """The counter of golden-sample checks of versions (at load, and before an alias or a weight first
    sends a version traffic), labels ``model``, ``version``, ``result`` (``passed``, ``failed``)."""
    return Counter("pyserve_golden_checks", "Golden-sample checks of model versions before they take traffic, "
                   "by result (passed, failed: the version was refused).", ["model", "version", "result"],
                   registry=registry)


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)

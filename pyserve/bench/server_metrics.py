"""The server's side of the time, from pyserve's Prometheus ``/metrics``, read before and after the
measured windows and diffed.

A target that is not pyserve (no such metrics, or no ``/metrics`` at all) gives ``None``: its columns
stay empty, it is not an error.
"""

from __future__ import annotations

import dataclasses
import math

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# Sample names read, summed over every series of the model (and of the version when one is given).
_SAMPLES = (
    "pyserve_queue_duration_seconds_sum",
    "pyserve_queue_duration_seconds_count",
    "pyserve_compute_duration_seconds_sum",
    "pyserve_compute_duration_seconds_count",
    "pyserve_request_duration_seconds_sum",
    "pyserve_request_duration_seconds_count",
    "pyserve_batch_size_sum",
    "pyserve_batch_size_count",
    "pyserve_samples_total",
    "pyserve_batches_total",
)

Snapshot = dict[str, float]


def parse_snapshot(text: str, model: str, version: str = "") -> Snapshot | None:
    """The summed counters of ``model`` in a Prometheus text page; None when it has none of them."""
    values: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in _SAMPLES or sample.labels.get("model") != model:
                continue
            if version and sample.labels.get("version") != version:
                continue
            values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values or None


async def scrape(session: aiohttp.ClientSession, url: str, model: str, version: str = "") -> Snapshot | None:
    """Read and parse ``url``; None when the target has no usable metrics."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            text = await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    try:
        return parse_snapshot(text, model, version)
    except (ValueError, TypeError):
        return None


@dataclasses.dataclass(frozen=True)
class ServerSplit:
    """Server-side averages over an interval (NaN where the counter did not move)."""

    queue_ms: float
    compute_ms: float
    request_ms: float
    avg_batch_size: float


def _ratio(after: Snapshot, before: Snapshot, num: str, den: str, scale: float = 1.0) -> float:
    if num not in after or den not in after:
        return math.nan
    d_den = after[den] - before.get(den, 0.0)
    if d_den <= 0:
        return math.nan
    return (after[num] - before.get(num, 0.0)) / d_den * scale


def split(before: Snapshot | None, after: Snapshot | None) -> ServerSplit | None:
    """Average queue, compute and request time (ms) and batch size between two snapshots."""
    if before is None or after is None:
        return None
    # The histogram counts every executed batch, failed ones too; samples_total counts only answers.
    batch = _ratio(after, before, "pyserve_batch_size_sum", "pyserve_batch_size_count")
    if math.isnan(batch):
        batch = _ratio(after, before, "pyserve_samples_total", "pyserve_batches_total")
    return ServerSplit(
        queue_ms=_ratio(
            after, before, "pyserve_queue_duration_seconds_sum", "pyserve_queue_duration_seconds_count", 1e3
        ),
        compute_ms=_ratio(
            after, before, "pyserve_compute_duration_seconds_sum", "pyserve_compute_duration_seconds_count", 1e3
        ),
        request_ms=_ratio(
            after, before, "pyserve_request_duration_seconds_sum", "pyserve_request_duration_seconds_count", 1e3
        ),
        avg_batch_size=batch,
    )

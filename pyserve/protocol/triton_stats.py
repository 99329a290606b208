"""Triton's statistics extension: the JSON of ``GET /v2/models[/{name}[/versions/{version}]]/stats``.

tritonclient's ``InferenceServerClient.get_inference_statistics`` fetches it and hands back the
parsed JSON as is; perf_analyzer reads it to split the server side latency into queue and compute.
The schema is Triton server ``docs/protocol/extension_statistics.md`` (HTTP) and the
``ModelStatistics`` message of ``grpc_service.proto``; what Triton puts in each field is core
``src/tritonserver.cc`` ``TRITONSERVER_ServerModelStatistics`` and ``src/infer_stats.cc``.

The numbers come from a snapshot of pyserve's core statistics for one model version
(``ModelRunner.stats()``, ``_core.Scheduler.stats()``): counters, and histograms of microseconds
(``upper_bounds``, per bucket ``counts``, ``sum``, ``count``). The core keeps less than Triton does,
so some fields are exact, some are estimates and some are zero; :func:`model_statistics` says
which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DURATION_KEYS", "model_statistics", "statistics_document"]

# The $duration_stat members of $inference_stats, in the order of the protocol document.
DURATION_KEYS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)

# Counters of a request that did not succeed; every request ends in exactly one outcome.
_FAILURES = ("requests_failed", "requests_timed_out", "requests_rejected", "requests_cancelled")


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _ns(us: float) -> int:
    """Microseconds (a float sum) to whole nanoseconds, never negative."""
    return max(0, round(us * 1000))


def _counter(stats: Mapping[str, Any], key: str) -> int:
    value = stats[key]
    return max(0, int(value))


def model_statistics(name: str, version: str, stats: Mapping[str, Any], last_inference_ms: int = 0) -> dict:
    """One ``$model_stat`` object of Triton's statistics extension, from a core stats snapshot.

    ``name``, ``version``: the model and its version, both strings (Triton reports the version as
    a string). ``stats``: the mapping ``_core.Scheduler.stats()`` returns. ``last_inference_ms``:
    the time of the last inference request in milliseconds since the Unix epoch, 0 for never; the
    core does not track it, so unless the caller does, it is 0, what Triton reports for a version
    that has not run.

    Returns a JSON-ready dict of Python ints and strings::

        {"name", "version", "last_inference", "inference_count", "execution_count",
         "inference_stats": {"success" | "fail" | "queue" | "compute_input" | "compute_infer" |
                             "compute_output" | "cache_hit" | "cache_miss": {"count", "ns"}},
         "response_stats": {}, "batch_stats": [...], "memory_usage": []}

    Field by field (Triton's meaning from core ``src/tritonserver.cc`` and ``src/infer_stats.cc``):

    - ``inference_count`` = ``samples_inferred``: samples of successful requests (exact).
    - ``execution_count`` = ``batches_executed``: backend calls. Triton counts successful
      executions only; the core counts failed ones too.
    - ``success``: count = ``requests_succeeded`` (exact); ns = the sum of ``request_us`` (enqueue
      to answer). The core has one request-time histogram for every outcome, so this also holds
      the time of requests that failed in the backend or timed out in the queue (approximate when
      there were such failures, exact otherwise).
    - ``fail``: count = failed + timed out + rejected + cancelled requests (Triton counts its
      rejected and cancelled requests as failures too); ns = 0: their time is not kept apart (it is
      in ``success``).
    - ``queue``: count = ``requests_succeeded``, as Triton's; ns = the sum of ``queue_us`` (enqueue
      to dispatch), which also holds requests of batches that then failed in the backend.
    - ``compute_infer``: count = ``requests_succeeded``, as Triton's. Triton adds to ns, for every
      successful request, the duration of the execution that request was part of. The core keeps
      the sum of ``compute_us`` per execution, not per request, so ns is estimated as the mean
      execution time times the successful requests: exact when every execution took as long, or
      without dynamic batching and without failed executions; an estimate when batches of
      different sizes took different times. (The bare per-execution sum over a per-request count
      would read as compute per request divided by the mean requests per batch.)
    - ``compute_input``, ``compute_output``: count = ``requests_succeeded`` (perf_analyzer wants
      the three compute counts equal), ns = 0: the backend call is timed as one, in
      ``compute_infer``.
    - ``cache_hit``, ``cache_miss``: 0 and 0, pyserve has no response cache.
    - ``batch_stats``: one entry per batch size, ascending, count = executions of that size
      (failed ones included), when every execution falls in a ``batch_size`` histogram bucket that
      holds a single size. Its buckets are ``<= 1``, ``(1, 2]``, ``(2, 4]``, ``(4, 8]``, ...: only
      sizes 1 and 2 are exact, so as soon as a batch of 3 or more samples ran, which sizes ran is
      unknown and ``batch_stats`` is ``[]`` (listing only the exact buckets would hide
      executions). The durations of an entry are known only when a single size ran: then its
      ``compute_infer`` ns is the sum of ``compute_us``; otherwise 0. ``compute_input`` and
      ``compute_output`` ns are 0.
    - ``response_stats``: ``{}``, as Triton reports for a model that does not report per-response
      statistics (only decoupled models do). ``memory_usage``: ``[]``, not measured.

    Raises ``KeyError`` naming the missing key when ``stats`` lacks a counter or histogram listed
    above, and ``ValueError`` for a negative or non-integer ``last_inference_ms``.

    Source: Triton server ``docs/protocol/extension_statistics.md``.
    """
    if isinstance(last_inference_ms, bool) or not isinstance(last_inference_ms, int) or last_inference_ms < 0:
        raise ValueError(
            f"last_inference_ms must be an integer >= 0 (ms since the epoch), got {last_inference_ms!r}"
        )
    succeeded = _counter(stats, "requests_succeeded")
    failed = sum(_counter(stats, key) for key in _FAILURES)
    request_us = stats["request_us"]
    queue_us = stats["queue_us"]
    compute_us = stats["compute_us"]

    executions = int(compute_us["count"])
    compute_ns = _ns(compute_us["sum"])
    per_request_compute_ns = _ns(compute_us["sum"] * succeeded / executions) if executions else 0

    inference_stats = {
        "success": _duration(succeeded, _ns(request_us["sum"])),
        "fail": _duration(failed, 0),
        "queue": _duration(succeeded, _ns(queue_us["sum"])),
        "compute_input": _duration(succeeded, 0),
        "compute_infer": _duration(succeeded, per_request_compute_ns),
        "compute_output": _duration(succeeded, 0),
        "cache_hit": _duration(0, 0),
        "cache_miss": _duration(0, 0),
    }
    return {
        "name": str(name),
        "version": str(version),
        "last_inference": last_inference_ms,
        "inference_count": _counter(stats, "samples_inferred"),
        "execution_count": _counter(stats, "batches_executed"),
        "inference_stats": inference_stats,
        "response_stats": {},
        "batch_stats": _batch_stats(stats["batch_size"], compute_ns),
        "memory_usage": [],
    }


def _exact_sizes(upper_bounds: list[float]) -> list[int | None]:
    """For each bucket of a batch-size histogram, the one size it can hold, or None.

    Bucket ``i`` holds the values ``v`` with ``upper_bounds[i-1] < v <= upper_bounds[i]`` (the
    core's ``lower_bound``), bucket 0 everything up to the first bound, the last one everything
    above the last bound. Batch sizes are integers >= 1.
    """
    sizes: list[int | None] = []
    low = 0.0  # no batch is smaller than 1
    for bound in list(upper_bounds) + [math.inf]:
        if math.isinf(bound):
            sizes.append(None)
            break
        lo, hi = math.floor(max(low, 0.0)), math.floor(bound)
        sizes.append(hi if hi - lo == 1 and hi >= 1 else None)
        low = bound
    return sizes


def _batch_stats(histogram: Mapping[str, Any], compute_ns: int) -> list[dict]:
    counts = [int(c) for c in histogram["counts"]]
    sizes = _exact_sizes(histogram["upper_bounds"])
    ran = [(size, count) for size, count in zip(sizes, counts) if count > 0]
    if any(size is None for size, _ in ran):
        return []
    single = len(ran) == 1
    return [
        {
            "batch_size": size,
            "compute_input": _duration(count, 0),
            "compute_infer": _duration(count, compute_ns if single else 0),
            "compute_output": _duration(count, 0),
        }
        for size, count in sorted(ran)
    ]


def statistics_document(rows: Iterable[Mapping[str, Any]]) -> dict:
    """The ``$stats_model_response`` body: ``{"model_stats": [row, ...]}``, rows in the given order.

    ``rows``: ``$model_stat`` objects from :func:`model_statistics`, one per model version asked
    for (all versions of all models, all versions of one model, or one version); the caller
    orders them (Triton lists models in name order). An empty iterable gives
    ``{"model_stats": []}``. Raises nothing.

    Source: Triton server ``docs/protocol/extension_statistics.md`` (Statistics Response JSON
    Object).
    """
    return {"model_stats": [dict(row) for row in rows]}

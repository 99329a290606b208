"""Shadow traffic: a share of a model's requests mirrored to a candidate version, outputs compared.

The traffic policy's ``shadow`` (``{"target": "canary", "percent": 10, "max_in_flight": 64}``) names
the candidate. :class:`ShadowMirror` is an :class:`~pyserve.service.hooks.InferHooks`: once the
service has the stable answer (``after_response``), it schedules the mirror with
``loop.call_soon``, so the stable answer is encoded and written first and its latency is not added
to; the client only ever sees the stable answer. The candidate's answer is compared output by
output and the result exported as metrics:

- numbers (FP*, INT*, UINT*): the largest absolute difference (``pyserve_shadow_max_abs_difference``)
  and whether the outputs agree (floats within ``atol`` 1e-5 + ``rtol`` 1e-4 * |stable|, as
  :func:`numpy.isclose`; integers, booleans and strings (labels, classes) exactly);
- every output, element by element: ``pyserve_shadow_elements_total{result="agree"|"disagree"}``, so
  agreement rate = agree / (agree + disagree);
- the candidate's time from submission to answer (``pyserve_shadow_duration_seconds``), to set
  beside the stable version's ``pyserve_request_duration_seconds``.

Shadow load is bounded: at most ``max_in_flight`` mirrored requests per model wait on the candidate;
when it falls behind, further mirrors are dropped and counted (``outcome="dropped"``), never queued.
A candidate that fails is counted (``outcome="error"``) and changes nothing for the client. Outputs
requested with ``classification`` are not compared (the stable answer holds class strings).

When the server has a payload log, each pair that disagrees (some output differs, or the candidate
failed) is handed to it (``disagreements``): the stable answer and the candidate's are logged as two
records with the request's id, the candidate's with protocol ``shadow`` (docs/payload-log.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pyserve.errors import PyserveError, internal
from pyserve.service.context import CallContext
from pyserve.service.hooks import InferHooks

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from pyserve.protocol import InferRequest, InferResponse
    from pyserve.runtime import ModelRunner
    from pyserve.service.host import ModelHost

log = logging.getLogger("pyserve.release")

ATOL = 1e-5
RTOL = 1e-4
# Largest absolute difference between two answers: 0 (identical) up to far apart.
DIFFERENCE_BUCKETS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, float("inf"))
DURATION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


@dataclass
class ShadowMetrics:
    """The shadow metrics (see the module doc); labels ``model`` and ``version`` (the candidate's)."""

    requests: Counter
    comparisons: Counter
    elements: Counter
    difference: Histogram
    duration: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry | None = None) -> ShadowMetrics:
        """The metrics, registered in ``registry`` (a private registry when None: in-process use)."""
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        return cls(
            Counter("pyserve_shadow_requests", "Requests mirrored to a shadow (candidate) version, by outcome: "
                    "compared, error (the candidate failed), dropped (it had max_in_flight waiting).",
                    ["model", "version", "outcome"], registry=registry),
            Counter("pyserve_shadow_output_comparisons", "Outputs of mirrored requests compared with the "
                    "stable answer, by result: agree, disagree.", ["model", "version", "output", "result"],
                    registry=registry),
            Counter("pyserve_shadow_elements", "Elements of compared outputs that agree or disagree with the "
                    "stable answer (agreement rate of labels and classes).",
                    ["model", "version", "output", "result"], registry=registry),
            Histogram("pyserve_shadow_max_abs_difference", "Per mirrored request and numeric output: the largest "
                      "absolute difference from the stable answer.", ["model", "version", "output"],
                      buckets=DIFFERENCE_BUCKETS, registry=registry),
            Histogram("pyserve_shadow_duration_seconds", "Per mirrored request: the candidate's time from "
                      "submission to answer.", ["model", "version"], buckets=DURATION_BUCKETS, registry=registry),
        )


@dataclass(frozen=True, slots=True)
class StableCall:
    """A client's call as the mirror keeps it until the candidate answers: its context, the version
    that answered it, the request, the answer (arrays by output name), the outputs compared (those
    not requested with ``classification``) and its time from arrival to answer (ns)."""

    ctx: CallContext
    runner: ModelRunner
    request: InferRequest
    outputs: dict
    compared: dict
    duration_ns: int


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """A mirrored call whose candidate disagreed with the stable answer or failed: the ``stable`` call,
    and the mirror's context (protocol ``shadow``, the request's id, the candidate's future), the
    candidate, its outputs (None when it failed) and its error."""

    stable: StableCall
    candidate_ctx: CallContext
    candidate: ModelRunner
    candidate_outputs: dict | None
    candidate_error: PyserveError | None


class ShadowMirror(InferHooks):
    """Mirrors requests to the shadow version of each model's traffic policy (attach it with
    ``service.add_hooks``). ``in_flight`` holds the mirrored requests waiting per model.
    ``disagreements``, when given, is called on the event loop's thread with each :class:`ShadowPair`
    (it must only queue it: the payload log's :meth:`~pyserve.payload_log.PayloadLog.shadow_pair`)."""

    def __init__(self, host: ModelHost, metrics: ShadowMetrics | None = None,
                 disagreements: Callable[[ShadowPair], None] | None = None) -> None:
        self.host = host
        self.metrics = metrics or ShadowMetrics.register()
        self.disagreements = disagreements
        self.in_flight: dict[str, int] = {}
        self._pending: set[asyncio.Future] = set()

    def quiet(self, runner: ModelRunner) -> bool:
        """True when ``runner``'s model has no shadow to mirror to (no traffic policy, or one
        without ``shadow``)."""
        policy = self.host.traffic.policy_or_none(runner.config.name)
        return policy is None or policy.shadow is None

    def after_response(self, ctx: CallContext, runner: ModelRunner, request: InferRequest,
                       response: InferResponse) -> None:
        name = runner.config.name
        policy = self.host.traffic.policy_or_none(name)
        if policy is None or policy.shadow is None:
            return
        shadow = policy.shadow
        version = policy.resolve(shadow.target)
        if str(version) == runner.version:
            return  # the candidate served this request itself
        if shadow.percent < 100 and random.random() * 100 >= shadow.percent:
            return
        candidate = self.host.registry.models[name].versions.get(version)
        if candidate is None:
            return  # unloaded meanwhile (a whole-model reload): nothing to mirror to
        if self.in_flight.get(name, 0) >= shadow.max_in_flight:
            self.metrics.requests.labels(name, candidate.version, "dropped").inc()
            return
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        compared = {k: v for k, v in response.outputs.items() if not _classified(request, k)}
        stable = StableCall(ctx, runner, request, dict(response.outputs), compared,
                         time.monotonic_ns() - ctx.started_ns)
        # After this turn of the loop: the stable answer is encoded and written first.
        asyncio.get_running_loop().call_soon(self._mirror, name, candidate, stable)

    def _mirror(self, name: str, candidate: ModelRunner, stable: StableCall) -> None:
        mirror_ctx = CallContext("shadow", stable.ctx.request_id)
        try:
            future = candidate.submit(stable.request.inputs, inline=False)  # never on the loop's thread
        except PyserveError as e:
            self._done(name, candidate, "error", e.message)
            self._disagreed(stable, mirror_ctx, candidate, None, e)
            return
        mirror_ctx.future = future
        self._pending.add(future)
        future.add_done_callback(lambda f: self._answered(name, candidate, stable, mirror_ctx, f))

    def _answered(self, name: str, candidate: ModelRunner, stable: StableCall, mirror_ctx: CallContext,
                  future: asyncio.Future) -> None:
        self._pending.discard(future)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            why = "cancelled" if error is None else str(error)
            self._done(name, candidate, "error", why)
            self._disagreed(stable, mirror_ctx, candidate, None,
                            error if isinstance(error, PyserveError) else internal(why))
            return
        started = mirror_ctx.started_ns
        self.metrics.duration.labels(name, candidate.version).observe((time.monotonic_ns() - started) / 1e9)
        outputs = future.result()
        try:
            agreed = self._compare(name, candidate.version, stable.compared, outputs)
        except Exception:  # a comparison bug must not leak a slot or reach the loop
            log.exception("model %s: comparing the shadow answer of version %s failed", name, candidate.version)
            agreed = True
        self._done(name, candidate, "compared")
        if not agreed:
            self._disagreed(stable, mirror_ctx, candidate, outputs, None)

    def _disagreed(self, stable: StableCall, mirror_ctx: CallContext, candidate: ModelRunner,
                   outputs: dict | None, error: PyserveError | None) -> None:
        if self.disagreements is None:
            return
        pair = ShadowPair(stable, mirror_ctx, candidate, outputs, error)
        try:
            self.disagreements(pair)
        except Exception:  # the log's trouble is not the mirror's
            log.exception("model %s: handing a disagreeing shadow pair to the payload log failed",
                          candidate.config.name)

    def _done(self, name: str, candidate: ModelRunner, outcome: str, why: str = "") -> None:
        self.in_flight[name] -= 1
        self.metrics.requests.labels(name, candidate.version, outcome).inc()
        if why:
            log.debug("model %s: shadow version %s failed: %s", name, candidate.version, why)

    def _compare(self, name: str, version: str, stable: dict, shadow: dict) -> bool:
        """Counts the comparison of each output; True when every output agrees."""
        m = self.metrics
        agreed_all = True
        for output, want in stable.items():
            got = shadow.get(output)
            if got is None or got.shape != want.shape:
                m.comparisons.labels(name, version, output, "disagree").inc()
                m.elements.labels(name, version, output, "disagree").inc(want.size)
                agreed_all = False
                continue
            if want.dtype.kind in "fciub" and got.dtype.kind in "fciub":
                a, b = want.astype(np.float64), got.astype(np.float64)
                diff = np.abs(a - b)
                m.difference.labels(name, version, output).observe(float(np.nanmax(diff)) if diff.size else 0.0)
                if want.dtype.kind in "fc" or got.dtype.kind in "fc":
                    same = np.isclose(b, a, atol=ATOL, rtol=RTOL, equal_nan=True)
                else:
                    same = a == b
            else:
                same = np.asarray(got == want, dtype=bool).reshape(want.shape)
            agree = int(same.sum())
            m.elements.labels(name, version, output, "agree").inc(agree)
            m.elements.labels(name, version, output, "disagree").inc(want.size - agree)
            m.comparisons.labels(name, version, output, "agree" if agree == want.size else "disagree").inc()
            agreed_all = agreed_all and agree == want.size
        return agreed_all


def _classified(request: InferRequest, output: str) -> bool:
    return request.outputs is not None and any(r.name == output and r.classification for r in request.outputs)

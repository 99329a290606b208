"""The context of one inference call, the same whatever protocol carried it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class CallContext:
    """One inference call as the service sees it.

    ``protocol`` names the wire form ("http+json", "http+binary", "http+msgpack", "inprocess", ...):
    it travels to hooks and logs, never to decisions. ``request_id`` is the request's ``id`` (echoed in
    the answer). ``routing_key`` is what traffic policies split on (a header the operator names; the
    request id when None). ``timeout_us`` and ``priority`` come from the request's ``timeout`` and
    ``priority`` parameters (0: the model's defaults), checked by the service. ``started_ns`` is
    ``time.monotonic_ns()`` when the call arrived; the deadline is ``started_ns + timeout_us * 1000``.
    ``future`` is the call's pending answer once submitted: :meth:`cancel` cancels it (a request still
    queued in the core is then dropped, never run)."""

    protocol: str
    request_id: str | None = None
    routing_key: str | None = None
    timeout_us: int = 0
    priority: int = 0
    started_ns: int = field(default_factory=time.monotonic_ns)
    future: asyncio.Future | None = None

    @property
    def deadline_ns(self) -> int:
        """The monotonic time (ns) by which the call must be answered; 0 when it has no timeout."""
        return self.started_ns + self.timeout_us * 1000 if self.timeout_us else 0

    def timings(self) -> tuple[int | None, int | None]:
        """(queue_us, compute_us): how long the call's request waited in the core's queue and how long
        its batch's backend call took, in µs, once answered (-1: it never queued / never ran); None
        when not known (not submitted, or answered without the core)."""
        future = self.future
        return getattr(future, "queue_us", None), getattr(future, "compute_us", None)

    def cancel(self) -> bool:
        """Cancels the call; False when it was not submitted or is already answered."""
        return self.future is not None and self.future.cancel()

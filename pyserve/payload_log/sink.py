"""The CloudEvents sink: each record posted over HTTP in the form KServe's payload logger uses.

KServe's logger (its agent, ``pkg/logger``) posts two CloudEvents per call, in the HTTP binary
content mode (CloudEvents 1.0): the request, ``ce-type: org.kubeflow.serving.inference.request``,
then the response, ``org.kubeflow.serving.inference.response``, both with ``ce-id`` the request's
id, ``ce-source`` the serving URL, and the extension attributes ``ce-inferenceservicename``,
``ce-namespace``, ``ce-component`` and ``ce-endpoint``; the body is the request's or the answer's
JSON. pyserve sends the same: the bodies are KServe v2 JSON (the decoded, redacted tensors; a failed
call's response body is ``{"error": message}``), so a Knative broker or any receiver of KServe's
events takes them as they are.

The sink runs on a thread of its own with its own event loop: a bounded queue (records beyond it are
dropped and counted), at most ``sink_concurrency`` posts at a time, and each failed post (no
connection, a timeout, a 5xx or 429 answer) retried up to ``sink_retries`` times with exponential
backoff; an event that still fails is counted and dropped. Nothing here can block a request.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import random
import threading
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from pyserve.payload_log.record import Capture, Tensor, json_tensor
from pyserve.payload_log.settings import PayloadLogSettings

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("pyserve.payload_log")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
MAX_BACKOFF_S = 10.0
WARN_EVERY_S = 10.0
_POLL_S = 0.05  # how often an idle sink looks at its queue (20 wake-ups a second, no lock on the hot path)


def events(capture: Capture, inputs: dict[str, Tensor], outputs: dict[str, Tensor], settings: PayloadLogSettings
           ) -> list[tuple[dict[str, str], bytes]]:
    """The (headers, body) of the request and response CloudEvents of one record."""
    event_id = capture.request_id or str(uuid.uuid4())
    when = datetime.datetime.fromtimestamp(capture.time_ns / 1e9, datetime.UTC).isoformat().replace("+00:00", "Z")
    common = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": settings.sink_source or "pyserve",
        "ce-time": when,
        "ce-inferenceservicename": capture.model,
        "ce-namespace": settings.sink_namespace,
        "ce-component": settings.sink_component,
        "ce-endpoint": settings.sink_endpoint,
        "content-type": "application/json",
    }
    request: dict[str, Any] = {"inputs": [{"name": n, **json_tensor(t, flat=True)} for n, t in inputs.items()]}
    if capture.request_id is not None:
        request["id"] = capture.request_id
    if capture.error is None:
        response: dict[str, Any] = {"model_name": capture.model, "model_version": capture.version,
                                    "outputs": [{"name": n, **json_tensor(t, flat=True)} for n, t in outputs.items()]}
        if capture.request_id is not None:
            response["id"] = capture.request_id
    else:
        response = {"error": capture.error}
    dumps = orjson.dumps
    return [({**common, "ce-type": REQUEST_TYPE}, dumps(request)),
            ({**common, "ce-type": RESPONSE_TYPE}, dumps(response))]


class CloudEventsSink:
    """Posts records to ``settings.sink_url`` from a thread of its own (see the module's docs).

    ``events_total`` counts events by ``result`` (``delivered``, ``failed``: given up after the
    retries, ``dropped``: the queue was full or the server stopped first); ``retries_total`` counts
    retried posts."""

    def __init__(self, settings: PayloadLogSettings, events_total: Counter, retries_total: Counter) -> None:
        assert settings.sink_url is not None
        self.settings = settings
        self.url = settings.sink_url
        self._queue: collections.deque[tuple[dict[str, str], bytes]] = collections.deque()
        self._max = settings.queue_size
        self._events = events_total
        self._retries = retries_total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyserve-payload-log-sink", daemon=True)
        self._last_warning = float("-inf")
        self._failed_since_warning = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, capture: Capture, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        """Queues the events of one record (called by the writer thread); drops them when full."""
        for event in events(capture, inputs, outputs, self.settings):
            if len(self._queue) >= self._max:
                self._events.labels(capture.model, "dropped").inc()
            else:
                self._queue.append(event)

    def close(self, timeout_s: float) -> None:
        """Delivers what is queued for up to ``timeout_s``, then drops the rest (counted)."""
        self._stop.set()
        self._thread.join(timeout_s + 1.0)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.settings.sink_timeout_s)
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.settings.sink_concurrency)
        tasks: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            stop_at: float | None = None
            while True:
                if self._stop.is_set() and stop_at is None:
                    stop_at = loop.time() + self.settings.sink_timeout_s
                if stop_at is not None and (loop.time() >= stop_at or (not self._queue and not tasks)):
                    break
                if not self._queue:
                    await asyncio.sleep(_POLL_S)
                    continue
                await slots.acquire()
                headers, body = self._queue.popleft()
                task = asyncio.create_task(self._post(session, headers, body, stop_at))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for headers, _ in self._queue:
            self._events.labels(headers["ce-inferenceservicename"], "dropped").inc()
        self._queue.clear()

    async def _post(self, session: Any, headers: dict[str, str], body: bytes, stop_at: float | None) -> None:
        import aiohttp

        model = headers["ce-inferenceservicename"]
        retries = self.settings.sink_retries
        try:
            for attempt in range(retries + 1):
                reason = None
                try:
                    async with session.post(self.url, data=body, headers=headers) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300:
                            self._events.labels(model, "delivered").inc()
                            return
                        if resp.status < 500 and resp.status != 429:
                            reason = f"status {resp.status} (not retried)"
                            break
                        reason = f"status {resp.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    reason = f"{type(e).__name__}: {e}"
                if attempt == retries:  # at shutdown too: close() cancels what is left at its deadline
                    break
                self._retries.labels(model).inc()
                delay = min(MAX_BACKOFF_S, self.settings.sink_backoff_s * 2 ** attempt)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: receivers recover unflooded
            self._events.labels(model, "failed").inc()
            self._failed_since_warning += 1
            now = asyncio.get_running_loop().time()
            if now - self._last_warning >= WARN_EVERY_S:  # a receiver that is down must not flood the log
                log.warning("payload log sink: %d event(s) not delivered to %s since the last warning; the "
                            "last, %s %s of model %r: %s", self._failed_since_warning, self.url,
                            headers["ce-type"], headers["ce-id"], model, reason)
                self._last_warning, self._failed_since_warning = now, 0
        except asyncio.CancelledError:
            self._events.labels(model, "dropped").inc()
            raise

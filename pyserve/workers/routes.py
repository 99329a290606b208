"""Routes of a ``--workers`` server that answer for the whole server, not one worker.

Each wraps the handler one process would use: the worker that took the call answers for itself,
then asks its siblings over the private channel (:mod:`pyserve.workers.channel`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from pyserve import metrics
from pyserve.release.store import REPLICA
from pyserve.server.errors import async_endpoint
from pyserve.server.messages import Deferred, Handler, Request, Response, error_response
from pyserve.workers import counters
from pyserve.workers.control_lock import control_lock
from pyserve.workers.channel import CLIENT_HEADER, CONTROL_TIMEOUT_S, Answer, Siblings
from pyserve.workers.journal import ControlJournal

log = logging.getLogger("pyserve.workers")

# The request headers a sibling needs to read a forwarded control call as this worker did.
_FORWARDED_HEADERS = ("content-type",)


async def _local(handler: Handler, request: Request) -> Response:
    """``handler``'s answer to ``request`` as a Response (handlers may answer later or be async)."""
    resp = handler(request)
    if isinstance(resp, Deferred):  # only infer answers this way; no wrapped route does
        return resp.finish(await resp.future)
    if not isinstance(resp, Response):
        resp = await resp
    return resp


def _target(request: Request) -> str:
    return request.path + (f"?{request.query_string}" if request.query_string else "")


def _worker_error(answer: Answer) -> str:
    """What a sibling's failed answer says, for the caller."""
    if answer.status is None:
        return f"worker {answer.worker} is {answer.error}"
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        doc = None
    message = doc.get("error") if isinstance(doc, dict) else None
    said = f": {message}" if isinstance(message, str) else ""
    return f"worker {answer.worker} answered {answer.status}{said}"


def all_ready(siblings: Siblings, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A readiness route (``/v2/health/ready``, a model's ``/ready``) that is 200 only when this
    worker and every sibling answer 200; else the first answer that is not (503 with which worker
    and why when a sibling does not answer)."""

    @functools.wraps(handler)
    @async_endpoint
    async def wrapped(request: Request) -> Response:
        resp = await _local(handler, request)
        if resp.status != 200:
            return resp
        for answer in await siblings.ask("GET", _target(request)):
            if answer.status is None:
                doc = {"ready": False, "error": _worker_error(answer)}
                return Response(orjson.dumps(doc), 503, headers={"Retry-After": "1"})
            if answer.status != 200:
                return Response(answer.body, answer.status)
        return resp

    return wrapped


def fan_out(siblings: Siblings, handler: Callable[[Request], Awaitable[Response]]
            ) -> Callable[[Request], Awaitable[Response]]:
    """A model-control route applied by every worker: this worker first (an error here is the
    answer, and no sibling is asked), then recorded in the control journal (a worker that starts
    later replays it: :mod:`pyserve.workers.journal`), then every sibling at once, all under the
    server-wide control lock (:mod:`pyserve.workers.control_lock`). The answer is
    this worker's once all succeeded; else 500 naming each worker that failed and why (the change
    then holds on the other workers: repeat the call, or undo it)."""
    control_journal = ControlJournal(siblings.worker.runtime_dir)

    @functools.wraps(handler)
    @async_endpoint
    async def wrapped(request: Request) -> Response:
        # One call at a time, server-wide: applied by every worker in the same order.
        async with control_lock(siblings.worker.runtime_dir):
            return await _apply_everywhere(request)

    async def _apply_everywhere(request: Request) -> Response:
        resp = await handler(request)
        if resp.status >= 400:
            return resp
        try:
            await asyncio.to_thread(control_journal.record, request.method, _target(request), request.body,
                                    request.headers.get("content-type") or "", request.peer)
        except (OSError, ValueError) as e:
            # Applied here and forwarded all the same: only a worker restarted later misses it.
            log.error("%s %s: not recorded in the control journal (%s): a worker restarted later will "
                      "not apply it", request.method, request.path, e)
        headers = {k: v for k in _FORWARDED_HEADERS if (v := request.headers.get(k)) is not None}
        headers[CLIENT_HEADER] = request.peer
        answers = await siblings.ask(request.method, _target(request), request.body, headers,
                                     CONTROL_TIMEOUT_S)
        failed = [a for a in answers if not a.ok]
        if not failed:
            return resp
        done = [siblings.worker.index] + [a.worker for a in answers if a.ok]
        message = (f"applied by worker(s) {', '.join(map(str, sorted(done)))} of {siblings.worker.count} "
                   "but not by "
                   + "; ".join(_worker_error(a) for a in failed))
        log.error("%s %s: %s", request.method, request.path, message)
        return error_response(500, message)

    return wrapped


def whole_server_metrics(siblings: Siblings) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics`` of the whole server: this worker's series, its siblings' answers, the saved
    counters of a sibling that does not answer (said in the log) and the retired totals of the
    workers that exited, merged (:mod:`pyserve.workers.counters`): no counter goes backwards when a
    worker dies or restarts. This worker's exposition is saved before it is published
    (``request.app.counts``)."""
    runtime_dir = siblings.worker.runtime_dir

    @async_endpoint
    async def handler(request: Request) -> Response:
        tries = 0
        while True:
            tries += 1
            generation = (await asyncio.to_thread(counters.read_retired, runtime_dir)).generation
            text = await request.app.counts.save()
            texts, absent = [text.decode()], []
            for answer in await siblings.ask("GET", "/metrics"):
                if answer.ok:
                    texts.append(answer.body.decode())
                else:
                    absent.append(answer.worker)
                    log.warning("/metrics: %s; its last saved counters stand in", _worker_error(answer))
            try:
                # The last try publishes whatever the generation (a worker retired during each).
                body = await asyncio.to_thread(counters.whole_server, runtime_dir, texts, absent,
                                               generation if tries < counters.SCRAPE_TRIES else None)
            except counters.RetiredMeanwhile:
                continue
            return Response(body, content_type=metrics.CONTENT_TYPE)

    return handler


@async_endpoint
async def own_metrics(request: Request) -> Response:
    """``GET /metrics`` of the private channel: this worker's series only, saved on the way as its
    last known counts (:mod:`pyserve.workers.counters`)."""
    counts = request.app.counts
    text = metrics.render(request.app.registry) if counts is None else await counts.save()
    return Response(text, content_type=metrics.CONTENT_TYPE)


def as_forwarded(handler: Callable[[Request], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
    """A control route of the channel: the request's client is the one the forwarding worker named,
    and a traffic-policy change is applied in memory only (:data:`pyserve.release.store.REPLICA`):
    the forwarding worker wrote the policy file and the audit record once."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        request.peer = request.headers.get(CLIENT_HEADER, request.peer)
        token = REPLICA.set(True)  # this request's task only
        try:
            return await handler(request)
        finally:
            REPLICA.reset(token)

    return wrapped

"""A tiny KServe v2 server with a KNOWN service time, for validating ``pyserve bench``.

One request at a time (an asyncio.Lock), each holding the lock for exactly ``service_s`` of sleep, no
batching: a D/1 queue whose throughput and latency queueing theory predicts. It decodes the three
encodings the bench sends (so a malformed body is a 400 the tests see) and exports pyserve-named
metrics. It runs in a thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import msgpack
from aiohttp import web

MODEL = "m"
INPUTS = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


class FakeKServe:
    """Start with :meth:`start` (returns the base URL), stop with :meth:`stop`."""

    def __init__(self, service_s: float = 0.02, fail_status: int | None = None, metrics: bool = True) -> None:
        self.service_s = service_s
        self.fail_status = fail_status
        self.metrics = metrics
        self.counters = {"queue": 0.0, "compute": 0.0, "request": 0.0, "n": 0, "samples": 0}
        self.bad_bodies = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kserve", daemon=True)
        self._runner: web.AppRunner | None = None
        self._lock: asyncio.Lock | None = None
        self.url = ""

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get(f"/v2/models/{MODEL}", self._metadata)
        app.router.add_post(f"/v2/models/{MODEL}/infer", self._infer)
        if self.metrics:
            app.router.add_get("/metrics", self._metrics)
        return app

    async def _metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": MODEL, "versions": ["1"], "platform": "fake", "inputs": INPUTS,
                                  "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]})

    def _batch(self, body: bytes, headers: dict) -> int:
        ctype = headers.get("Content-Type", "")
        if "Inference-Header-Content-Length" in headers:
            n = int(headers["Inference-Header-Content-Length"])
            head = json.loads(body[:n])
            size = head["inputs"][0]["parameters"]["binary_data_size"]
            shape = head["inputs"][0]["shape"]
            assert len(body) - n == size == 4 * shape[0] * shape[1]
        elif "msgpack" in ctype:
            msg = msgpack.unpackb(body)
            shape = msg["inputs"][0]["shape"]
            assert len(msg["inputs"][0]["data"]) == 4 * shape[0] * shape[1]
        else:
            msg = json.loads(body)
            shape = msg["inputs"][0]["shape"]
            assert len(msg["inputs"][0]["data"]) == shape[0] * shape[1]
        return int(shape[0])

    async def _infer(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        try:
            batch = self._batch(body, dict(request.headers))
        except Exception as e:  # any decode failure is the client's fault here
            self.bad_bodies += 1
            return web.json_response({"error": f"bad body: {e!r}"}, status=400)
        if self.fail_status is not None:
            return web.json_response({"error": "injected failure"}, status=self.fail_status)
        assert self._lock is not None
        async with self._lock:
            started = time.monotonic()
            await asyncio.sleep(self.service_s)
            done = time.monotonic()
        c = self.counters
        c["queue"] += started - arrived
        c["compute"] += done - started
        c["request"] += done - arrived
        c["n"] += 1
        c["samples"] += batch
        out = {"model_name": MODEL, "outputs": [{"name": "y", "datatype": "FP32", "shape": [batch, 4],
                                                 "data": [0.0] * (4 * batch)}]}
        return web.json_response(out)

    async def _metrics(self, request: web.Request) -> web.Response:
        c = self.counters
        lab = f'model="{MODEL}",version="1"'
        lines = []
        for name, key in (("queue", "queue"), ("compute", "compute"), ("request", "request")):
            fam = f"pyserve_{name}_duration_seconds"
            lines += [
                f"# TYPE {fam} histogram",
                f'{fam}_bucket{{{lab},le="+Inf"}} {c["n"]}',
                f"{fam}_sum{{{lab}}} {c[key]}",
                f"{fam}_count{{{lab}}} {c['n']}",
            ]
        lines += [
            "# TYPE pyserve_batch_size histogram",
            f'pyserve_batch_size_bucket{{{lab},le="+Inf"}} {c["n"]}',
            f"pyserve_batch_size_sum{{{lab}}} {c['samples']}",
            f"pyserve_batch_size_count{{{lab}}} {c['n']}",
            "# TYPE pyserve_samples counter",
            f"pyserve_samples_total{{{lab}}} {c['samples']}",
            # Another model's series must not leak into ours.
            'pyserve_samples_total{model="other",version="1"} 999999',
            "# TYPE pyserve_batches counter",
            f"pyserve_batches_total{{{lab}}} {c['n']}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _start(self) -> str:
        self._lock = asyncio.Lock()
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> str:
        """Start serving; the base URL."""
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.url

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

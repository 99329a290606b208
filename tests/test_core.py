"""The C++ core through its Python binding: scheduler, batching, priorities, deadlines, rejection,
cancellation, shutdown, statistics, and the asyncio runtime."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from pyserve import _core
from pyserve.config import DynamicBatching, ModelConfig, TensorSpec
from pyserve.errors import ErrorKind, PyserveError, error_from_core
from pyserve.runtime import CompletionPump, ModelRunner

OK, INVALID, UNAVAILABLE, DEADLINE, CANCELLED, INTERNAL = range(6)


def options(**kw):
    base = dict(
        model_name="m",
        model_version="1",
        inputs=[("x", "FP32", [4])],
        outputs=[("y", "FP32", [4])],
        max_batch_size=8,
    )
    base.update(kw)
    return _core.SchedulerOptions(**base)


def sample(i: int, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), i, dtype=np.float32)}


def drain_all(cq: _core.CompletionQueue, count: int, timeout_s: float = 10.0) -> list:
    """Collects `count` completions (a request answered twice or never fails here)."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        cq.wait(50)
        got.extend(cq.drain())
    assert len(got) == count, f"expected {count} completions, got {len(got)}"
    return got


class Gate:
    """A Python backend that blocks until released and records every batch it runs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[float]] = []

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        self.release.wait(10)
        self.batches.append(batch["x"][:, 0].tolist())
        return {"y": batch["x"] * 2}


def test_many_threads_each_request_gets_its_own_result() -> None:
    cq = _core.CompletionQueue()
    sched = _core.Scheduler(options(max_batch_size=32, max_queue_delay_us=200), _core.IdentityBackend(), cq)
    threads, per_thread = 8, 500
    results: dict[int, float] = {}
    batch_sizes = []

    def producer(t: int) -> None:
        for j in range(per_thread):
            key = t * per_thread + j
            n = 1 + key % 3  # requests of 1..3 samples, never split
            sched.submit({"x": np.full((n, 4), key, dtype=np.float32)}, (key, n))

    ts = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    got = drain_all(cq, threads * per_thread)
    for t in ts:
        t.join()
    for (key, n), code, message, outputs, *_ in got:
        assert code == OK, message
        y = outputs["y"]
        assert y.shape == (n, 4)
        assert np.all(y == key), f"request {key} got another request's rows"
        assert key not in results
        results[key] = float(y[0, 0])
    stats = sched.stats()
    sched.stop()
    assert len(results) == threads * per_thread
    assert stats["requests_succeeded"] == threads * per_thread
    assert stats["batches_executed"] < threads * per_thread, "no batch larger than one request formed"
    assert stats["samples_inferred"] == sum(1 + k % 3 for k in range(threads * per_thread))
    batch_sizes = stats["batch_size"]
    assert batch_sizes["sum"] == stats["samples_inferred"]
    assert stats["queue_depth"] == 0 and stats["in_flight"] == 0


def test_python_backend_sees_batches_larger_than_one() -> None:
    cq = _core.CompletionQueue()
    seen: list[int] = []

    def backend(batch):
        seen.append(batch["x"].shape[0])
        return {"y": batch["x"] + 1}

    sched = _core.Scheduler(options(max_batch_size=16, max_queue_delay_us=5000), backend, cq)
    for i in range(64):
        sched.submit(sample(i), i)
    got = drain_all(cq, 64)
    sched.stop()
    assert max(seen) > 1 and max(seen) <= 16
    for token, code, _, outputs, *_ in got:
        assert code == OK and outputs["y"][0, 0] == token + 1


def test_delay_bound_with_one_request_at_a_time() -> None:
    delay_us = 20_000
    cq = _core.CompletionQueue()
    sched = _core.Scheduler(options(max_batch_size=8, max_queue_delay_us=delay_us), _core.IdentityBackend(), cq)
    for i in range(3):
        sched.submit(sample(i), i)
        drain_all(cq, 1)
    q = sched.stats()["queue_us"]
    sched.stop()
    mean_queue_us = q["sum"] / q["count"]
    # Alone in the queue, a request waits for company for the whole delay, and not much longer.
    assert delay_us * 0.9 <= mean_queue_us <= delay_us + 200_000, mean_queue_us


def test_preferred_batch_size_dispatches_without_waiting() -> None:
    cq = _core.CompletionQueue()
    gate = Gate()
    gate.release.set()
    sched = _core.Scheduler(
        options(max_batch_size=8, preferred_batch_sizes=[4], max_queue_delay_us=10_000_000), gate, cq
    )
    for i in range(4):
        sched.submit(sample(i), i)
    drain_all(cq, 4, timeout_s=5)  # would take 10 s if the preferred size were ignored
    sched.stop()
    assert gate.batches == [[0, 1, 2, 3]]


def test_priorities_are_batched_first() -> None:
    cq = _core.CompletionQueue()
    gate = Gate()
    sched = _core.Scheduler(options(max_batch_size=2, priority_levels=2, default_priority_level=2), gate, cq)
    sched.submit(sample(0), 0)  # occupies the only instance
    assert gate.started.wait(5)
    for i in (1, 2):
        sched.submit(sample(i), i, priority=2)
    for i in (3, 4):
        sched.submit(sample(i), i, priority=1)
    gate.release.set()
    drain_all(cq, 5)
    sched.stop()
    assert gate.batches == [[0], [3, 4], [1, 2]]


def test_invalid_priority_is_refused() -> None:
    sched = _core.Scheduler(options(priority_levels=2), _core.IdentityBackend(), _core.CompletionQueue())
    with pytest.raises(_core.CoreError) as e:
        sched.submit(sample(0), 0, priority=3)
    assert e.value.args[0] == INVALID and "1..2" in e.value.args[1]
    sched.stop()


def test_deadline_passed_in_queue_is_answered_and_never_executed() -> None:
    cq = _core.CompletionQueue()
    gate = Gate()
    sched = _core.Scheduler(options(max_batch_size=4), gate, cq)
    sched.submit(sample(0), "first")
    assert gate.started.wait(5)
    sched.submit(sample(7), "late", timeout_us=1000)
    time.sleep(0.01)  # let the 1 ms deadline pass while the instance is busy
    gate.release.set()
    got = {t: (c, m) for t, c, m, *_ in drain_all(cq, 2)}
    stats = sched.stats()
    sched.stop()
    assert got["first"][0] == OK
    assert got["late"][0] == DEADLINE and "timed out" in got["late"][1]
    assert [7.0] not in gate.batches
    assert stats["requests_timed_out"] == 1


def test_full_queue_rejects_at_once() -> None:
    cq = _core.CompletionQueue()
    gate = Gate()
    sched = _core.Scheduler(options(max_batch_size=1, max_queue_size=2), gate, cq)
    sched.submit(sample(0), 0)
    assert gate.started.wait(5)
    sched.submit(sample(1), 1)
    sched.submit(sample(2), 2)
    with pytest.raises(_core.CoreError) as e:
        sched.submit(sample(3), 3)
    assert e.value.args[0] == UNAVAILABLE and "full" in e.value.args[1]
    gate.release.set()
    got = drain_all(cq, 3)
    assert sorted(t for t, *_ in got) == [0, 1, 2]
    stats = sched.stats()
    sched.stop()
    assert stats["requests_rejected"] == 1 and stats["requests_succeeded"] == 3


def test_cancel_queued_request() -> None:
    cq = _core.CompletionQueue()
    gate = Gate()
    sched = _core.Scheduler(options(max_batch_size=1), gate, cq)
    sched.submit(sample(0), 0)
    assert gate.started.wait(5)
    rid = sched.submit(sample(1), 1)
    assert sched.cancel(rid) is True
    assert sched.cancel(rid) is False  # answered already
    gate.release.set()
    got = {t: c for t, c, *_ in drain_all(cq, 2)}
    sched.stop()
    assert got == {0: OK, 1: CANCELLED}
    assert gate.batches == [[0.0]]


def wait_until_stopping(sched: _core.Scheduler) -> None:
    """Returns once ``sched.stop()`` has begun. The queue must be full (``max_queue_size``) and held:
    a probe request is refused as "full" before the stop and as "shutting down" after, and is never
    queued either way."""
    deadline = time.monotonic() + 10
    while True:
        with pytest.raises(_core.CoreError) as e:
            sched.submit(sample(99), 99)
        assert e.value.args[0] == UNAVAILABLE
        if "shutting down" in e.value.args[1]:
            return
        assert "full" in e.value.args[1] and time.monotonic() < deadline, e.value.args[1]
        time.sleep(0.001)


@pytest.mark.parametrize("drain", [True, False], ids=["drain", "fail"])
def test_shutdown_answers_every_queued_request(drain: bool) -> None:
    cq = _core.CompletionQueue()
    gate = Gate()
    # A queue delay far beyond the test: queued requests run only when a full batch or draining lets them.
    opts = options(max_batch_size=2, max_queue_delay_us=60_000_000, max_queue_size=5)
    sched = _core.Scheduler(opts, gate, cq)
    sched.submit(sample(0, 2), 0)
    assert gate.started.wait(5)
    for i in range(1, 6):
        sched.submit(sample(i), i)
    stopper = threading.Thread(target=sched.stop, args=(drain,))
    stopper.start()
    wait_until_stopping(sched)
    if not drain:  # failed at once, while the running batch still holds the instance
        dropped = {t: (c, m) for t, c, m, *_ in drain_all(cq, 5)}
        assert sorted(dropped) == [1, 2, 3, 4, 5]
        assert all(c == UNAVAILABLE and "shutting down" in m for c, m in dropped.values()), dropped
    gate.release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    got = {t: (c, m) for t, c, m, *_ in drain_all(cq, 6 if drain else 1)}
    assert got[0][0] == OK
    if drain:  # every queued request ran, the last alone without waiting out its queue delay
        assert all(got[i][0] == OK for i in range(1, 6)), got
        assert gate.batches == [[0, 0], [1, 2], [3, 4], [5]]
    else:
        assert gate.batches == [[0, 0]]
    with pytest.raises(_core.CoreError) as e:
        sched.submit(sample(9), 9)
    assert e.value.args[0] == UNAVAILABLE


def test_requests_of_different_shapes_never_share_a_batch() -> None:
    cq = _core.CompletionQueue()
    shapes: list[tuple[int, ...]] = []

    def backend(batch):
        shapes.append(batch["x"].shape)
        return {"y": batch["x"]}

    opts = options(inputs=[("x", "FP32", [-1])], outputs=[("y", "FP32", [-1])], max_queue_delay_us=20_000)
    sched = _core.Scheduler(opts, backend, cq)
    for i in range(6):
        sched.submit({"x": np.full((1, 2 + i % 2), i, np.float32)}, i)
    got = drain_all(cq, 6)
    sched.stop()
    for token, code, _, out, *_ in got:
        assert code == OK and out["y"].shape == (1, 2 + token % 2) and np.all(out["y"] == token)
    assert sorted(shapes) == [(3, 2), (3, 3)]


@pytest.mark.parametrize(
    "inputs, needle",
    [
        ({"x": np.zeros((1, 4), np.float64)}, "expected datatype FP32, got FP64"),
        ({"x": np.zeros((1, 4), ">f4")}, "expected datatype FP32"),  # not the machine's byte order
        ({"x": np.zeros((1, 5), np.float32)}, "expected shape [-1, 4]"),
        ({"x": np.zeros((4,), np.float32)}, "expected shape [-1, 4]"),
        ({"x": np.zeros((1, 8), np.float32)[:, ::2]}, "C-contiguous"),
        ({"x": np.zeros((9, 4), np.float32)}, "input 'x': batch of 9 samples"),
        ({"x": np.zeros((0, 4), np.float32)}, "at least 1"),
        ({}, "missing input 'x'"),
        ({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)}, "unexpected input 'z'"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, "expected a numpy array"),
    ],
    ids=["dtype", "big-endian", "dim", "rank", "strided", "too-big", "empty", "missing", "extra", "list"],
)
def test_bad_input_is_refused_with_a_clear_error(inputs, needle) -> None:
    sched = _core.Scheduler(options(), _core.IdentityBackend(), _core.CompletionQueue())
    with pytest.raises(_core.CoreError) as e:
        sched.submit(inputs, None)
    sched.stop()
    assert e.value.args[0] == INVALID
    assert needle in e.value.args[1]


def test_backend_errors_fail_the_batch_not_the_scheduler() -> None:
    cq = _core.CompletionQueue()
    calls = []

    def backend(batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        if len(calls) == 2:
            return {"y": batch["x"][:0]}  # wrong batch dimension
        return {"y": batch["x"]}

    sched = _core.Scheduler(options(), backend, cq)
    codes = []
    for i in range(3):
        sched.submit(sample(i), i)
        codes.append(drain_all(cq, 1)[0][1:3])
    stats = sched.stats()
    sched.stop()
    assert codes[0][0] == INTERNAL and "boom" in codes[0][1]
    assert codes[1][0] == INTERNAL
    assert "output 'y': the model returned shape [0, 4] for a batch of 1 sample but declares [-1, 4]" in codes[1][1]
    assert codes[2][0] == OK
    assert stats["requests_failed"] == 2 and stats["requests_succeeded"] == 1


def test_outputs_are_views_of_the_batch_output() -> None:
    cq = _core.CompletionQueue()
    sched = _core.Scheduler(
        options(max_batch_size=8, max_queue_delay_us=50_000, preferred_batch_sizes=[4]),
        lambda b: {"y": b["x"] * 3},
        cq,
    )
    for i in range(4):
        sched.submit(sample(i), i)
    got = drain_all(cq, 4)
    sched.stop()
    ys = [out["y"] for _, _, _, out, *_ in got]
    assert all(y.base is not None for y in ys), "results were copied, not viewed"
    assert [float(y[0, 0]) for y in ys] == [0.0, 3.0, 6.0, 9.0]


def test_bytes_round_trip_through_the_core() -> None:
    cq = _core.CompletionQueue()
    opts = options(inputs=[("s", "BYTES", [1])], outputs=[("t", "BYTES", [1])], max_queue_delay_us=10_000)
    sched = _core.Scheduler(opts, lambda b: {"t": b["s"]}, cq)
    values = [b"", "héllo".encode(), b"\x00\xff", b"x" * 1000]
    for i, v in enumerate(values):
        sched.submit({"s": np.array([[v]], dtype=object)}, i)
    got = drain_all(cq, len(values))
    sched.stop()
    for token, code, _, out, *_ in got:
        assert code == OK and out["t"].shape == (1, 1) and out["t"][0, 0] == values[token]


def test_bytes_helpers_round_trip() -> None:
    arr = np.array([[b"a", b""], ["é", b"\x00"]], dtype=object)
    wire = _core.serialize_bytes(arr)
    assert wire[:5] == b"\x01\x00\x00\x00a"
    back = _core.deserialize_bytes(wire, [2, 2])
    assert back.tolist() == [[b"a", b""], ["é".encode(), b"\x00"]]
    with pytest.raises(ValueError):
        _core.deserialize_bytes(wire[:-1], [2, 2])


def _config(**kw) -> ModelConfig:
    db = dict(max_queue_delay_us=1000)
    db.update(kw.pop("dynamic_batching", {}))
    base = dict(
        name="m", backend="identity", inputs=(TensorSpec("x", "FP32", (4,)),),
        outputs=(TensorSpec("y", "FP32", (4,)),), max_batch_size=8, instance_count=1,
        dynamic_batching=DynamicBatching(**db),
    )
    base.update(kw)
    return ModelConfig(**base)


def test_runner_from_asyncio_many_in_flight() -> None:
    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(), "1", _core.IdentityBackend(), pump)
        outs = await asyncio.gather(*(runner.infer(sample(i)) for i in range(500)))
        assert [float(o["y"][0, 0]) for o in outs] == list(range(500))
        stats = runner.stats()
        assert stats["batches_executed"] < 500
        with pytest.raises(PyserveError) as e:
            runner.submit({"x": np.zeros((1, 3), np.float32)})
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT
        await runner.stop()
        pump.close()

    asyncio.run(main())


def test_runner_cancelled_future_cancels_queued_request() -> None:
    gate = Gate()

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(max_batch_size=1), "1", gate, pump)
        first = runner.submit(sample(0))
        await asyncio.get_running_loop().run_in_executor(None, gate.started.wait, 5)
        second = runner.submit(sample(1))
        second.cancel()
        await asyncio.sleep(0)
        gate.release.set()
        assert float((await first)["y"][0, 0]) == 0.0
        await runner.stop()
        stats = runner.stats()
        assert stats["requests_cancelled"] == 1
        assert gate.batches == [[0.0]]
        pump.close()

    asyncio.run(main())


def test_runner_submit_callback_answers_without_a_future_and_cancels() -> None:
    """submit_callback's callable is called by the drain with the outputs, or with the core's status
    (CANCELLED for a request cancelled while queued: it never runs); one callback that raises does
    not keep the others of the same drain from their answers."""
    gate = Gate()
    got: list[tuple] = []

    def callback(tag: str, raises: bool = False) -> Any:
        def completed(code: int, message: str, outputs: Any, queue_us: int, compute_us: int) -> None:
            got.append((tag, code, None if outputs is None else float(outputs["y"][0, 0]), queue_us >= 0))
            if raises:
                raise RuntimeError("a caller's bug")
        return completed

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(max_batch_size=4), "1", gate, pump)
        runner.submit_callback(sample(0), callback("first"))
        await asyncio.get_running_loop().run_in_executor(None, gate.started.wait, 5)
        cancelled = runner.submit_callback(sample(1), callback("cancelled"))
        runner.submit_callback(sample(2), callback("raiser", raises=True))
        runner.submit_callback(sample(3), callback("after"))
        runner.cancel(cancelled)
        gate.release.set()
        await runner.stop()
        pump.close()

    asyncio.run(main())
    by_tag = {tag: rest for tag, *rest in got}
    assert len(got) == 4 and by_tag["first"] == [0, 0.0, True]
    assert by_tag["raiser"] == [0, 4.0, True] and by_tag["after"] == [0, 6.0, True]  # y = 2x
    code, outputs, _ = by_tag["cancelled"]
    assert outputs is None and error_from_core(code, "").kind is ErrorKind.CANCELLED
    assert gate.batches == [[0.0], [2.0, 3.0]]  # the cancelled request never ran


def test_runner_task_cancelled_while_awaiting_cancels_queued_request() -> None:
    """A task awaiting the future (a handler whose client went away) cancels the request in the core
    when the task is cancelled, at once, and the queued request never runs; cancelling a future that
    is done already cancels nothing."""
    gate = Gate()

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(max_batch_size=1), "1", gate, pump)
        first = runner.submit(sample(0))
        await asyncio.get_running_loop().run_in_executor(None, gate.started.wait, 5)
        waiter = asyncio.ensure_future(runner.infer(sample(1)))
        await asyncio.sleep(0)  # the task now awaits the core's future
        waiter.cancel()
        assert runner.stats()["requests_cancelled"] == 1  # at once, not on a later turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.release.set()
        assert float((await first)["y"][0, 0]) == 0.0
        assert first.cancel() is False  # done: nothing to cancel
        await runner.stop()
        stats = runner.stats()
        assert stats["requests_cancelled"] == 1
        assert gate.batches == [[0.0]]
        pump.close()

    asyncio.run(main())


def test_runner_timeout_maps_to_deadline_exceeded() -> None:
    gate = Gate()

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(max_batch_size=1), "1", gate, pump)
        first = runner.submit(sample(0))
        await asyncio.get_running_loop().run_in_executor(None, gate.started.wait, 5)
        late = runner.submit(sample(1), timeout_us=500)
        await asyncio.sleep(0.01)
        gate.release.set()
        await first
        with pytest.raises(PyserveError) as e:
            await late
        assert e.value.kind is ErrorKind.DEADLINE_EXCEEDED
        await runner.stop()
        pump.close()

    asyncio.run(main())


def test_bad_options_are_refused() -> None:
    with pytest.raises(_core.CoreError) as e:
        _core.Scheduler(options(preferred_batch_sizes=[16]), _core.IdentityBackend(), _core.CompletionQueue())
    assert "preferred_batch_sizes" in e.value.args[1]
    with pytest.raises(_core.CoreError):
        _core.Scheduler(options(instance_count=0), _core.IdentityBackend(), _core.CompletionQueue())


def test_flush_dispatches_without_waiting_out_the_delay() -> None:
    cq = _core.CompletionQueue()
    sched = _core.Scheduler(options(max_batch_size=8, max_queue_delay_us=10_000_000), _core.IdentityBackend(), cq)
    sched.submit(sample(1), 1)
    assert not cq.wait(50), "dispatched before the 10 s delay without a flush"
    # A model not yet seen to be cheap: the flush right after a submit is put off once...
    assert sched.flush() == 2
    assert not cq.wait(50)
    # ...and the next one, with nothing new submitted, dispatches.
    assert sched.flush() == 0
    got = drain_all(cq, 1, timeout_s=5)
    sched.stop()
    assert got[0][1] == OK


@pytest.mark.parametrize("dispatch_when_idle", [True, False], ids=["when-idle", "triton-rule"])
def test_runner_lone_request_waits_only_under_the_triton_rule(dispatch_when_idle: bool) -> None:
    delay_us = 100_000

    async def main() -> float:
        pump = CompletionPump()
        config = _config(dynamic_batching=dict(max_queue_delay_us=delay_us, dispatch_when_idle=dispatch_when_idle))
        runner = ModelRunner(config, "1", _core.IdentityBackend(), pump)
        await runner.infer(sample(0))  # warm
        start = time.perf_counter()
        await runner.infer(sample(1))
        elapsed = time.perf_counter() - start
        await runner.stop()
        pump.close()
        return elapsed

    elapsed = asyncio.run(main())
    if dispatch_when_idle:
        assert elapsed < delay_us / 1e6 / 2, elapsed  # nothing else was coming: no wait
    else:
        assert elapsed >= delay_us / 1e6 * 0.9, elapsed


@pytest.mark.parametrize(
    "backend_name, cost_s, inline",
    [("onnxruntime", 0.0, True), ("onnxruntime", 0.002, False), ("python", 0.0, False)],
    ids=["cheap", "costly", "user-python"],
)
def test_runner_runs_cheap_lone_batches_on_the_loop_thread(backend_name: str, cost_s: float, inline: bool) -> None:
    threads: list[int] = []

    def backend(batch):
        threads.append(threading.get_ident())
        if cost_s:
            time.sleep(cost_s)
        return {"y": batch["x"]}

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(backend=backend_name), "1", backend, pump)
        for i in range(30):  # one at a time: every instance idle at each flush
            out = await runner.infer(sample(i))
            assert float(out["y"][0, 0]) == i
        await runner.stop()
        pump.close()

    asyncio.run(main())
    loop_thread = threading.get_ident()
    # The first batches run on the instance thread until they are seen to be cheap. Any later one may
    # go back to it (a stall of a loaded machine makes a batch look costly): a cheap model must have
    # run some batch inline, a costly one none.
    assert threads[0] != loop_thread
    assert (loop_thread in threads[1:]) is inline


def test_runner_never_runs_a_background_request_on_the_loop_thread() -> None:
    """submit(inline=False) (a shadow's mirrored request): the batch runs on an instance thread even
    where the model is cheap enough to run inline; requests of the same model that may run inline
    still do once the background one is dispatched."""
    threads: list[tuple[str, int]] = []

    def backend(batch):
        threads.append(("bg" if float(batch["x"][0, 0]) < 0 else "fg", threading.get_ident()))
        return {"y": batch["x"]}

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(_config(backend="onnxruntime"), "1", backend, pump)
        for i in range(30):  # one at a time: every instance idle at each flush
            await runner.infer(sample(i))
            out = await runner.submit(sample(-1 - i), inline=False)
            assert float(out["y"][0, 0]) == -1 - i
        await runner.stop()
        pump.close()

    asyncio.run(main())
    loop_thread = threading.get_ident()
    assert all(t != loop_thread for kind, t in threads if kind == "bg")
    assert any(t == loop_thread for kind, t in threads if kind == "fg")  # the cheap model did run inline


@pytest.mark.parametrize("backend_name", ["identity", "python"], ids=["inline", "instance-thread"])
@pytest.mark.parametrize("instances", [1, 2])
def test_runner_mixed_shapes_every_request_ends(backend_name: str, instances: int) -> None:
    """Bursts of requests of several lengths (a variable non-batch dimension, as every sequence model
    exported with dynamic_axes has), priorities and batch sizes: every one is answered well within
    max_queue_delay (which is far beyond the test's patience), inline or on instance threads."""
    seq_spec = TensorSpec("x", "FP32", (-1,))
    out_spec = TensorSpec("y", "FP32", (-1,))
    config = _config(backend=backend_name, inputs=(seq_spec,), outputs=(out_spec,), instance_count=instances,
                     dynamic_batching=dict(max_queue_delay_us=30_000_000, priority_levels=2))
    backend: Any = _core.IdentityBackend() if backend_name == "identity" else (lambda b: {"y": b["x"]})
    rng = np.random.default_rng(7)

    async def main() -> None:
        pump = CompletionPump()
        runner = ModelRunner(config, "1", backend, pump)
        for _ in range(3):  # warm up: batches are seen to be cheap, so later flushes run inline
            await runner.infer({"x": np.zeros((1, 3), np.float32)})
        for burst in range(20):
            futures, expected = [], []
            for i in range(int(rng.integers(1, 40))):
                rows, length = int(rng.integers(1, 4)), int(rng.choice([2, 3, 5, 7]))
                x = np.full((rows, length), burst * 1000 + i, np.float32)
                futures.append(runner.submit({"x": x}, priority=int(rng.integers(0, 3))))
                expected.append(x)
            done, pending = await asyncio.wait(futures, timeout=5.0)
            assert not pending, f"burst {burst}: {len(pending)} of {len(futures)} requests never answered"
            for future, x in zip(futures, expected):
                np.testing.assert_array_equal(future.result()["y"], x)
        await runner.stop()
        pump.close()

    asyncio.run(main())

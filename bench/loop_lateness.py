"""How late a 1 ms ticker on the event loop runs while a piece of work runs on a thread: whether the
work leaves the loop's thread free (it releases the GIL) or stalls every other client. Shared by
bench_json_decode.py and bench_json_encode.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


async def lateness(work: Callable[[Any], object], arg: Any, what: str) -> dict:
    """Run ``work(arg)`` on a thread while a ticker sleeps 1 ms at a time on the loop. Returns
    ``{f"{what}_s": the work's wall time, "ticks": n, "late_p50_ms", "late_p99_ms", "late_worst_ms"}``:
    how much later than 1 ms the ticker woke, in milliseconds."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    late.clear()
    with ThreadPoolExecutor(1) as pool:
        t = time.perf_counter()
        await loop.run_in_executor(pool, work, arg)
        wall = time.perf_counter() - t
    done = True
    await task
    late.sort()
    return {f"{what}_s": round(wall, 3), "ticks": len(late),
            "late_p50_ms": round(late[len(late) // 2] * 1e3, 2),
            "late_p99_ms": round(late[min(len(late) - 1, int(len(late) * 0.99))] * 1e3, 2),
            "late_worst_ms": round(late[-1] * 1e3, 2)}

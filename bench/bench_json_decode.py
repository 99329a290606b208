"""JSON request decoding: the C++ tensor decoder against the reference decoder (orjson, then numpy),
and what decoding a large body on a decoder thread costs the event loop.

Per request: microseconds to decode a KServe JSON body of one FP32 input of 512 numbers (the heavy
model's input) and of 64 (the tiny model's), as ``pyserve.protocol.kserve.decode_request`` does it
with the C++ decoder ("new") and with it switched off ("old": ``kserve_json.parse`` returning None).
Median over ``--repeat`` rounds of ``--number`` decodes each.

Loop stall: a body of ``--rows`` rows of 4 FP32 numbers (~60 MiB at the default) decoded with
``run_in_executor`` on a thread, as the server decodes bodies over ``DECODE_OFF_LOOP_BYTES``, while
the event loop runs a 1 ms ticker; printed: the decode's wall time and the ticker's p50/p99/worst
lateness (how long the loop's other clients would have waited).

    python bench/bench_json_decode.py                    # ~1 min
    python bench/bench_json_decode.py --rows 100000 --repeat 3 --number 500
    python bench/bench_json_decode.py --threshold        # body sizes on the loop vs the hop to a thread
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from pyserve.protocol import kserve, kserve_json
from loop_lateness import lateness

ROWS = 3_500_000  # rows of 4 numbers: a ~60 MiB body, as bench_hostile.py sends


def request_body(count: int, rows: int = 1, seed: int = 0) -> bytes:
    """A KServe JSON body with one FP32 input of ``rows`` x ``count`` values as tritonclient writes
    them (float32 values, each as Python's shortest repr of the double)."""
    values = np.random.default_rng(seed).standard_normal(rows * count).astype(np.float32).reshape(rows, count)
    doc = {"inputs": [{"name": "x", "shape": [rows, count], "datatype": "FP32", "data": values.tolist()}]}
    return json.dumps(doc).encode()


ROW = "[1.5,2.5,3.5,4.5]"


def large_body(rows: int) -> bytes:
    """bench_hostile.py's json-nested-valid body: ``rows`` rows of 4 FP32 numbers (17 bytes a row)."""
    data = "[" + ",".join([ROW] * rows) + "]"
    return ('{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,4],"data":%s}]}' % (rows, data)).encode()


def decoder(new: bool) -> Callable[[bytes], object]:
    """decode_request with the C++ decoder (new) or the reference alone (old)."""
    if new:
        return kserve.decode_request

    def old(body: bytes) -> object:
        parse = kserve_json.parse
        kserve_json.parse = lambda body: None  # type: ignore[assignment]
        try:
            return kserve.decode_request(body)
        finally:
            kserve_json.parse = parse  # type: ignore[assignment]
    return old


def per_request_us(decode: Callable[[bytes], object], body: bytes, number: int, repeat: int) -> float:
    """Median over ``repeat`` rounds of the mean time of ``number`` decodes, in microseconds."""
    return statistics.median(_rounds(decode, body, number, repeat))


def _rounds(decode: Callable[[bytes], object], body: bytes, number: int, repeat: int) -> list[float]:
    rounds = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            decode(body)
        rounds.append((time.perf_counter() - t) / number * 1e6)
    return rounds


def old_and_new_us(body: bytes, number: int, repeat: int) -> tuple[float, float, float]:
    """Medians of old and new per request, their rounds interleaved (a loaded machine slows both
    alike), and the median of the rounds' old/new ratios."""
    old, new = decoder(False), decoder(True)
    pairs = [(_rounds(old, body, number, 1)[0], _rounds(new, body, number, 1)[0]) for _ in range(repeat)]
    return (statistics.median(o for o, _ in pairs), statistics.median(n for _, n in pairs),
            statistics.median(o / n for o, n in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=2000, help="decodes per round (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the median is printed (default 7)")
    parser.add_argument("--rows", type=int, default=ROWS,
                        help=f"rows of 4 numbers of the large body (default {ROWS})")
    parser.add_argument("--threshold", action="store_true",
                        help="also time bodies of 16 KiB to 4 MiB decoded on the loop's thread, "
                             "beside the hop to a thread")
    args = parser.parse_args()
    for count in (512, 64):
        body = request_body(count)
        old, new, ratio = old_and_new_us(body, args.number, args.repeat)
        print(json.dumps({"case": f"FP32 x {count}", "body_bytes": len(body), "old_us": round(old, 1),
                          "new_us": round(new, 1), "old_over_new": round(ratio, 2)}), flush=True)
    if args.threshold:
        with ThreadPoolExecutor(1) as pool:
            async def hop() -> None:
                await asyncio.get_running_loop().run_in_executor(pool, int)
            loop = asyncio.new_event_loop()
            hop_us = per_request_us(lambda _: loop.run_until_complete(hop()), b"", 500, args.repeat)
            loop.close()
        print(json.dumps({"case": "run_in_executor hop", "us": round(hop_us, 1)}), flush=True)
        for kib in (16, 64, 256, 1024, 4096):
            body = large_body(kib * 1024 // len(ROW))
            new = per_request_us(decoder(True), body, max(3, 20000 // kib), args.repeat)
            print(json.dumps({"case": "new, on the loop", "body_kib": len(body) // 1024,
                              "us": round(new, 1)}),
                  flush=True)
    body = large_body(args.rows)
    print(f"large body: {len(body) / 2**20:.1f} MiB", file=sys.stderr)
    for name, new in (("old", False), ("new", True)):
        result = asyncio.run(lateness(decoder(new), body, "decode"))
        case = f"{name}: {len(body) / 2**20:.0f} MiB body on a thread"
        print(json.dumps({"case": case, **result}), flush=True)


if __name__ == "__main__":
    main()

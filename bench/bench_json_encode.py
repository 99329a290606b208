"""JSON reply encoding: the C++ reply writer against the reference encoder (orjson over the arrays),
and what encoding a large reply on a thread costs the event loop.

Per reply: microseconds to encode a KServe JSON reply of one FP32 output of 1, 10, 512 and 1,048,576
elements (and INT64 and BOOL of 512), as ``pyserve.protocol.kserve.encode_response`` does it with the
writer ("new") and as the reference ``kserve._reference_body`` does ("old"). Old and new rounds are
interleaved (a loaded machine slows both alike); printed: the medians and the median of the rounds'
old/new ratios.

Loop stall: a reply of ``--rows`` x 4 FP32 values (~60 MiB of JSON at the default) encoded with
``run_in_executor`` on a thread, as the server encodes replies over ``ENCODE_OFF_LOOP_BYTES``, while
the event loop runs a 1 ms ticker; printed: the encode's wall time and the ticker's p50/p99/worst
lateness (how long the loop's other clients would have waited), old and new.

    python bench/bench_json_encode.py                    # ~1 min
    python bench/bench_json_encode.py --threshold        # reply sizes on the loop vs the hop to a thread
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from pyserve.protocol import InferResponse, kserve
from loop_lateness import lateness

ROWS = 3_500_000  # rows of 4 FP32 values: ~60 MiB of JSON, as bench_hostile.py's large reply


def reply(values: np.ndarray) -> InferResponse:
    return InferResponse(model_name="m", model_version="1", outputs={"y": values}, id="r")


def encoder(new: bool) -> Callable[[InferResponse], object]:
    """encode_response with the writer (new) or the reference alone (old)."""
    if new:
        return lambda resp: kserve.encode_response(resp, gil_free=True)

    def old(resp: InferResponse) -> object:
        doc = {"model_name": resp.model_name, "model_version": resp.model_version, "id": resp.id}
        return kserve._reference_body(doc, [(n, a, False) for n, a in resp.outputs.items()])
    return old


def _round(encode: Callable[[InferResponse], object], resp: InferResponse, number: int) -> float:
    t = time.perf_counter()
    for _ in range(number):
        encode(resp)
    return (time.perf_counter() - t) / number * 1e6


def old_and_new_us(resp: InferResponse, number: int, repeat: int) -> tuple[float, float, float]:
    old, new = encoder(False), encoder(True)
    pairs = [(_round(old, resp, number), _round(new, resp, number)) for _ in range(repeat)]
    return (statistics.median(o for o, _ in pairs), statistics.median(n for _, n in pairs),
            statistics.median(o / n for o, n in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the median is printed (default 7)")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows of 4 values of the large reply (default {ROWS})")
    parser.add_argument("--threshold", action="store_true",
                        help="also time replies of 16 KiB to 4 MiB of FP32 outputs encoded on the loop's thread, "
                             "beside the hop to a thread")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = [("FP32", 1), ("FP32", 10), ("FP32", 512), ("INT64", 512), ("BOOL", 512), ("FP32", 1 << 20)]
    for datatype, count in cases:
        values = rng.standard_normal(count).astype(np.float32)
        if datatype == "INT64":
            values = (values * 1e6).astype(np.int64)
        elif datatype == "BOOL":
            values = values > 0
        number = max(2, 2_000_000 // (count * 20 + 200))
        old, new, ratio = old_and_new_us(reply(values), number, args.repeat)
        print(json.dumps({"case": f"{datatype} x {count}", "old_us": round(old, 1), "new_us": round(new, 1),
                          "old_over_new": round(ratio, 2)}), flush=True)
    if args.threshold:
        with ThreadPoolExecutor(1) as pool:
            async def hop() -> None:
                await asyncio.get_running_loop().run_in_executor(pool, int)
            loop = asyncio.new_event_loop()
            hop_us = statistics.median(_round(lambda _: loop.run_until_complete(hop()), reply(np.ones(1)), 500)
                                       for _ in range(args.repeat))
            loop.close()
        print(json.dumps({"case": "run_in_executor hop", "us": round(hop_us, 1)}), flush=True)
        for kib in (16, 64, 256, 1024, 4096):
            resp = reply(rng.standard_normal(kib * 256).astype(np.float32))
            new = statistics.median(_round(encoder(True), resp, max(3, 20000 // kib)) for _ in range(args.repeat))
            print(json.dumps({"case": "new, on the loop", "outputs_kib": kib, "us": round(new, 1)}), flush=True)
    resp = reply(rng.standard_normal((args.rows, 4)).astype(np.float32))
    for name, new in (("old", False), ("new", True)):
        result = asyncio.run(lateness(encoder(new), resp, "encode"))
        print(json.dumps({"case": f"{name}: {args.rows} x 4 FP32 reply on a thread", **result}), flush=True)


if __name__ == "__main__":
    main()

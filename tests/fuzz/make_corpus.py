"""Writes the seed corpus of each fuzz target into tests/fuzz/corpus/TARGET/ (a handful of small,
valid and nearly valid requests; the fuzzer mutates them). Run it after changing the seeds:

    python tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import msgpack

HERE = Path(__file__).resolve().parent
ROW = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.5, -3.0, 4e10]}
TEXT = {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "é"]}
JSON_SEEDS = [
    {"inputs": [ROW]},
    {"id": "r1", "parameters": {"priority": 1, "timeout": 1000}, "inputs": [ROW, TEXT],
     "outputs": [{"name": "y", "parameters": {"binary_data": True, "classification": 2}}]},
    {"inputs": [{**ROW, "shape": [2, 2], "data": [[1, 2], [3, 4]]}]},
    {"inputs": [{"name": "x", "datatype": "INT8", "shape": [0, 4611686018427387904], "data": []}]},
    {"inputs": [{"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}]},
    {"inputs": [{"name": "u", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615]}]},
]


def binary_seed(entries: list[tuple[dict, bytes]]) -> bytes:
    header = json.dumps({"inputs": [{**e, "parameters": {"binary_data_size": len(raw)}} for e, raw in entries]})
    header_bytes = header.encode()
    return struct.pack("<H", len(header_bytes)) + header_bytes + b"".join(raw for _, raw in entries)


def bytes_wire(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in items)


def seeds() -> dict[str, list[bytes]]:
    json_bodies = [json.dumps(doc).encode() for doc in JSON_SEEDS] + [
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [NaN, Infinity, -Infinity, 1]}]}']
    floats = struct.pack("<4f", 1, 2, 3, 4)
    binary = [
        binary_seed([({"name": "x", "datatype": "FP32", "shape": [1, 4]}, floats)]),
        binary_seed([({"name": "x", "datatype": "FP32", "shape": [1, 4]}, floats),
                     ({"name": "s", "datatype": "BYTES", "shape": [1, 2]}, bytes_wire([b"ab", b""]))]),
        binary_seed([({"name": "s", "datatype": "BYTES", "shape": [0, 2**62]}, b"")]),
    ]
    packed = [
        msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": floats}]}),
        msgpack.packb({"id": "m", "parameters": {"priority": 2**63}, "outputs": ["y", {"name": "y2"}],
                       "inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": bytes_wire([b"a", b"b"])}]}),
        msgpack.packb({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [0, 2**62], "data": b""}]}),
    ]
    infer = json_bodies[0]
    http = [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(infer)).encode() + b"\r\n\r\n" + infer,
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(infer):x}".encode() + b"\r\n" + infer + b"\r\n0\r\n\r\n",
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\nExpect: 100-continue\r\n"
        b"Content-Length: " + str(len(packed[0])).encode() + b"\r\n\r\n" + packed[0],
        b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\"",
    ]
    # The first byte of an http input says where its reads are split (targets.fuzz_http).
    # The C++ JSON tensor decoder's edge cases: its result must be the reference's (targets.fuzz_json_diff).
    diff = json_bodies + [
        b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [3], "data": [1.0, -0, 2e0]}]}',
        b'{"inputs": [{"data": [[1, 2], [3]], "name": "x", "datatype": "FP16", "shape": [3]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [9007199254740993, 1e-400]}]}',
        b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [9223372036854775808, true]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [2], "data": [65519.99, 5.9e-08]}]}',
    ]
    # Output tensors for targets.fuzz_reply_diff: (datatype code, name length, name, count, data)...
    reply = [
        bytes([10, 1]) + b"y" + bytes([4]) + struct.pack("<4f", 1.5, float("nan"), float("-inf"), 1e-7),
        bytes([11, 2]) + b"\"\n" + bytes([3]) + struct.pack("<3d", 1e16, -0.0, 5e-324),
        bytes([9, 0, 4]) + struct.pack("<4e", 65504, 6e-8, float("inf"), 0.1),
        bytes([12, 1]) + b"s" + bytes([9]) + "\u00e9\x00\xff".encode() + b"\xff\xc0\x80",
        bytes([0, 1]) + b"b" + bytes([3, 1, 0, 2]) + bytes([128 + 10, 1]) + b"z" + bytes([2]) + bytes(8),
        bytes([4, 1]) + b"u" + bytes([1]) + b"\xff" * 8 + bytes([8, 1]) + b"i" + bytes([1]) + b"\x00" * 7 + b"\x80",
    ]
    return {"json": json_bodies, "json_diff": diff, "reply_diff": reply, "binary": binary, "msgpack": packed,
            "http": [bytes([len(h) // 3]) + h for h in http]}


def main() -> None:
    for target, items in seeds().items():
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for item in items:
            (folder / hashlib.sha1(item).hexdigest()[:16]).write_bytes(item)
        print(f"{folder}: {len(items)} seeds")


if __name__ == "__main__":
    main()

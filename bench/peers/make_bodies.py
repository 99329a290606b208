"""Writes the binary-extension and msgpack bodies for the peers harness, from the same seeded sample
as its ``bodies/v2_<model>.json`` (run inside a copy of the harness, after its make_models.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgpack
import numpy as np

HEADER_BYTES = 192  # one JSON header length for both models, so one content type fits both


def main(peers: Path) -> None:
    for model in ("tiny", "heavy"):
        doc = json.loads((peers / f"bodies/v2_{model}.json").read_text())
        inp = doc["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        header = json.dumps({
            "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }).encode().ljust(HEADER_BYTES)  # JSON allows trailing blanks
        assert len(header) == HEADER_BYTES
        (peers / f"bodies/bin_{model}.bin").write_bytes(header + x.tobytes())
        packed = msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                            "data": x.tobytes()}]})
        (peers / f"bodies/msgpack_{model}.bin").write_bytes(packed)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())

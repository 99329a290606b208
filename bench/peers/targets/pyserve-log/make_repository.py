"""Writes the model repository of the pyserve-log* targets: the harness's tiny and heavy models with
the batching limits of the pyserve target (at most 32 samples, 2 ms delay, 1 instance, onnxruntime
1 thread), and a [payload_log] table at the sample rate asked for (none for "off").

    python make_repository.py PEERS_DIR OUT_DIR {off|default|RATE}

OUT_DIR and OUT_DIR/../payload-log are emptied first, so each run starts with an empty log folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main() -> int:
    peers, out, rate = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    table = {"off": "", "default": "[payload_log]\n"}.get(rate)
    if table is None:
        table = f"[payload_log]\nsample_rate = {float(rate)}\n"
    for folder in (out, out.parent / "payload-log"):
        shutil.rmtree(folder, ignore_errors=True)
    for model in ("tiny", "heavy"):
        (out / model / "1").mkdir(parents=True)
        (out / model / "1" / "model.onnx").symlink_to((peers / "models" / f"{model}.onnx").resolve())
        (out / model / "config.toml").write_text(
            "max_batch_size = 32\ninstance_count = 1\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
            "[onnxruntime]\nintra_op_num_threads = 1\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

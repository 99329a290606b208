"""``pyserve batch`` against in-process ONNX Runtime on the peers harness's heavy MLP (docs/batch.md).

The heavy MLP of the peers harness (``bench/peers`` in the shared workspace, ``make_models.py``:
float32 x [batch, 512] -> Gemm 2048 -> ReLU -> Gemm 2048 -> ReLU -> Gemm 2048 -> ReLU -> Gemm 10,
seeded weights) is built here with the same layer sizes and seed (the few lines it takes, below), or
read from ``--peers-dir``'s ``make_models.py`` when given.

1. Parquet files of ``--round-rows`` and ``--rows`` rows (``id``, ``x``: 512 float32 as a
   fixed-size list), written a row group at a time (``--row-group-rows``), so this script stays small too.
2. Throughput, ``--rounds`` rounds back to back (the machine's load drifts; each round's ratio compares
   runs under about the same load, and the median is quoted), each:
   ONNX Runtime in this process, one session with pyserve's session options at ``--threads`` intra-op
   threads, ``--ort-batches`` batches of ``--batch-size`` rows: rows/s; then ``pyserve batch`` in a child
   process over a file of ``--round-rows`` rows, the model folder configured with the same
   ``max_batch_size``, ``intra_op_num_threads`` and ``instance_count`` (``--instances``): rows/s as its
   summary line says (reading, scoring and writing; not the model's load). Wall clock on a shared,
   loaded machine swings either way between the two runs of a round, so the CPU time per row is
   compared too: ORT's process time over its batches, and the batch job's (user + system, all
   threads: reading, converting and writing included) less that of the same job over 1,024 rows
   (which leaves out the interpreter's start and the model's load).
3. Memory: ``pyserve batch`` over the file of ``--rows`` rows, the child's peak RSS (``getrusage``'s
   ``ru_maxrss``, by ``os.wait4``); then over a file of one row group: its peak RSS is the baseline
   (interpreter, libraries, model, pools). The bound stated is baseline + 4 chunks of input and output
   rows + one row group.

Printed: each round's ratio of batch to ORT rows/s and their median (goal: >= 0.90), and the peak
RSS against the bound.
Run: ``python bench/bench_batch.py`` (about 200 MB of input); the 2 GB case:
``python bench/bench_batch.py --rows 1000000``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HEAVY_DIMS = [512, 2048, 2048, 2048, 10]
HEAVY_SEED = 5678
MIB = 1 << 20
# Rows of the job whose CPU time, subtracted, leaves a round's CPU time per row (model load excluded).
TINY_ROWS = 1024


def heavy_mlp(peers_dir: Path | None) -> bytes:
    """The heavy MLP's ONNX bytes: from ``peers_dir/make_models.py`` when given, else built the same way
    (He-initialised Gemm layers from a seeded generator, ReLU between, opset 17)."""
    if peers_dir is not None:
        spec = importlib.util.spec_from_file_location("make_models", peers_dir / "make_models.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.build("heavy", module.SPECS["heavy"]).SerializeToString()
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(HEAVY_SEED)
    nodes, inits, cur = [], [], "x"
    for i, (din, dout) in enumerate(zip(HEAVY_DIMS[:-1], HEAVY_DIMS[1:])):
        w = (rng.standard_normal((din, dout)) * np.sqrt(2.0 / din)).astype(np.float32)
        b = (rng.standard_normal((dout,)) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(HEAVY_DIMS) - 2
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            cur = f"r{i}"
    graph = helper.make_graph(nodes, "heavy_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_model(folder: Path, onnx_bytes: bytes, batch_size: int, threads: int, instances: int) -> Path:
    model = folder / "heavy"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(onnx_bytes)
    (model / "config.toml").write_text(
        f"max_batch_size = {batch_size}\ninstance_count = {instances}\n"
        f"[onnxruntime]\nintra_op_num_threads = {threads}\n")
    return model


def write_rows(path: Path, rows: int, group: int) -> None:
    """``rows`` rows of (id int64, x 512 float32), seeded, a row group at a time."""
    rng = np.random.default_rng(1)
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), 512))])
    with pq.ParquetWriter(path, schema, compression="none") as w:
        for start in range(0, rows, group):
            n = min(group, rows - start)
            x = rng.standard_normal((n, 512)).astype(np.float32)
            w.write_batch(pa.record_batch(
                [pa.array(np.arange(start, start + n)), pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 512)],
                schema=schema))


def ort_rows_per_s(onnx_bytes: bytes, threads: int, batch_size: int, batches: int) -> tuple[float, float]:
    """(rows per wall second, rows per CPU second of this process) of one ORT session with
    pyserve's session options (pyserve.backends.onnx) at
    ``threads`` intra-op threads, on ``batches`` batches of ``batch_size`` rows."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((batch_size * 16, 512)).astype(np.float32)
    session.run(None, {"x": x[:batch_size]})  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(batches):
        lo = (i % 16) * batch_size
        session.run(None, {"x": x[lo:lo + batch_size]})
    rows = batches * batch_size
    return rows / (time.perf_counter() - start), rows / (time.process_time() - cpu)


def run_batch(model: Path, source: Path, out: Path, chunk_rows: int) -> tuple[float, float, str, float]:
    """(rows/s of the job as its summary says, peak RSS in MiB, summary line, CPU seconds of the whole
    process: user + system, every thread) of ``pyserve batch``."""
    argv = [sys.executable, "-m", "pyserve", "batch", str(model), "--input", str(source), "--output", str(out),
            "--chunk-rows", str(chunk_rows), "--progress", "lines", "--progress-interval-s", "30"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"pyserve batch failed:\n{stderr}")
    sys.stderr.write(stderr)
    m = re.search(r"\(([\d.]+) s, ([\d,]+) rows/s\)", stdout)
    assert m, stdout
    return float(m.group(2).replace(",", "")), usage.ru_maxrss / 1024, stdout.strip(), usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000,
                   help="rows of the memory run's input (2,056 B each; default 100000, about 200 MiB)")
    p.add_argument("--round-rows", type=int, default=20_000,
                   help="rows of each throughput round's input (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds, each ORT then pyserve batch (default 3)")
    p.add_argument("--row-group-rows", type=int, default=8192, help="rows per Parquet row group (default 8192)")
    p.add_argument("--chunk-rows", type=int, default=8192, help="pyserve batch --chunk-rows (default 8192)")
    p.add_argument("--batch-size", type=int, default=32, help="max_batch_size and ORT's batch (default 32)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both (default 1)")
    p.add_argument("--instances", type=int, default=1, help="the model's instance_count (default 1)")
    p.add_argument("--ort-batches", type=int, default=300, help="batches ORT runs per round (default 300)")
    p.add_argument("--peers-dir", type=Path, default=None, help="read the model from DIR/make_models.py")
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-batch-", dir=args.dir) as tmp:
        work = Path(tmp)
        onnx_bytes = heavy_mlp(args.peers_dir)
        model = write_model(work, onnx_bytes, args.batch_size, args.threads, args.instances)
        config = f"batch {args.batch_size}, {args.instances} instance(s) x {args.threads} intra-op thread(s)"
        # Throughput: rounds of ORT then pyserve batch, back to back, so that each ratio compares runs
        # under about the same load of the machine; the median ratio is quoted.
        part, tiny = work / "round.parquet", work / "tiny.parquet"
        write_rows(part, args.round_rows, args.row_group_rows)
        write_rows(tiny, TINY_ROWS, TINY_ROWS)
        walls, cpus = [], []
        for r in range(args.rounds):
            ort, ort_cpu = ort_rows_per_s(onnx_bytes, args.threads, args.batch_size, args.ort_batches)
            rate, _, _, cpu_s = run_batch(model, part, work / "round-out.parquet", args.chunk_rows)
            *_, tiny_cpu_s = run_batch(model, tiny, work / "tiny-out.parquet", args.chunk_rows)
            # CPU seconds per row beyond the model's load and the interpreter's start: the difference
            # of the two jobs, whose only difference is the rows.
            cpu_rate = (args.round_rows - TINY_ROWS) / max(cpu_s - tiny_cpu_s, 1e-9)
            walls.append(rate / ort)
            cpus.append(cpu_rate / ort_cpu)
            print(f"round {r + 1}: onnxruntime {ort:,.0f} rows/s ({ort_cpu:,.0f} rows per CPU s), pyserve batch "
                  f"{rate:,.0f} rows/s ({cpu_rate:,.0f} rows per CPU s): {rate / ort:.1%} by wall clock, "
                  f"{cpu_rate / ort_cpu:.1%} by CPU time", flush=True)
        print(f"throughput ({config}, {args.round_rows:,} rows a round): pyserve batch / onnxruntime in-process = "
              f"{statistics.median(walls):.1%} by wall clock (median of {args.rounds} rounds, min {min(walls):.1%}, "
              f"max {max(walls):.1%}), {statistics.median(cpus):.1%} by CPU time per row (min {min(cpus):.1%}, "
              f"max {max(cpus):.1%}); goal >= 90%", flush=True)
        # Memory: the big file, and a file of one row group for the baseline.
        big, small = work / "rows.parquet", work / "small.parquet"
        part.unlink()
        write_rows(big, args.rows, args.row_group_rows)
        write_rows(small, args.row_group_rows, args.row_group_rows)
        size_mb = big.stat().st_size / MIB
        rate, peak_mb, summary, _ = run_batch(model, big, work / "out.parquet", args.chunk_rows)
        _, base_mb, _, _ = run_batch(model, small, work / "small-out.parquet", args.chunk_rows)
        row_bytes = 512 * 4 + 8 + 10 * 4 + 8  # x, id, y, row_index
        bound_mb = base_mb + (4 * args.chunk_rows + args.row_group_rows) * row_bytes / MIB
        print(summary)
        print(f"memory: peak RSS {peak_mb:,.0f} MiB for {args.rows:,} rows ({size_mb:,.0f} MiB of Parquet); "
              f"baseline (one row group) {base_mb:,.0f} MiB; bound = baseline + 4 chunks + 1 row group of "
              f"{row_bytes:,} B rows = {bound_mb:,.0f} MiB: {'within' if peak_mb <= bound_mb else 'OVER'}")


if __name__ == "__main__":
    main()

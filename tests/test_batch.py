"""``pyserve batch``: every input format scored as the server answers, failed rows in the errors file
and the counts adding up, memory bounded on an input far larger than a chunk, clear refusals."""

from __future__ import annotations

import ast
import asyncio
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import Repo

from pyserve import cli


def _need(module: str) -> ModuleType:
    """``module``, or a skip when it is missing, except under CI (which installs it: then a failure)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


pa = _need("pyarrow")
pq = _need("pyarrow.parquet")
_need("onnxruntime")

ROWS = 300
WIDTH = 4


def online(models: Path, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """What the service answers for each row of ``x`` (one request per row, as online clients send)."""
    from pyserve.protocol import InferRequest
    from pyserve.service import InferenceService, ModelHost

    async def main() -> dict[str, np.ndarray]:
        async with ModelHost(models) as host:
            service = InferenceService(host)
            answers = [await service.infer(name, None, InferRequest({"x": x[i:i + 1]})) for i in range(len(x))]
        return {k: np.concatenate([a.outputs[k] for a in answers]) for k in answers[0].outputs}

    return asyncio.run(main())


def features(rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((rows, WIDTH)).astype(np.float32)


def write_input(fmt: str, path: Path, x: np.ndarray, ids: np.ndarray) -> list[str]:
    """``x`` and a key column ``id`` as ``fmt``; the extra flags that map its columns to input x."""
    if fmt == "parquet":
        pq.write_table(pa.table({"id": ids, "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH)}),
                       path, row_group_size=64)
        return []
    if fmt == "csv":  # one column per feature, assembled into the 2-D input
        header = "id," + ",".join(f"f{j}" for j in range(WIDTH))
        lines = [header] + [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in zip(ids, x)]
        path.write_text("\n".join(lines) + "\n")
        return ["--columns", "x=f*"]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": int(i), "x": row.tolist()}) + "\n" for i, row in zip(ids, x)))
        return []
    if fmt == "npy":
        np.save(path, x)
        return ["--columns", f"x={path.stem}"]
    np.savez(path, x=x, id=ids)
    return ["--key", "id"]


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path).to_pylist()
    return pq.read_table(path).to_pylist()


def batch(*argv: Any) -> int:
    return cli.main(["batch", *map(str, argv), "--progress", "none"])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "npy", "npz"])
def test_every_format_is_scored_as_online(repo: Repo, tmp_path: Path, fmt: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = repo.onnx("affine", {1: 2.0}, config="max_batch_size = 8\n")
    x, ids = features(), np.arange(ROWS, dtype=np.int64) + 1000
    source = tmp_path / f"rows.{fmt}"
    flags = write_input(fmt, source, x, ids)
    out_suffix = {"csv": ".csv", "jsonl": ".jsonl"}.get(fmt, ".parquet")
    out = tmp_path / f"scores{out_suffix}"
    # Small chunks: several chunks, and requests that cross no chunk boundary.
    assert batch(model, "--input", source, "--output", out, "--chunk-rows", 50, *flags) == 0
    assert f"{ROWS} input rows = {ROWS} output rows + 0 error rows" in capsys.readouterr().out
    expected = online(repo.root, "affine", x)
    rows = read_rows(out)
    assert [r["row_index"] for r in rows] == list(range(ROWS))
    if fmt != "npy":
        assert [r["id"] for r in rows] == ids.tolist()
    y = np.array([[r[f"y_{j}"] for j in range(WIDTH)] for r in rows] if fmt == "csv" else [r["y"] for r in rows])
    np.testing.assert_allclose(y, expected["y"], rtol=1e-6)
    assert [r["argmax"] for r in rows] == expected["argmax"].tolist()
    assert read_rows(tmp_path / f"scores.errors{out_suffix}") == []


BAD_MODEL = """
import numpy as np
from pyserve.errors import invalid

class Model:
    def __init__(self, version_dir):
        pass

    def infer(self, inputs):
        x = inputs["x"]
        if (x[:, 0] < -100).any():
            raise invalid("x[0] below -100")
        return {"y": x * 2}
"""

BAD_CONFIG = """
backend = "python"
max_batch_size = 16
[[inputs]]
name = "x"
datatype = "FP32"
shape = [4]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [4]
"""


def test_failed_rows_go_to_the_errors_file(repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad values (text, empty, NaN) fail in the conversion, rows the model refuses are isolated by
    halving their request: each bad row alone in the errors file, with its key and message, and the
    good rows of the same request answered."""
    model = repo.python("picky", BAD_MODEL, BAD_CONFIG)
    x = features(100)
    text = [[repr(float(v)) for v in row] for row in x]
    text[3][1] = "abc"
    text[10][0] = ""
    text[11][2] = "nan"
    text[20][0] = "-500"  # the model refuses it
    text[21][0] = "-700"  # in the same request of 16
    source = tmp_path / "rows.csv"
    source.write_text("key,a,b,c,d\n" + "".join(f"k{i}," + ",".join(r) + "\n" for i, r in enumerate(text)))
    out = tmp_path / "out.parquet"
    errors = tmp_path / "bad.jsonl"
    assert batch(model, "-i", source, "-o", out, "--errors", errors, "--columns", "x=a,b,c,d") == 0
    assert "100 input rows = 95 output rows + 5 error rows" in capsys.readouterr().out
    bad = read_rows(errors)
    assert [(r["row_index"], r["key"]) for r in bad] == [(3, "k3"), (10, "k10"), (11, "k11"), (20, "k20"), (21, "k21")]
    assert "column 'b'" in bad[0]["error"] and "abc" in bad[0]["error"]
    assert "column 'a'" in bad[1]["error"]
    assert "NaN" in bad[2]["error"]
    assert "x[0] below -100" in bad[3]["error"] and "x[0] below -100" in bad[4]["error"]
    good = read_rows(out)
    assert sorted(r["row_index"] for r in good) == sorted(set(range(100)) - {3, 10, 11, 20, 21})
    np.testing.assert_allclose([r["y"] for r in good if r["row_index"] == 22], x[22:23] * 2, rtol=1e-6)
    # --fail-on-error: the same job exits 1; --nan allow lets the NaN row through to the model.
    assert batch(model, "-i", source, "-o", out, "--errors", errors, "--columns", "x=a,b,c,d",
                 "--fail-on-error", "--nan", "allow") == 1
    assert "100 input rows = 96 output rows + 4 error rows" in capsys.readouterr().out


def test_refusals_name_what_is_wrong(repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo.onnx("affine")
    x = features(10)
    source = tmp_path / "rows.npy"
    np.save(source, x)
    np.savez(tmp_path / "keyed.npz", x=x, id=np.arange(20).reshape(10, 2))
    pq.write_table(pa.table({"meta": pa.array([{"a": i} for i in range(10)]),
                             "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH)}),
                   tmp_path / "struct.parquet")
    out = tmp_path / "out.parquet"
    cases = [
        ((repo.root / "affine", "-i", source, "-o", out), "model input 'x' has no column of that name"),
        ((repo.root, "-i", source, "-o", out), "is a model repository: name the model with --model-name"),
        ((repo.root / "affine", "-i", tmp_path / "rows.xlsx", "-o", out), "unknown format '.xlsx'"),
        ((repo.root / "affine", "-i", source, "-o", tmp_path / "o.npz", "--columns", "x=rows"), "cannot write '.npz'"),
        ((repo.root / "affine", "-i", source, "-o", out, "--columns", "z=rows"), "has no input 'z'"),
        ((tmp_path / "model.bin", "-i", source, "-o", out), "no such model folder"),
        # --split-outputs splits outputs only: the refusal of a list key column must not suggest it.
        ((repo.root / "affine", "-i", tmp_path / "keyed.npz", "-o", tmp_path / "o.csv", "--split-outputs"),
         f"--output {tmp_path / 'o.csv'}: key column 'id' holds lists (fixed_size_list<item: int64>[2]), which CSV "
         "cannot; write .parquet or .jsonl, or choose other key columns with --key"),
        ((repo.root / "affine", "-i", tmp_path / "struct.parquet", "-o", tmp_path / "o.csv"),
         f"--output {tmp_path / 'o.csv'}: key column 'meta' holds structs (struct<a: int64>), which CSV cannot"),
        ((repo.root / "affine", "-i", source, "-o", tmp_path / "absent" / "o.parquet", "--columns", "x=rows"),
         f"--output {tmp_path / 'absent' / 'o.parquet'}: cannot write it: the folder {tmp_path / 'absent'} does not exist"),
    ]
    for argv, message in cases:
        assert batch(*argv) == 2, message
        assert message in capsys.readouterr().err
    assert batch(repo.root, "--model-name", "affine", "-i", source, "-o", out, "--columns", "x=rows") == 0


def test_progress_lines_have_rate_and_time_left() -> None:
    from pyserve.batch.progress import Progress

    plain = io.StringIO()
    p = Progress(1000, "rows", stream=plain, tty=False, interval_s=0)
    p.start_s = 0.0
    assert p.line(250, 250, 5.0) == "250/1,000 rows [######..................]  25% 50 rows/s, 15s left"
    p.update(1000, 1000, final=True)
    assert plain.getvalue().startswith("pyserve batch: 1,000/1,000 rows") and plain.getvalue().endswith("\n")
    tty = io.StringIO()
    Progress(4096, "bytes", stream=tty, tty=True).update(1024, 10, final=True)
    assert tty.getvalue().startswith("\r\x1b[2K10 rows, 25% of the bytes")


def test_artifact_runs_as_its_folder(repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An artifact of the model is scored as its folder is (runs once pyserve.artifact is merged)."""
    pytest.importorskip("pyserve.artifact")
    model = repo.onnx("affine", {1: 3.0}, config="max_batch_size = 8\n")
    artifact = tmp_path / "affine.pyserve"
    assert cli.main(["package", str(model), "-o", str(artifact)]) == 0
    x = features(40)
    source = tmp_path / "x.npy"
    np.save(source, x)
    for target, out in ((model, tmp_path / "a.parquet"), (artifact, tmp_path / "b.parquet")):
        assert batch(target, "-i", source, "-o", out, "--columns", "x=x", "--lock-policy", "warn") == 0
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


@pytest.mark.slow
def test_memory_stays_bounded_on_a_large_input(repo: Repo, tmp_path: Path) -> None:
    """A Parquet input of ~190 MB of features, scored in chunks of 4096 rows (2 MB): the job's peak
    RSS beyond that of the same job on a small file stays under 96 MB, half the input's size (reading
    it whole would cost the whole input, and more for the output)."""
    width, group = 128, 8192
    rows = 48 * group
    model = repo.identity("echo", [("x", "FP32", [width])], max_batch_size=32)
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    rng = np.random.default_rng(1)
    for path, n in ((big, rows), (small, group)):
        schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), width))])
        with pq.ParquetWriter(path, schema, compression="none") as w:
            for start in range(0, n, group):
                x = rng.standard_normal((group, width)).astype(np.float32)
                w.write_batch(pa.record_batch([pa.array(np.arange(start, start + group)),
                                               pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), width)],
                                              schema=schema))
    assert big.stat().st_size > 180e6

    def peak_rss_mb(path: Path) -> float:
        argv = [sys.executable, "-m", "pyserve", "batch", str(model), "-i", str(path), "-o",
                str(tmp_path / "out.parquet"), "--columns", "in_x=x", "--chunk-rows", "4096", "--progress", "none"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert "+ 0 error rows" in out
        return usage.ru_maxrss / 1024  # kB on Linux

    base = peak_rss_mb(small)
    peak = peak_rss_mb(big)
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_rows == rows
    print(f"peak RSS {peak:.0f} MB, small job {base:.0f} MB")
    assert peak - base < 96, f"peak RSS {peak:.0f} MB, {peak - base:.0f} MB above the small job's {base:.0f} MB"


@pytest.mark.parametrize("chunk_rows", [4, 1000])
def test_bad_values_inside_list_columns(repo: Repo, tmp_path: Path, chunk_rows: int,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A null, a NaN or a wrong length inside a row's list fails that row only, whichever chunk
    (and offset within a chunk) it falls in."""
    model = repo.onnx("affine", config="max_batch_size = 8\n")
    x = features(12).tolist()
    x[2][1] = None
    x[5][3] = float("nan")
    x[7] = x[7][:3]
    x[9] = None
    x[10][0] = "1.5"  # a JSON-ish text value: pyarrow reads the list as text, converted per value
    x[11][2] = "abc"
    source = tmp_path / "rows.parquet"
    text = [None if r is None else [None if v is None else str(v) for v in r] for r in x]
    pq.write_table(pa.table({"id": list(range(12)), "x": text}), source)
    errors = tmp_path / "out.errors.jsonl"
    assert batch(model, "-i", source, "-o", tmp_path / "out.jsonl", "--chunk-rows", chunk_rows) == 0
    assert "12 input rows = 7 output rows + 5 error rows" in capsys.readouterr().out
    bad = read_rows(errors)
    assert [r["id"] for r in bad] == [2, 5, 7, 9, 11]
    assert ["null value" in bad[0]["error"], "NaN" in bad[1]["error"], "holds 3 values, expected 4" in bad[2]["error"],
            "is null" in bad[3]["error"], "abc" in bad[4]["error"]] == [True] * 5


def _normal(line: str) -> str:
    """A line of output without what varies between runs: times and rates."""
    line = re.sub(r"\([\d.]+ s, [\d,]+ rows/s\)", "(T)", line)
    return re.sub(r"[\d,]+ rows/s", "R rows/s", line)


def test_readme_batch_example_is_a_real_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `pyserve batch` block, run again: the demo's digits model, the CSV made by the
    script of docs/batch.md, each command's output as the README shows it (times and rates aside;
    floats to 1e-5)."""
    _need("sklearn")
    _need("skl2onnx")
    from pyserve.demo.train_digits import train_digits

    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("\n## Batch scoring\n")[1].split("\n## ")[0]
    block = section.split("```\n")[1]
    script = (root / "docs" / "batch.md").read_text().split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    train_digits(tmp_path / "models", seed=0)
    exec(compile(script, "docs/batch.md", "exec"), {})  # noqa: S102 - the docs' own script
    commands: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif line.strip():
            commands[-1][1].append(line)
    assert [c.split()[:2] for c, _ in commands][0] == ["pyserve", "batch"]
    for command, expected in commands:
        argv = shlex.split(command)
        if argv[:2] == ["pyserve", "batch"]:
            assert cli.main(argv[1:]) == 0
            got = capsys.readouterr()
            assert [_normal(x) for x in (got.err + got.out).splitlines()] == [_normal(x) for x in expected]
        elif argv[0] == "cat":
            assert Path(argv[1]).read_text().splitlines() == expected, command
        else:
            assert argv[:2] == ["python", "-c"], command
            out = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True, check=True).stdout
            got_rows, want_rows = ast.literal_eval(out.strip()), ast.literal_eval(" ".join(expected))
            assert [{k: v for k, v in r.items() if k != "probabilities"} for r in got_rows] == \
                [{k: v for k, v in r.items() if k != "probabilities"} for r in want_rows]
            np.testing.assert_allclose([r["probabilities"] for r in got_rows],
                                       [r["probabilities"] for r in want_rows], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_job_stopped_half_way_leaves_no_output(repo: Repo, tmp_path: Path, fmt: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV row with too few fields after the first chunks were scored and written: exit 2 naming the
    file and row, no traceback, and neither the output nor the errors file left (an older output of
    the same name kept as it was), nor a temporary file."""
    import pyarrow.csv as pcsv

    model = repo.onnx("affine", {1: 2.0}, config="max_batch_size = 8\n")
    x = features(150_000)  # 7 MB: two CSV blocks of pyarrow's (4 MiB), so the bad row is read late
    lines = [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(x)]
    lines[-10] = f"{len(x) - 10},1.0"
    source = tmp_path / "rows.csv"
    source.write_text("id," + ",".join(f"f{j}" for j in range(WIDTH)) + "\n" + "\n".join(lines) + "\n")
    with pcsv.open_csv(source) as r:  # pyarrow reads the first block, and refuses the file later
        assert r.read_next_batch().num_rows < len(x)
        with pytest.raises(pa.ArrowInvalid):
            r.read_all()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"scores.{fmt}"
    out.write_text("an older output\n")
    assert batch(model, "-i", source, "-o", out, "--columns", "x=f*", "--chunk-rows", 20_000) == 2
    err = capsys.readouterr().err
    assert f"--input {source}: cannot read it as csv" in err and "Expected 5 columns, got 2" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]
    assert out.read_text() == "an older output\n"


def test_jsonl_lines_of_the_wrong_kind_fail_alone(repo: Repo, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A block of JSON Lines with lines that are not JSON, not objects, or whose ``x`` is text, an object
    or a list of the wrong kind: each such line is one failed row naming the field, and the good lines
    of the same block are scored (one bad value used to turn the field into text and refuse the job)."""
    model = repo.onnx("affine", {1: 2.0}, config="max_batch_size = 8\n")
    x = features(6)
    good = [json.dumps({"id": i, "x": row.tolist()}) for i, row in enumerate(x)]
    bad = {"not json": "not json at all", "a list line": "[1, 2, 3]",
           "x text": json.dumps({"id": 101, "x": "hello"}), "x object": json.dumps({"id": 102, "x": {"a": 1}}),
           "x texts": json.dumps({"id": 103, "x": ["a", "b", "c", "d"]})}
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(good[:3] + list(bad.values()) + good[3:]) + "\n")
    out, errors = tmp_path / "out.jsonl", tmp_path / "bad.jsonl"
    assert batch(model, "-i", source, "-o", out, "--errors", errors, "--key", "id") == 0
    assert "11 input rows = 6 output rows + 5 error rows" in capsys.readouterr().out
    np.testing.assert_allclose([r["y"] for r in read_rows(out)], online(repo.root, "affine", x)["y"], rtol=1e-6)
    failed = {r["row_index"]: r for r in read_rows(errors)}
    assert sorted(failed) == [3, 4, 5, 6, 7]
    assert "not a JSON line" in failed[3]["error"]
    assert "expected a JSON object, got list" in failed[4]["error"]
    assert failed[5]["id"] == 101 and "field 'x': expected a list" in failed[5]["error"] and "a scalar" in failed[5]["error"]
    assert failed[6]["id"] == 102 and "got an object" in failed[6]["error"]
    assert failed[7]["id"] == 103 and "field 'x'" in failed[7]["error"]

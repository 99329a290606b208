"""Drift detection (docs/drift.md): the tests on the profile's sketch, profiles from every source,
``[drift]``, the monitor fed by the payload log, and the gauges and ``GET /v2/drift`` of a live server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import requests
from conftest import Repo, wait_until
from prometheus_client import CollectorRegistry

from pyserve import cli
from pyserve.config import ConfigError, load_model_config
from pyserve.drift import build, stats
from pyserve.drift.monitor import DriftMonitor, FeatureDrift
from pyserve.drift.profile import (
    PROFILE_FILE,
    QUANTILE_PROBS,
    CategoricalFeature,
    NumericalFeature,
    describe,
    read_profile,
    write_profile,
)
from pyserve.drift.server import make_monitor
from pyserve.errors import PyserveError
from pyserve.payload_log import PayloadLog, PayloadLogSettings
from pyserve.protocol import InferRequest
from pyserve.service import InferenceService, ModelHost

WIDTH = 8
MODEL = """
import numpy as np

class Model:
    def infer(self, inputs):
        x = inputs["x"]
        return {"score": x.sum(axis=1, keepdims=True), "label": (x[:, :1] > 0).astype(np.int64)}
"""


def config(drift: str = "window_rows = 200\n", log: str = "[payload_log]\nsample_rate = 1.0\n") -> str:
    return f"""backend = "python"
max_batch_size = 16
[[inputs]]
name = "x"
datatype = "FP32"
shape = [{WIDTH}]
[[inputs]]
name = "color"
datatype = "BYTES"
shape = [1]
[[outputs]]
name = "score"
datatype = "FP32"
shape = [1]
[[outputs]]
name = "label"
datatype = "INT64"
shape = [1]
{log}
[drift]
{drift}"""


COLORS = np.array(["red", "green", "blue"], dtype=object)
COLOR_P = [0.5, 0.3, 0.2]


def rows(rng: np.random.Generator, n: int, shift: dict[int, float] | None = None,
         colors: list[float] = COLOR_P) -> dict[str, np.ndarray]:
    """``n`` rows: x[:, i] ~ N(i, 1) (shifted by ``shift[i]``), color drawn with shares ``colors``."""
    x = rng.standard_normal((n, WIDTH)) + np.arange(WIDTH)
    for i, by in (shift or {}).items():
        x[:, i] += by
    return {"x": x.astype(np.float32), "color": rng.choice(COLORS, size=n, p=colors).reshape(n, 1)}


def model_repo(repo: Repo, drift: str = "window_rows = 200\n", log: str = "[payload_log]\nsample_rate = 1.0\n",
               train_rows: int = 5000) -> Path:
    """The model ``m`` with a profile built from seeded training rows (and its outputs)."""
    model_dir = repo.python("m", MODEL, config(drift, log))
    train = rows(np.random.default_rng(0), train_rows)
    table = pa.table({**{f"f{i}": train["x"][:, i] for i in range(WIDTH)}, "color": train["color"][:, 0]})
    pq.write_table(table, repo.root.parent / "train.parquet")
    assert cli.main(["profile", str(model_dir), "--data", str(repo.root.parent / "train.parquet"), "--outputs"]) == 0
    return model_dir


# -- the tests on the sketch ----------------------------------------------------------------------

def normal_feature(rng: np.random.Generator, n: int = 20_000) -> NumericalFeature:
    feature = describe("f", rng.standard_normal(n))
    assert isinstance(feature, NumericalFeature)
    return feature


def test_ks_flags_a_half_sd_shift_and_holds_its_level_on_the_reference_distribution() -> None:
    rng = np.random.default_rng(1)
    feature = normal_feature(rng)
    p_null = np.array([stats.ks_test(feature, rng.standard_normal(500)) for _ in range(400)])
    # Calibrated: about 5% of windows under p = 0.05 (a test against a wrong CDF would flag far more).
    assert 0.01 <= (p_null < 0.05).mean() <= 0.09
    assert stats.ks_test(feature, rng.standard_normal(500) + 0.5) < 1e-6


def test_ks_of_many_features_at_once_agrees_with_scipy() -> None:
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(8)
    features = [describe(f"f{j}", rng.normal(j, 1 + j, 50_000)) for j in range(5)]
    window = np.stack([rng.normal(j + 0.1 * j, 1 + j, 400) for j in range(5)], axis=1)
    d = stats.ks_statistics(features, window)
    p = stats.ks_tests(features, window)
    for j, f in enumerate(features):
        one = scipy_stats.kstest(window[:, j], lambda x, f=f: stats.reference_cdf(f, x))  # continuous data
        assert d[j] == pytest.approx(one.statistic, rel=1e-12)
        exact = scipy_stats.kstwo.sf(d[j], round(400 * 50_000 / 50_400))
        assert p[j] == pytest.approx(exact, rel=0.05, abs=0.01)  # Stephens' approximation


def test_ks_counts_atoms_of_a_discrete_feature_as_jumps() -> None:
    rng = np.random.default_rng(2)
    feature = describe("n", rng.poisson(10, 20_000).astype(np.int64))
    assert isinstance(feature, NumericalFeature)  # more than 5 distinct integers: numerical
    p_null = np.array([stats.ks_test(feature, rng.poisson(10, 300).astype(np.float64)) for _ in range(100)])
    assert (p_null < 0.05).mean() <= 0.1  # conservative for discrete data, never anti-conservative
    assert stats.ks_test(feature, rng.poisson(11, 300).astype(np.float64)) < 1e-3


def test_wasserstein_is_the_shift_in_reference_sds() -> None:
    rng = np.random.default_rng(3)
    feature = describe("f", rng.normal(5, 2, 20_000))
    assert stats.wasserstein(feature, rng.normal(5, 2, 5000)) < 0.1
    assert stats.wasserstein(feature, rng.normal(6, 2, 5000)) == pytest.approx(0.5, abs=0.05)
    assert stats.psi_numerical(feature, rng.normal(5, 2, 5000)) < 0.02
    assert stats.psi_numerical(feature, rng.normal(6, 2, 5000)) > 0.1


def test_categorical_methods_see_a_change_of_shares_and_new_values() -> None:
    rng = np.random.default_rng(4)
    feature = describe("c", rng.choice(COLORS, 10_000, p=COLOR_P))
    assert isinstance(feature, CategoricalFeature) and set(feature.values) == {"red", "green", "blue"}
    same = rng.choice(COLORS, 2000, p=COLOR_P)
    moved = rng.choice(COLORS, 2000, p=[0.3, 0.3, 0.4])
    assert stats.chisquare_test(feature, same) > 0.01 and stats.chisquare_test(feature, moved) < 1e-6
    assert stats.jensenshannon(feature, same) < 0.05 and stats.jensenshannon(feature, moved) > 0.1
    assert stats.psi_categorical(feature, same) < 0.01 and stats.psi_categorical(feature, moved) > 0.1
    new = np.concatenate([same[:1900], np.array(["violet"] * 100, dtype=object)])
    assert stats.chisquare_test(feature, new) < 1e-6


def test_auto_takes_a_p_value_test_below_1000_rows_and_a_distance_from_there() -> None:
    assert [stats.choose("numerical", n) for n in (999, 1000)] == ["ks", "wasserstein"]
    assert [stats.choose("categorical", n) for n in (999, 1000)] == ["chisquare", "jensenshannon"]
    assert stats.choose("numerical", 10, numerical_method="psi") == "psi"


def test_corrections_of_the_p_value_cutoff() -> None:
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.6])
    assert stats.p_value_cutoffs(p, 0.05, "bonferroni") == pytest.approx(0.01)
    assert stats.p_value_cutoffs(p, 0.05, "benjamini-hochberg") == pytest.approx(0.02)  # k = 2
    assert stats.p_value_cutoffs(p, 0.05, "none") == 0.05


# -- profiles -------------------------------------------------------------------------------------

def training(n: int = 3000) -> dict[str, np.ndarray]:
    data = rows(np.random.default_rng(5), n)
    data["small"] = np.random.default_rng(6).integers(0, 3, n)  # 3 distinct integers: categorical
    return data


def check_x(profile: Any, names: list[str]) -> None:
    x = profile.tensor("x", "input")
    assert x.layout == "columns" and [f.name for f in x.features] == names
    f2 = x.features[2]
    assert isinstance(f2, NumericalFeature) and f2.count == 3000
    assert f2.mean == pytest.approx(2.0, abs=0.1) and f2.std == pytest.approx(1.0, abs=0.1)
    assert f2.quantiles.size == QUANTILE_PROBS.size and f2.quantiles[0] == f2.min
    color = profile.tensor("color", "input").features[0]
    assert isinstance(color, CategoricalFeature) and color.count == 3000
    assert color.values["red"] / 3000 == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_profile_from_a_table_maps_columns_to_inputs(repo: Repo, tmp_path: Path, fmt: str) -> None:
    model_dir = repo.python("m", MODEL, config())
    data = training()
    table = pa.table({**{f"f{i}": data["x"][:, i] for i in range(WIDTH)}, "color": data["color"][:, 0]})
    path = tmp_path / f"train.{fmt}"
    pq.write_table(table, path) if fmt == "parquet" else pacsv.write_csv(table, path)
    cfg = load_model_config(model_dir)
    profile = build.build_profile(cfg, 1, build.read_data(path, cfg), path.name)
    check_x(profile, [f"f{i}" for i in range(WIDTH)])  # the columns no other input took, in order
    # --columns picks and orders them; a list column is a vector input too.
    reordered = build.read_data(path, cfg, {"x": [f"f{i}" for i in reversed(range(WIDTH))]})
    assert np.array_equal(reordered.inputs["x"][:, 0].astype(np.float32), data["x"][:, WIDTH - 1])
    listed = tmp_path / "listed.parquet"
    pq.write_table(pa.table({"x": list(data["x"]), "color": data["color"][:, 0]}), listed)
    check_x(build.build_profile(cfg, 1, build.read_data(listed, cfg), "listed"), [str(i) for i in range(WIDTH)])


def test_a_profile_from_npz_npy_and_golden_samples(repo: Repo, tmp_path: Path) -> None:
    model_dir = repo.python("m", MODEL, config())
    cfg = load_model_config(model_dir)
    data = training()
    np.savez(tmp_path / "train.npz", **{"inputs/x": data["x"], "color": data["color"].astype(str)})
    check_x(build.build_profile(cfg, 1, build.read_data(tmp_path / "train.npz", cfg), "npz"),
            [str(i) for i in range(WIDTH)])
    np.savez(model_dir / "1" / "golden.npz", **{"inputs/x": data["x"][:40], "inputs/color": data["color"][:40]
                                                .astype(str), "outputs/score": data["x"][:40].sum(1, keepdims=True)})
    golden = build.build_profile(cfg, 1, build.golden_data(model_dir / "1", cfg), "golden")
    assert golden.rows == 40 and golden.tensor("score", "output").features[0].count == 40
    repo.python("one", MODEL.replace('inputs["x"]', 'inputs["x"]'), config().replace(
        '[[inputs]]\nname = "color"\ndatatype = "BYTES"\nshape = [1]\n', ""))
    one = load_model_config(repo.root / "one")
    np.save(tmp_path / "x.npy", data["x"])
    profile = build.build_profile(one, 1, build.read_data(tmp_path / "x.npy", one), "npy")
    assert profile.tensor("x", "input").features[5].count == 3000
    with pytest.raises(PyserveError, match="an NPY file holds one array, but the model has 2 inputs"):
        build.read_data(tmp_path / "x.npy", cfg)


def test_table_errors_name_the_input_and_the_columns(repo: Repo, tmp_path: Path) -> None:
    cfg = load_model_config(repo.python("m", MODEL, config()))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "color": ["red", "blue"]}), path)
    with pytest.raises(PyserveError, match=r"input 'x' takes 8 columns, but 1 are left \(a\)"):
        build.read_data(path, cfg)
    with pytest.raises(PyserveError, match=r"--columns x: no column\(s\) zz"):
        build.read_data(path, cfg, {"x": ["a", "zz"]})
    with pytest.raises(PyserveError, match="expected a .parquet, .csv, .npy or .npz file"):
        build.read_data(tmp_path / "t.txt", cfg)


def test_infinities_in_the_data_are_left_out_like_nan() -> None:
    values = np.concatenate([np.arange(100, dtype=np.float64), [np.inf, -np.inf, np.nan]])
    feature = describe("f", values)
    assert isinstance(feature, NumericalFeature) and feature.count == 100
    assert (feature.min, feature.max) == (0.0, 99.0) and np.isfinite(feature.mean) and np.isfinite(feature.std)
    with pytest.raises(ValueError, match="no values"):
        describe("g", np.array([np.inf, np.nan]))


def test_kinds_follow_evidently_and_can_be_forced() -> None:
    rng = np.random.default_rng(7)
    assert describe("i", rng.integers(0, 5, 100)).kind == "categorical"  # <= 5 distinct numbers
    assert describe("i", rng.integers(0, 50, 1000)).kind == "numerical"
    assert describe("i", rng.integers(0, 50, 1000), output=True).kind == "categorical"  # a class id
    assert describe("b", rng.random(100) > 0.5).kind == "categorical"
    assert describe("f", rng.random(100), kind="categorical").kind == "categorical"


def test_the_profile_file_reads_back_what_was_written(repo: Repo, tmp_path: Path) -> None:
    cfg = load_model_config(repo.python("m", MODEL, config()))
    data = build.Data()
    data.inputs.update(training())
    data.inputs.pop("small")
    profile = build.build_profile(cfg, 1, data, "mem")
    write_profile(profile, tmp_path / PROFILE_FILE)
    back = read_profile(tmp_path / PROFILE_FILE)
    assert back == profile  # every field but the quantiles and values (not compared by ==)
    for a, b in zip(back.tensors, profile.tensors):
        for fa, fb in zip(a.features, b.features):
            if isinstance(fa, NumericalFeature):
                assert np.allclose(fa.quantiles, fb.quantiles, rtol=1e-9)
            else:
                assert fa.values == fb.values
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(PyserveError, match="bad.json: not a drift profile: format"):
        read_profile(tmp_path / "bad.json")
    for text in ("[]", '"x"', "3", "null"):  # valid JSON, not an object: the same plain error
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(PyserveError, match="bad.json: not a drift profile: expected a JSON object"):
            read_profile(tmp_path / "bad.json")


def test_pyserve_profile_runs_the_model_for_its_outputs(repo: Repo, capsys: pytest.CaptureFixture) -> None:
    model_dir = model_repo(repo)
    out = capsys.readouterr().out
    assert f"{model_dir / '1' / PROFILE_FILE}: 5000 rows, 11 features" in out
    profile = read_profile(model_dir / "1" / PROFILE_FILE)
    score = profile.tensor("score", "output").features[0]
    assert isinstance(score, NumericalFeature)
    assert score.mean == pytest.approx(sum(range(WIDTH)), abs=0.2)  # the model's sum of x
    label = profile.tensor("label", "output").features[0]
    assert isinstance(label, CategoricalFeature) and set(label.values) == {0, 1}
    assert cli.main(["profile", str(model_dir), "--golden"]) == 2  # the version has no golden.npz
    assert "golden.npz: no golden samples" in capsys.readouterr().err
    missing = model_dir / "no-such-folder" / "p.json"  # a one-line error, not a traceback
    train = str(repo.root.parent / "train.parquet")
    assert cli.main(["profile", str(model_dir), "--data", train, "--output", str(missing)]) == 2
    assert f"--output {missing}: no folder" in capsys.readouterr().err
    for bad, message in ((["--numerical", "x:nosuchfeat"], "--numerical x:nosuchfeat: tensor 'x' has no feature"),
                         (["--numerical", "x:f1", "--categorical", "x:f1"], "also given as --numerical"),
                         (["--columns", "x=f0,f0"], "column f0 given more than once")):
        assert cli.main(["profile", str(model_dir), "--data", train, *bad]) == 2
        assert message in capsys.readouterr().err
    np.save(repo.root.parent / "x.npy", np.zeros((10, WIDTH), dtype=np.float32))
    assert cli.main(["profile", str(model_dir), "--data", str(repo.root.parent / "x.npy"), "--columns", "x=a,b"]) == 2
    assert "--columns: only for a Parquet or CSV file" in capsys.readouterr().err
    short = repo.root.parent / "short.npz"  # x one column short
    np.savez(short, x=np.zeros((10, WIDTH - 1), dtype=np.float32), color=np.array([["red"]] * 10))
    assert cli.main(["profile", str(model_dir), "--data", str(short)]) == 2
    assert f"input 'x' takes rows of {WIDTH} values, got {WIDTH - 1}" in capsys.readouterr().err


# -- [drift] ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("drift, message", [
    ("window_row = 10", "drift.window_row: unknown key (did you mean 'window_rows'?)"),
    ("window_rows = 5", "drift.window_rows: expected an integer >= 10, got 5"),
    ("window_rows = 100\nmin_rows = 200", "drift.min_rows: expected at most window_rows (100), got 200"),
    ("window_s = 0", "drift.window_s: expected a number of seconds > 0, got 0"),
    ("numerical_method = \"kss\"", "drift.numerical_method: expected one of auto, ks, wasserstein, psi, got 'kss'"),
    ("correction = \"holm\"", "drift.correction: expected one of bonferroni, benjamini-hochberg, none"),
    ("thresholds = { kss = 0.1 }", "drift.thresholds.kss: unknown key (did you mean 'ks'?)"),
    ("thresholds = { ks = 2 }", "drift.thresholds.ks: expected a significance level in (0, 1], got 2"),
    ("inputs = [\"y\"]", "drift.inputs[0]: expected an input of the model (color, x), got 'y'"),
    ("outputs = [\"x\"]", "drift.outputs[0]: expected an output of the model (label, score), got 'x'"),
    ("max_features = 0", "drift.max_features: expected an integer >= 1, got 0"),
    ("enabled = 1", "drift.enabled: expected true or false, got 1"),
])
def test_drift_config_errors(repo: Repo, drift: str, message: str) -> None:
    model_dir = repo.python("m", MODEL, config(drift))
    with pytest.raises(ConfigError) as e:
        load_model_config(model_dir)
    assert message in e.value.message


def test_drift_config_values(repo: Repo) -> None:
    cfg = load_model_config(repo.python("m", MODEL, config(
        'window_rows = 300\ncorrection = "none"\nthresholds = { ks = 0.01, psi = 0.2 }\noutputs = []\n')))
    assert cfg.drift.enabled and cfg.drift.window_rows == 300 and cfg.drift.outputs == ()
    assert cfg.drift.threshold("ks") == 0.01 and cfg.drift.threshold("psi") == 0.2
    assert cfg.drift.threshold("wasserstein") == 0.1  # the defaults stay for the others
    assert not load_model_config(repo.python("q", MODEL, config("enabled = false\n"))).drift.enabled
    small = load_model_config(repo.python("s", MODEL, config("window_rows = 20\n"))).drift
    assert small.window_rows == 20 and small.min_rows == 20  # the default min_rows follows a small window
    assert load_model_config(repo.python("b", MODEL, config("window_rows = 1000\n"))).drift.min_rows == 100


# -- the monitor, fed by the payload log ------------------------------------------------------------

def watched(models: Path, tmp_path: Path, body: Any, sample_rows: int = 10) -> Any:
    """Runs ``await body(send, monitor, registry, host)`` with the server's wiring in-process: ModelHost, the payload log
    (Parquet files) and the drift monitor it feeds. ``send(data)`` infers the rows ``sample_rows`` at a
    time, one request after the other, then waits until the monitor has taken them."""
    async def main() -> Any:
        async with ModelHost(models) as host:
            plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path / "log", flush_s=0.02),
                              lambda name: host.registry.models[name].config)
            registry = CollectorRegistry()
            monitor = make_monitor(host, plog, registry)
            assert monitor is not None
            service = InferenceService(host, hooks=[plog])
            plog.start()
            monitor.start()

            async def send(data: dict[str, np.ndarray]) -> None:
                n = len(data["x"])
                for i in range(0, n, sample_rows):
                    await service.infer("m", None, InferRequest({"x": data["x"][i:i + sample_rows],
                                                                 "color": _bytes(data["color"][i:i + sample_rows])}))
                await asyncio.to_thread(plog.flush)
                await asyncio.to_thread(monitor.flush)

            try:
                return await body(send, monitor, registry, host)
            finally:
                await asyncio.to_thread(plog.close)
                await asyncio.to_thread(monitor.close)

    return asyncio.run(main())


def _bytes(colors: np.ndarray) -> np.ndarray:
    out = np.empty(colors.shape, dtype=object)
    out.reshape(-1)[:] = [c.encode() for c in colors.reshape(-1)]
    return out


def by_feature(snapshot: list[FeatureDrift]) -> dict[tuple[str, str], FeatureDrift]:
    return {(f.tensor, f.feature): f for f in snapshot}


def test_the_monitor_flags_a_planted_shift_logs_it_and_its_end(repo: Repo, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    model_repo(repo)
    rng = np.random.default_rng(11)

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        await send(rows(rng, 200, shift={3: 0.5}))  # one window: x[:, 3] moved by half its sd
        snap = by_feature(monitor.snapshot())
        assert len(snap) == WIDTH + 3  # x's columns, color, score, label
        f3 = snap[("x", "f3")]
        assert f3.drifted and f3.method == "ks" and f3.kind == "numerical" and f3.window_rows == 200
        assert f3.score < f3.threshold == pytest.approx(0.01 / (WIDTH + 3))  # Bonferroni over 11 tests
        assert [k for k, f in snap.items() if f.drifted and k[0] == "x"] == [("x", "f3")]
        assert list(snap)[:3] == [("x", "f0"), ("x", "f1"), ("x", "f2")]  # the profile's order
        assert snap[("color", "value")].kind == "categorical" and snap[("color", "value")].method == "chisquare"
        assert registry.get_sample_value("pyserve_drift_detected", {"model": "m", "version": "1", "tensor": "x",
                                                                    "feature": "f3"}) == 1.0
        await send(rows(rng, 200))  # back to the reference
        assert not by_feature(monitor.snapshot())[("x", "f3")].drifted

    with caplog.at_level(logging.INFO, logger="pyserve.drift"):
        watched(repo.root, tmp_path, body)
    started = [r for r in caplog.records if "started drifting" in r.getMessage()]
    assert [r.levelno for r in started] == [logging.WARNING]
    assert re.fullmatch(r"model m version 1: 1 feature started drifting \(window of 200 rows\): x feature f3 "
                        r"\(ks \S+ < 0\.000909\)", started[0].getMessage()), started[0].getMessage()
    stopped = [r for r in caplog.records if "stopped drifting" in r.getMessage()]
    assert [r.levelno for r in stopped] == [logging.INFO] and "x feature f3 (ks" in stopped[0].getMessage()


def test_a_feature_that_goes_missing_is_reported_not_dropped(repo: Repo, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    model_repo(repo, "window_rows = 200\noutputs = []\n")
    rng = np.random.default_rng(13)

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        data = rows(rng, 200)
        data["x"][:, 3] = np.nan  # every value of f3 missing in the window
        await send(data)
        snap = by_feature(monitor.snapshot())
        assert len(snap) == WIDTH + 1  # x's columns and color: f3 is not dropped
        f3 = snap[("x", "f3")]
        assert f3.method == "missing" and f3.score == 1.0 and f3.drifted and f3.threshold == 0.0
        # the cutoff of the others still counts f3 in the family of tests
        assert snap[("x", "f0")].threshold == pytest.approx(0.01 / (WIDTH + 1))
        assert registry.get_sample_value("pyserve_drift_detected", {"model": "m", "version": "1", "tensor": "x",
                                                                    "feature": "f3"}) == 1.0
        await send(rows(rng, 200))
        assert by_feature(monitor.snapshot())[("x", "f3")].method == "ks"

    with caplog.at_level(logging.INFO, logger="pyserve.drift"):
        watched(repo.root, tmp_path, body)
    messages = [r.getMessage() for r in caplog.records]
    assert any("started drifting" in m and "x feature f3 (missing" in m for m in messages), messages
    assert any("stopped drifting" in m and "x feature f3" in m for m in messages), messages


def test_the_monitor_stays_quiet_on_unshifted_traffic(repo: Repo, tmp_path: Path) -> None:
    model_repo(repo)
    rng = np.random.default_rng(12)
    windows: list[list[FeatureDrift]] = []

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        monitor.add_listener(windows.append)
        await send(rows(rng, 200 * 8))

    watched(repo.root, tmp_path, body)
    assert len(windows) == 8 and all(len(w) == WIDTH + 3 for w in windows)
    assert sum(f.drifted for w in windows for f in w) == 0
    # Uncorrected, p < 0.05 would have raised alarms in most windows of 11 features.
    assert sum(f.score < 0.05 for w in windows for f in w) > 0


def test_a_shift_of_categories_and_predictions(repo: Repo, tmp_path: Path) -> None:
    model_repo(repo)
    rng = np.random.default_rng(13)

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        await send(rows(rng, 200, shift={0: 2.0}, colors=[0.2, 0.3, 0.5]))
        snap = by_feature(monitor.snapshot())
        assert snap[("color", "value")].drifted
        assert snap[("label", "value")].drifted and snap[("score", "value")].drifted  # prediction drift

    watched(repo.root, tmp_path, body)


def test_windows_closed_by_time_and_the_watched_tensors(repo: Repo, tmp_path: Path) -> None:
    model_repo(repo, drift='window_rows = 1000\nmin_rows = 40\nwindow_s = 0.2\ninputs = ["x"]\noutputs = []\n'
                            'max_features = 5\n')
    rng = np.random.default_rng(14)

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        await send(rows(rng, 20))
        await asyncio.sleep(0.4)
        assert monitor.snapshot() == []  # 20 rows: under min_rows, the window stays open
        await send(rows(rng, 40))
        await asyncio.sleep(0.3)
        wait_until(lambda: monitor.snapshot() != [], 10, "a window closed by window_s")
        snap = monitor.snapshot()
        assert [(f.tensor, f.feature) for f in snap] == [("x", f"f{i}") for i in range(5)]
        # closed once it held min_rows rows, being older than window_s: the 20 old rows and the new ones
        # the writer thread had taken (it takes the 4 requests of 10 rows in one or more batches)
        assert len({f.window_rows for f in snap}) == 1 and 40 <= snap[0].window_rows <= 60

    watched(repo.root, tmp_path, body)


def test_redacted_tensors_and_failures_are_not_watched(repo: Repo, tmp_path: Path) -> None:
    model_repo(repo, log='[payload_log]\nsample_rate = 1.0\nredact = ["color"]\n')
    rng = np.random.default_rng(15)

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        await send(rows(rng, 200))
        assert ("color", "value") not in by_feature(monitor.snapshot())
        assert ("x", "f0") in by_feature(monitor.snapshot())

    watched(repo.root, tmp_path, body)


def test_the_payload_logs_consumers_get_each_batch_on_the_writer_thread(repo: Repo, tmp_path: Path) -> None:
    model_repo(repo)
    got: list[tuple[str, int]] = []

    class Consumer:
        def take(self, captures: list) -> None:
            got.extend((threading.current_thread().name, len(c.inputs["x"])) for c in captures)

    consumer = Consumer()

    async def main() -> None:
        async with ModelHost(repo.root) as host:
            plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path / "log"), lambda n: host.registry.models[n].config)
            service = InferenceService(host, hooks=[plog])
            plog.add_consumer(consumer.take)
            plog.start()
            data = rows(np.random.default_rng(17), 3)
            request = InferRequest({"x": data["x"], "color": _bytes(data["color"])})
            await service.infer("m", None, request)
            await asyncio.to_thread(plog.flush)
            plog.remove_consumer(consumer.take)  # a bound method made anew, equal to the one added
            await service.infer("m", None, request)
            await asyncio.to_thread(plog.close)

    asyncio.run(main())
    assert got == [("pyserve-payload-log", 3)]


def test_a_consumer_gets_only_the_calls_of_the_models_it_wants(repo: Repo, tmp_path: Path) -> None:
    model_repo(repo)
    wanted: list[int] = []
    unwanted: list[int] = []

    async def main() -> None:
        async with ModelHost(repo.root) as host:
            plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path / "log"), lambda n: host.registry.models[n].config)
            service = InferenceService(host, hooks=[plog])
            plog.add_consumer(lambda captures: wanted.extend(len(c.inputs["x"]) for c in captures),
                              wants=lambda config: config.name == "m")
            plog.add_consumer(lambda captures: unwanted.extend(len(c.inputs["x"]) for c in captures),
                              wants=lambda config: config.name != "m")
            plog.start()
            data = rows(np.random.default_rng(18), 2)
            await service.infer("m", None, InferRequest({"x": data["x"], "color": _bytes(data["color"])}))
            await asyncio.to_thread(plog.close)

    asyncio.run(main())
    assert wanted == [2] and unwanted == []


def test_a_full_queue_drops_and_counts(repo: Repo) -> None:
    model_repo(repo)
    cfg = load_model_config(repo.root / "m")
    registry = CollectorRegistry()
    monitor = DriftMonitor(lambda name: cfg, lambda *a: repo.root / "m" / "1" / PROFILE_FILE, lambda: {("m", "1"): None},
                           registry, queue_size=3)

    class Capture:  # what consume reads of a record
        model, version, status, sampled, inputs, outputs = "m", "1", "ok", True, {}, {}
        config = cfg.payload_log

    monitor.consume([Capture()] * 10)  # the thread is not running: nothing is taken
    assert registry.get_sample_value("pyserve_drift_dropped_total", {"model": "m"}) == 7
    failed = Capture()
    failed.status = "internal"
    monitor.consume([failed])
    assert registry.get_sample_value("pyserve_drift_dropped_total", {"model": "m"}) == 7  # not queued at all


# -- a live server ----------------------------------------------------------------------------------

def infer_json(url: str, data: dict[str, np.ndarray]) -> None:
    body = {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": list(data["x"].shape), "data": data["x"].reshape(-1).tolist()},
        {"name": "color", "datatype": "BYTES", "shape": list(data["color"].shape),
         "data": [str(c) for c in data["color"].reshape(-1)]}]}
    resp = requests.post(f"{url}/v2/models/m/infer", json=body, timeout=10)
    assert resp.status_code == 200, resp.text


def test_a_live_server_exports_drift_gauges_and_v2_drift(repo: Repo, tmp_path: Path, serve: Any) -> None:
    model_repo(repo, drift="window_rows = 100\n")
    server = serve([repo.root, "--payload-log-dir", tmp_path / "log"])
    rng = np.random.default_rng(16)
    shifted = rows(rng, 100, shift={6: 1.0})
    for i in range(0, 100, 10):
        infer_json(server.url, {k: a[i:i + 10] for k, a in shifted.items()})

    def features() -> list[dict]:
        return requests.get(f"{server.url}/v2/drift", timeout=10).json()["features"]

    wait_until(lambda: len(features()) == WIDTH + 3, 20, "a tested window")
    doc = {(f["tensor"], f["feature"]): f for f in features()}
    f6 = doc[("x", "f6")]
    assert set(f6) == {"model", "version", "tensor", "feature", "kind", "method", "score", "threshold", "drifted",
                       "window_rows", "updated"}
    assert f6["drifted"] and f6["model"] == "m" and f6["version"] == "1" and f6["window_rows"] == 100
    assert not doc[("x", "f1")]["drifted"]
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    labels = 'model="m",tensor="x",version="1",feature="f6"'

    def sample(name: str, feature: str) -> float:
        pattern = rf'^{name}\{{(?=[^}}]*model="m")(?=[^}}]*version="1")(?=[^}}]*tensor="x")' \
                  rf'(?=[^}}]*feature="{feature}")[^}}]*\}} (\S+)$'
        found = re.findall(pattern, metrics, re.MULTILINE)
        assert len(found) == 1, (name, feature, labels)
        return float(found[0])

    assert sample("pyserve_drift_detected", "f6") == 1.0 and sample("pyserve_drift_detected", "f1") == 0.0
    assert sample("pyserve_drift_score", "f6") == pytest.approx(f6["score"], rel=1e-6, abs=1e-300)
    assert 'pyserve_drift_window_rows{model="m",version="1"} 100.0' in metrics
    assert 'pyserve_drift_model_detected{model="m",version="1"} 1.0' in metrics
    assert requests.get(f"{server.url}/v2/drift", params={"model": "m"}, timeout=10).json()["features"]
    assert requests.get(f"{server.url}/v2/drift", params={"model": "nope"}, timeout=10).status_code == 404
    assert requests.get(f"{server.url}/v2/drift", params={"modle": "m"}, timeout=10).status_code == 400
    # The dashboard shows the monitor's results.
    shown = requests.get(f"{server.url}/dashboard/data", timeout=10).json()["drift"]
    assert shown["enabled"] and len(shown["features"]) == WIDTH + 3
    shown_by = {(row["model"], row["tensor"], row["feature"]): row for row in shown["features"]}
    assert shown_by[("m", "x", "f6")]["drifted"] and not shown_by[("m", "x", "f1")]["drifted"]
    assert shown_by[("m", "x", "f6")]["score"] == pytest.approx(f6["score"], rel=1e-6, abs=1e-300)
    server.stop()
    assert re.search(r"WARNING pyserve.drift: model m version 1: \d+ features? started drifting \(window of 100 "
                     r"rows\): .*x feature f6 \(ks", server.log())


def test_drift_without_a_payload_log_is_refused_plainly(repo: Repo, serve: Any) -> None:
    model_repo(repo)
    server = serve([repo.root])
    assert requests.get(f"{server.url}/v2/drift", timeout=10).status_code == 404
    server.stop()
    assert ("m has [drift] in config.toml, but the server keeps no payload log (start it with "
            "--payload-log-dir or --payload-log-sink): drift is not watched") in server.log()


def test_drift_of_a_model_whose_log_is_off_is_refused_plainly(repo: Repo, tmp_path: Path, serve: Any) -> None:
    model_repo(repo, log="")
    server = serve([repo.root, "--payload-log-dir", tmp_path / "log"])
    assert requests.get(f"{server.url}/v2/drift", timeout=10).json() == {"features": []}
    server.stop()
    assert "WARNING pyserve.drift: model m has [drift] but its payload log is off" in server.log()


def test_the_profile_json_is_small(repo: Repo) -> None:
    model_dir = model_repo(repo)
    doc = json.loads((model_dir / "1" / PROFILE_FILE).read_text())
    assert len((model_dir / "1" / PROFILE_FILE).read_bytes()) < 40_000  # 11 features
    assert doc["format"] == "pyserve-drift-profile/1" and doc["rows"] == 5000


def test_serving_needs_no_scipy_and_pyserve_profile_says_what_to_install(repo: Repo) -> None:
    """scipy is the drift extra's: the server imports none of it, and `pyserve profile` says what to add."""
    import subprocess
    import sys
    import textwrap

    model_dir = repo.python("m", MODEL, config())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["scipy"] = None  # as if not installed: importing it raises ImportError
        from pyserve import cli
        from pyserve.server.app import serve
        print("exit", cli.main(["profile", {str(model_dir)!r}, "--golden"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["exit", "2"], (out.stdout, out.stderr)
    assert "pip install 'pyserve[drift]'" in out.stderr


def test_a_version_loaded_again_or_given_a_new_profile_starts_new_windows(repo: Repo, tmp_path: Path) -> None:
    """Drift results and the open window belong to one load of a version with one profile: after an
    unload and a load, or a rebuilt profile, the old window's rows and results are gone."""
    model_repo(repo)
    rng = np.random.default_rng(21)

    async def body(send: Any, monitor: DriftMonitor, registry: Any, host: Any) -> None:
        await send(rows(rng, 200, shift={3: 0.5}))  # one window tested: x[:, 3] drifts
        assert by_feature(monitor.snapshot())[("x", "f3")].drifted
        await send(rows(rng, 150))  # a window under way
        assert [v.rows for v in monitor.versions("m")] == [150]
        await host.repository.unload("m")
        assert monitor.snapshot() == []  # an unloaded version shows nothing
        await host.repository.load("m")
        await send(rows(rng, 100, shift={5: 0.5}))
        assert monitor.snapshot() == []  # not the old results ...
        assert [v.rows for v in monitor.versions("m")] == [100]  # ... nor the old window's rows
        await send(rows(rng, 100, shift={5: 0.5}))  # the new load's first window: f5 drifts, not f3
        snap = by_feature(monitor.snapshot())
        assert snap[("x", "f5")].drifted and not snap[("x", "f3")].drifted
        await send(rows(rng, 50))
        profile = repo.root / "m" / "1" / PROFILE_FILE
        profile.write_text(profile.read_text())  # rebuilt (same content, a new file time)
        os.utime(profile, ns=(time.time_ns(), time.time_ns() + 10**9))
        await send(rows(rng, 20))
        assert [v.rows for v in monitor.versions("m")] == [20] and monitor.snapshot() == []

    watched(repo.root, tmp_path, body)

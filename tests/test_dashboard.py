"""The dashboard: percentiles and rates from snapshots, the sampler, the errors hook, the recent
failures of the payload log, drift, the page (tables, escaping, features that are off), and
GET /dashboard, /dashboard/data and /dashboard/static/* on a live server. The page in a real browser
is tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, infer, wait_until

from pyserve.config import PayloadLogConfig
from pyserve.dashboard import Dashboard, DashboardSettings, assets, page
from pyserve.dashboard.series import (
    Histogram,
    Snapshot,
    VersionSnapshot,
    batch_sizes,
    histogram_quantile,
    intervals,
    minutes,
    quantile_columns,
    series,
    summary,
)
from pyserve.drift.result import FeatureDrift
from pyserve.errors import PyserveError
from pyserve.payload_log import PayloadLog, PayloadLogSettings
from pyserve.payload_log.failures import PREVIEW_VALUES, preview
from pyserve.protocol import InferRequest
from pyserve.service import InferenceService, ModelHost

BOUNDS = (10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)


# -- percentiles and intervals --------------------------------------------------------------------

def bucketed(values: np.ndarray, bounds: tuple[float, ...] = BOUNDS) -> np.ndarray:
    """Per-bucket counts as the core keeps them (a value on a bound goes in that bound's bucket)."""
    return np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1).astype(np.int64)


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    counts = np.array([0, 10, 0, 0, 0, 0, 0, 0], np.int64)  # ten values in (10, 25]
    assert histogram_quantile(0.5, BOUNDS, counts) == pytest.approx(10 + 15 * 0.5)
    assert histogram_quantile(0.99, BOUNDS, counts) == pytest.approx(10 + 15 * 0.99)
    first = np.array([4, 0, 0, 0, 0, 0, 0, 0], np.int64)  # the lowest bucket starts at 0
    assert histogram_quantile(0.25, BOUNDS, first) == pytest.approx(2.5)
    over = np.array([1, 0, 0, 0, 0, 0, 0, 9], np.int64)  # in +Inf: the highest finite bound
    assert histogram_quantile(0.9, BOUNDS, over) == 1000.0
    assert histogram_quantile(0.5, BOUNDS, np.zeros(8, np.int64)) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_percentile_lies_in_the_bucket_of_the_true_one(seed: int) -> None:
    values = np.random.default_rng(seed).exponential(80.0, 5000)
    counts = bucketed(values)
    edges = (0.0, *BOUNDS, np.inf)
    for q in (0.5, 0.9, 0.99):
        true = np.quantile(values, q)
        bucket = int(np.searchsorted(BOUNDS, true, side="left"))
        got = histogram_quantile(q, BOUNDS, counts)
        assert got is not None
        if bucket < len(BOUNDS):
            assert edges[bucket] <= got <= edges[bucket + 1], (q, true, got)
        else:
            assert got == BOUNDS[-1]


def test_the_vectorized_percentiles_are_the_scalar_ones() -> None:
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 4, (300, len(BOUNDS) + 1)) * (rng.random((300, len(BOUNDS) + 1)) < 0.4)
    counts[:20] = 0  # rows with no observation
    counts[20:40, :-1] = 0  # rows all in +Inf
    for q in (0.5, 0.9, 0.99):
        got = quantile_columns(q, BOUNDS, counts)
        want = [histogram_quantile(q, BOUNDS, row) for row in counts]
        assert [None if v != v else pytest.approx(v) for v in got] == want


def version(requests: int, samples: int = 0, batches: int = 0, latencies: np.ndarray | None = None,
            errors: dict[str, int] | None = None, queue_depth: int = 0) -> VersionSnapshot:
    latencies = np.zeros(0) if latencies is None else latencies
    hist = Histogram(BOUNDS, bucketed(latencies), float(latencies.sum()), len(latencies))
    sizes = Histogram((1.0, 2.0, 4.0, 8.0), np.array([0, 0, batches, 0, 0], np.int64), 3.0 * batches, batches)
    return VersionSnapshot((requests, 0, 0, 0, 0), samples, batches, queue_depth, queue_depth,
                           {"request_us": hist, "queue_us": hist, "compute_us": hist, "batch_size": sizes},
                           errors or {})


def snap(t: float, **versions: VersionSnapshot) -> Snapshot:
    return Snapshot(1_000_000.0 + t, t, {(name, "1"): v for name, v in versions.items()})


def test_intervals_difference_counters_and_take_a_reset_as_a_new_start() -> None:
    lat = np.random.default_rng(3).uniform(20, 40, 100)
    snaps = [snap(0, m=version(100, 300, 50, lat[:40])),
             snap(5, m=version(160, 420, 70, lat[:100], {"internal": 2})),
             snap(10, m=version(30, 60, 10, lat[:10]))]  # reloaded: counters from 0 again
    items = intervals(snaps, ("m", "1"))
    assert items.requests[:, 0].tolist() == [60, 30]
    assert items.samples.tolist() == [120, 60]
    assert items.histograms["request_us"].count.tolist() == [60, 10]
    assert items.histograms["request_us"].sum[1] == pytest.approx(lat[:10].sum())
    assert items.errors["internal"].tolist() == [2, 0]  # the reload reset the errors too
    s = summary(items, snaps[-1].versions[("m", "1")])
    assert s["requests"]["success"] == 90 and s["batches"] == 30 and s["samples_ps"] == pytest.approx(180 / 10)
    assert s["throughput_rps"] == pytest.approx(9.0) and s["throughput_now_rps"] == pytest.approx(6.0)
    assert s["errors"] == {"internal": 2}
    assert 20 / 1e3 <= s["latency_ms"]["p50"] <= 50 / 1e3
    # Per interval, the vectorized percentiles are the scalar ones.
    cols = series(items)
    for j in range(2):
        h = items.histograms["request_us"]
        assert cols["latency_ms"]["p90"][j] == pytest.approx(histogram_quantile(0.9, h.bounds, h.counts[j]) / 1e3)


def test_a_histogram_reset_is_seen_even_when_it_grew_past_the_old_count() -> None:
    """Reloaded, then busier than before: the count went up but a bucket went down, so the whole
    histogram (and its sum) counts from 0."""
    fast, slow = np.full(30, 20.0), np.full(50, 400.0)
    snaps = [snap(0, m=version(30, latencies=np.r_[fast, np.full(10, 400.0)])),
             snap(5, m=version(60, latencies=slow))]
    h = intervals(snaps, ("m", "1")).histograms["request_us"]
    assert h.count.tolist() == [50] and h.sum.tolist() == [pytest.approx(50 * 400.0)]
    assert h.counts[0].tolist() == bucketed(slow).tolist()


def test_a_version_loaded_between_snapshots_counts_from_zero_and_a_gone_one_stops() -> None:
    snaps = [snap(0, a=version(5)), snap(1, a=version(9), b=version(7)), snap(2, b=version(8))]
    assert intervals(snaps, ("b", "1")).requests[:, 0].tolist() == [7, 1]
    assert intervals(snaps, ("a", "1")).requests[:, 0].tolist() == [4]
    cols = series(intervals(snaps, ("b", "1")))
    assert cols["throughput_rps"] == [7.0, 1.0] and cols["time"] == [1_000_001.0, 1_000_002.0]
    assert cols["latency_ms"]["p99"] == [None, None]  # no request measured: nothing to draw


def test_minutes_group_the_intervals_by_the_minute_they_end_in() -> None:
    lat = np.full(1000, 30.0)
    snaps = [snap(t, m=version(10 * t, 10 * t, t, lat[:10 * t], {"internal": t // 20})) for t in range(0, 130, 10)]
    rows = minutes(intervals(snaps, ("m", "1")))
    # Intervals end at 10, 20, ... 120 s after 1,000,000 s (minute 16,666 starts at 999,960 s).
    assert [r["start"] for r in rows] == [1_000_080.0, 1_000_020.0, 999_960.0]
    assert [r["requests"]["success"] for r in rows] == [500, 600, 100]
    assert sum(sum(r["errors"].values()) for r in rows) == 6
    assert all(r["throughput_rps"] == pytest.approx(10.0) for r in rows)
    assert rows[0]["latency_ms"]["p50"] == pytest.approx((25 + 25 * 0.5) / 1e3)


def test_batch_sizes_are_labelled_by_the_samples_each_bucket_holds() -> None:
    h = Histogram((1.0, 2.0, 4.0, 8.0), np.array([3, 0, 5, 0, 1], np.int64), 0.0, 9)
    assert batch_sizes(h) == [{"label": "1", "le": 1.0, "batches": 3}, {"label": "2", "le": 2.0, "batches": 0},
                              {"label": "3-4", "le": 4.0, "batches": 5}, {"label": "5-8", "le": 8.0, "batches": 0},
                              {"label": "> 8", "le": None, "batches": 1}]


# -- the dashboard in process: sampler, errors hook, drift, the document and the page --------------

class FakeMonitor:
    def __init__(self, results: list[FeatureDrift]) -> None:
        self.results = results

    def snapshot(self) -> list[FeatureDrift]:
        return list(self.results)


EVIL = "<img src=x onerror=alert(1)>"


def run_dashboard(repo: Repo, body: Any, settings: DashboardSettings = DashboardSettings(),
                  payload_log: PayloadLogSettings | None = None, drift: Any = None) -> Any:
    async def main() -> Any:
        async with ModelHost(repo.root) as host:
            service = InferenceService(host)
            plog = None
            if payload_log is not None:
                plog = PayloadLog(payload_log, lambda name: host.registry.models[name].config)
                service.add_hooks(plog)
                plog.start()
            dashboard = Dashboard(settings, service, plog, lambda: drift)
            try:
                return await body(service, dashboard, plog)
            finally:
                if plog is not None:
                    await asyncio.to_thread(plog.close)

    return asyncio.run(main())


async def call(service: InferenceService, model: str, x: np.ndarray, rid: str | None = None) -> Any:
    try:
        return await service.infer(model, None, InferRequest({"x": x}, id=rid))
    except PyserveError as e:
        return e


def test_the_document_counts_what_was_served(repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n")

    async def body(service: InferenceService, dashboard: Dashboard, _plog: Any) -> dict:
        await dashboard.sampler.sample()
        xs = [np.ones((n, 4), np.float32) for n in (1, 2, 3, 1, 4)]
        await asyncio.gather(*(call(service, "affine", x) for x in xs))
        bad = await call(service, "affine", np.ones((1, 3), np.float32))  # a wrong shape: 400
        missing = await call(service, "nope", np.ones((1, 4), np.float32))  # not a model: not counted
        assert isinstance(bad, PyserveError) and isinstance(missing, PyserveError)
        await dashboard.sampler.sample()
        return await dashboard.document()

    doc = run_dashboard(repo, body)
    (m,) = doc["models"]
    s = m["summary"]
    assert (m["model"], m["version"], m["loaded"]) == ("affine", "1", True)
    assert s["requests"] == {"success": 5, "failure": 0, "timeout": 0, "rejected": 0, "cancelled": 0}
    assert s["errors"] == {"invalid_argument": 1}
    assert sum(b["batches"] for b in s["batch_sizes"]) == s["batches"] >= 1
    assert s["batch_size_mean"] == pytest.approx(11 / s["batches"])
    assert s["latency_ms"]["p50"] is not None and s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
    assert len(m["series"]["time"]) == 1 and m["series"]["throughput_rps"][0] > 0
    assert doc["server"]["snapshots"] == 2
    assert doc["drift"] == {"enabled": False, "message": page.DRIFT_OFF, "features": []}
    assert doc["failures"] == {"enabled": False, "message": page.PAYLOAD_LOG_OFF, "records": []}


def test_errors_of_calls_that_reached_no_version_are_kept_apart(repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n")

    async def body(service: InferenceService, dashboard: Dashboard, _plog: Any) -> dict:
        await dashboard.sampler.sample()
        try:
            await service.infer("affine", "7", InferRequest({"x": np.ones((1, 4), np.float32)}))
        except PyserveError:
            pass
        await dashboard.sampler.sample()
        return await dashboard.document()

    doc = run_dashboard(repo, body)
    rows = {(m["model"], m["version"]): m for m in doc["models"]}
    assert rows[("affine", "")]["summary"]["errors"] == {"not_found": 1}
    assert rows[("affine", "")]["loaded"] is False
    assert rows[("affine", "1")]["summary"]["errors"] == {}
    assert "calls that reached no version" in page.render(doc, "/s/", "/d", "0")


def test_drift_results_are_shown_per_feature_with_the_drifted_ones_highlighted(repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n")
    now = time.time()
    monitor = FakeMonitor([
        FeatureDrift("affine", "1", "x", "f0", "numerical", "ks", 0.31, 0.05, False, 900, now),
        FeatureDrift("affine", "1", "x", EVIL, "numerical", "ks", 0.001, 0.05, True, 900, now),
        FeatureDrift("affine", "1", "argmax", "class", "categorical", "psi", float("nan"), 0.2, False, 900, now),
    ])

    async def body(service: InferenceService, dashboard: Dashboard, _plog: Any) -> tuple[dict, str]:
        await dashboard.sampler.sample()
        await call(service, "affine", np.ones((1, 4), np.float32))
        await dashboard.sampler.sample()
        return await dashboard.document(), await dashboard.page()

    doc, html = run_dashboard(repo, body, drift=monitor)
    features = doc["drift"]["features"]
    assert doc["drift"]["enabled"] and [f["feature"] for f in features] == ["f0", EVIL, "class"]
    assert features[1]["drifted"] is True and features[1]["score"] == 0.001
    assert features[2]["score"] is None  # NaN is not JSON
    assert "Drift: 1 of 3 features drifted" in html
    assert '<span class="bad">drifted</span>' in html and '<span class="bad">1 of 3</span>' in html
    assert EVIL not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert page.DRIFT_OFF not in html


def test_a_monitor_that_raises_leaves_the_page_working(repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n")

    class Broken:
        def snapshot(self) -> list:
            raise RuntimeError("broken monitor")

    async def body(service: InferenceService, dashboard: Dashboard, _plog: Any) -> dict:
        await dashboard.sampler.sample()
        return await dashboard.document()

    doc = run_dashboard(repo, body, drift=Broken())
    assert doc["drift"] == {"enabled": True, "message": page.DRIFT_EMPTY, "features": []}


def test_the_page_escapes_names_and_says_what_is_off(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "m" + EVIL.replace("/", "")
    repo.onnx(name, config="max_batch_size = 8\n")
    monkeypatch.setattr(assets, "plotly_version", lambda: None)
    from pyserve import dashboard as dashboard_module
    monkeypatch.setattr(dashboard_module, "plotly_version", lambda: None)

    async def body(service: InferenceService, dashboard: Dashboard, _plog: Any) -> tuple[dict, str]:
        await dashboard.sampler.sample()
        for _ in range(3):
            await call(service, name, np.ones((1, 4), np.float32))
        await dashboard.sampler.sample()
        return await dashboard.document(), await dashboard.page()

    doc, html = run_dashboard(repo, body)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert doc["server"]["charts"] is None and doc["server"]["charts_hint"] == assets.CHARTS_HINT
    for message in (page.CHARTS_OFF, page.DRIFT_OFF, page.PAYLOAD_LOG_OFF):
        assert page.esc(message) in html
    assert "plotly.min.js" not in html  # no script for charts that cannot be drawn
    assert "<noscript>" in html and page.esc(page.SCRIPTS_OFF.format(s=5)) in html
    # The numbers are in the tables: three successful requests.
    overview = html.split('<table class="overview">')[1].split("</table>")[0]
    assert "<td>3</td>" in overview


def test_recent_failures_come_from_the_writer_thread_newest_first(repo: Repo, tmp_path: Path) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n[payload_log]\nsample_rate = 0.0\n")
    repo.onnx("quiet", config="max_batch_size = 8\n")
    threads: list[str] = []

    async def body(service: InferenceService, dashboard: Dashboard, plog: PayloadLog) -> dict:
        add = plog._failures.add

        def spy(captures: Any) -> None:
            threads.append(threading.current_thread().name)
            add(captures)

        plog._failures.add = spy  # type: ignore[method-assign]
        await dashboard.sampler.sample()
        for i in range(3):
            await call(service, "affine", np.full((1, 3), i, np.float32), f"bad-{i}")
        await call(service, "affine", np.ones((1, 4), np.float32), "good")
        assert plog.recent_failures(10) == []  # the hooks only queue; the writer fills the ring
        await asyncio.to_thread(plog.flush)
        await dashboard.sampler.sample()
        return await dashboard.document()

    doc = run_dashboard(repo, body, payload_log=PayloadLogSettings(log_dir=tmp_path / "log"))
    records = doc["failures"]["records"]
    assert [r["request_id"] for r in records] == ["bad-2", "bad-1", "bad-0"]
    assert all(r["status"] == "invalid_argument" and r["model"] == "affine" and r["version"] == "1"
               and "x" in r["error"] for r in records)
    assert records[0]["inputs"] == "x FP32[1,3] 2.0 2.0 2.0" and records[0]["protocol"] == "inprocess"
    assert doc["failures"]["not_logged"] == ["quiet"]
    assert set(threads) == {"pyserve-payload-log"}


def test_the_preview_keeps_to_the_payload_log_config() -> None:
    inputs = {"secret": np.array([b"pin-1234"], object), "user": np.array([b"alice"], object),
              "x": np.arange(20, dtype=np.float32).reshape(2, 10), "big": np.zeros(100_000, np.uint8),
              "text": np.array(["é" * 100], object)}
    config = PayloadLogConfig(enabled=True, redact=("secret",), hash=("user",), max_tensor_bytes=1000)
    text = preview(inputs, config)
    assert "pin-1234" not in text and "secret" not in text and "alice" not in text
    assert "user BYTES[1] (hashed)" in text and "big UINT8[100000] (over max_tensor_bytes)" in text
    assert f"x FP32[2,10] {' '.join(str(float(i)) for i in range(PREVIEW_VALUES))} …" in text
    assert "text BYTES[1] '" + "é" * 30 in text and len(text) <= 240
    only_x = preview(inputs, PayloadLogConfig(enabled=True, inputs=("x",)))
    assert only_x.startswith("x FP32[2,10]") and "user" not in only_x


def test_the_ring_keeps_the_last_failures(repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyserve.payload_log as payload_log

    monkeypatch.setattr(payload_log, "RECENT_FAILURES", 4)
    repo.onnx("affine", config="max_batch_size = 8\n[payload_log]\n")

    async def body(service: InferenceService, dashboard: Dashboard, plog: PayloadLog) -> list[dict]:
        for i in range(10):
            await call(service, "affine", np.ones((1, 3), np.float32), f"bad-{i}")
        await asyncio.to_thread(plog.flush)
        return plog.recent_failures(100)

    rows = run_dashboard(repo, body, payload_log=PayloadLogSettings(log_dir=tmp_path / "log"))
    assert [r["request_id"] for r in rows] == ["bad-9", "bad-8", "bad-7", "bad-6"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"interval_s": 10.0, "history_s": 5.0}, "at least --dashboard-interval-s"),
    ({"interval_s": 0.1, "history_s": 3600.0}, "at most 9999"),
    ({"interval_s": 0.0}, "must be between 0.1 and 3600"),
    ({"interval_s": 1e-300, "history_s": 1e-300}, "must be between 0.1 and 3600"),
    ({"interval_s": 1e308, "history_s": 1e308}, "must be between 0.1 and 3600"),
    ({"interval_s": float("nan")}, "must be between 0.1 and 3600"),
    ({"interval_s": 3600.0, "history_s": 1e308}, "at most 604800"),
    ({"interval_s": 3600.0, "history_s": 8 * 86400.0}, "at most 604800"),
])
def test_bad_settings_are_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        DashboardSettings(**kwargs).check()


def test_the_sampler_keeps_a_fixed_schedule_and_skips_ticks_it_missed(repo: Repo) -> None:
    """On a fake clock: snapshots at start + k * interval; a sample that stalls 2.5 intervals skips
    the ticks it missed instead of drifting; the ring keeps its size."""
    repo.onnx("affine", config="max_batch_size = 8\n")
    settings = DashboardSettings(interval_s=5.0, history_s=20.0)
    now = [100.0]
    stalls = {3: 12.5}  # the 4th sample takes 12.5 s (a stalled loop)

    async def body(service: InferenceService, dashboard: Dashboard, _plog: Any) -> list[float]:
        from pyserve.dashboard.history import Sampler

        taken: list[float] = []

        async def sleep(delay: float) -> None:
            assert delay >= 0
            now[0] += delay

        sampler = Sampler(service, dashboard.errors, dashboard.history, settings.interval_s,
                          monotonic=lambda: now[0], sleep=sleep)
        sample = sampler.sample

        async def timed() -> None:
            taken.append(now[0])
            now[0] += stalls.get(len(taken) - 1, 0.25)  # a sample takes time too
            await sample()
            if len(taken) == 9:
                raise asyncio.CancelledError

        sampler.sample = timed  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await sampler.run()
        assert len(dashboard.history.snapshots()[1]) == settings.snapshots == 5
        return taken

    taken = run_dashboard(repo, body, settings)
    assert taken == [100.0, 105.0, 110.0, 115.0, 130.0, 135.0, 140.0, 145.0, 150.0]


# -- a live server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, serve_module: Any) -> Any:
    root = tmp_path_factory.mktemp("dash")
    repo = Repo(root / "models")
    repo.onnx("affine", config="max_batch_size = 8\n[payload_log]\nsample_rate = 1.0\n")
    server = serve_module([repo.root, "--payload-log-dir", root / "log", "--dashboard-interval-s", "0.2",
                           "--dashboard-history-s", "60"])
    x = np.ones((2, 4), np.float32)
    for i in range(12):
        assert infer(server.url, "affine", "json", {"x": x}, id=f"ok-{i}").status_code == 200
    for i in range(3):
        assert infer(server.url, "affine", "json", {"x": np.ones((1, 5), np.float32)}, id=f"bad-{i}").status_code == 400

    def counted() -> bool:
        doc = requests.get(server.url + "/dashboard/data", timeout=10).json()
        s = doc["models"][0]["summary"] if doc["models"] else None
        return bool(s and s["requests"]["success"] == 12 and len(doc["failures"]["records"]) == 3)

    wait_until(counted, 30, "the dashboard to count the requests")
    return server


def test_data_and_page_over_http(live: Any) -> None:
    resp = requests.get(live.url + "/dashboard/data", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    doc = resp.json()
    s = doc["models"][0]["summary"]
    assert s["requests"]["success"] == 12 and s["errors"] == {"invalid_argument": 3}
    assert [r["request_id"] for r in doc["failures"]["records"]] == ["bad-2", "bad-1", "bad-0"]
    assert doc["server"]["interval_s"] == 0.2 and doc["server"]["charts"]["library"] == "plotly"
    html = requests.get(live.url + "/dashboard", timeout=10)
    assert html.status_code == 200 and html.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in html.headers["Content-Security-Policy"]
    assert "<script>" not in html.text  # no inline script: the CSP would block it
    assert "bad-2" in html.text and "invalid_argument" in html.text
    assert f'/dashboard/static/plotly.min.js?v={doc["server"]["charts"]["version"]}' in html.text
    for query in ("model=m", "since", "a=1&b=2"):
        bad = requests.get(f"{live.url}/dashboard/data?{query}", timeout=10)
        assert bad.status_code == 400, query
        assert "unknown query parameter" in bad.json()["error"] and "expected none" in bad.json()["error"]


def test_static_files_are_cached_compressed_and_local(live: Any) -> None:
    import plotly.offline

    url = live.url + "/dashboard/static/plotly.min.js"
    plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200 and plain.content == plotly.offline.get_plotlyjs().encode()
    assert plain.headers["Cache-Control"] == "public, max-age=3600" and "Content-Encoding" not in plain.headers
    etag = plain.headers["ETag"]
    again = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    raw = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=30, stream=True)
    packed = raw.raw.read()
    assert raw.headers["Content-Encoding"] == "gzip" and gzip.decompress(packed) == plain.content
    assert len(packed) < len(plain.content) / 2
    js = requests.get(live.url + "/dashboard/static/dashboard.js", timeout=10)
    assert "Math.min(3600, Math.max(1," in js.text  # the refresh delay is clamped
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert "Plotly.react" in js.text and "https://" not in js.text and "http://" not in js.text
    assert requests.get(live.url + "/dashboard/static/nothing.js", timeout=10).status_code == 404
    assert requests.get(live.url + "/dashboard/static/..%2fsettings.py", timeout=10).status_code == 404


def test_the_dashboard_can_be_turned_off(serve: Any, repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n")
    server = serve([repo.root, "--disable-dashboard"])
    for path in ("/dashboard", "/dashboard/data", "/dashboard/static/dashboard.js"):
        resp = requests.get(server.url + path, timeout=10)
        assert resp.status_code == 404 and "--disable-dashboard" in resp.json()["error"]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--dashboard-interval-s", "0"], "--dashboard-interval-s: expected a finite number > 0"),
    (["--dashboard-interval-s", "10", "--dashboard-history-s", "5"], "at least --dashboard-interval-s"),
])
def test_serve_refuses_bad_dashboard_flags(tmp_path: Path, flags: list[str], needle: str) -> None:
    (tmp_path / "m.onnx").touch()  # refused before any model is read
    proc = subprocess.run([sys.executable, "-m", "pyserve", "serve", "--model", f"m={tmp_path / 'm.onnx'}", *flags],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr

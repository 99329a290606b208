"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven through selenium) against a live server with traffic (successes, bad input, a model that
fails) and drift results. With scripts on: the charts hold the server's numbers and the console
shows no error; a screenshot is saved. With scripts off: the tables carry the numbers.

Skipped where Chromium, its driver or selenium is missing, except in CI (the ``CI`` environment
variable set), where it fails instead: .ci/run installs them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, free_port, infer, wait_until

import pyserve.server.app as app_module
from pyserve.dashboard.settings import DashboardSettings
from pyserve.drift.result import FeatureDrift
from pyserve.payload_log.settings import PayloadLogSettings

pytestmark = pytest.mark.slow

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _browser() -> tuple[str, str]:
    """(browser, driver) paths; skips (fails in CI) when either or selenium is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which("chromedriver")
    missing = [what for what, ok in (("chromium", browser), ("chromedriver (chromium-driver)", driver)) if not ok]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"the browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        if _in_ci():
            pytest.fail(message + " (CI must run it: .ci/run installs them)")
        pytest.skip(message)
    return browser, driver  # type: ignore[return-value]


class FakeMonitor:
    """Drift results of the affine model: x's feature 2 drifted, the others not."""

    def __init__(self) -> None:
        now = time.time()
        self.results = [FeatureDrift("affine", "1", "x", f"x[{i}]", "numerical", "ks",
                                     0.004 if i == 2 else 0.4 + 0.1 * i, 0.05, i == 2, 640, now) for i in range(4)]

    def snapshot(self) -> list[FeatureDrift]:
        return list(self.results)


BROKEN = """
import numpy as np


class Model:
    def infer(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise RuntimeError("negative input: the model cannot take it")
        return {"y": x * np.float32(2)}
"""


class InProcessServer:
    """``pyserve.server.app.serve`` on a thread of this process, so the test can reach its App (to
    set ``app.drift`` to a monitor with known results)."""

    def __init__(self, settings: app_module.ServerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
        self.apps: list[Any] = []
        apps = self.apps

        class RecordingApp(app_module.App):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                apps.append(self)

        monkeypatch.setattr(app_module, "App", RecordingApp)
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await app_module.serve(self.settings, self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def start(self) -> None:
        self._thread.start()

        def live() -> bool:
            if self.error is not None:
                raise AssertionError(f"the server failed to start: {self.error!r}")
            try:
                return requests.get(self.url + "/v2/health/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(live, 60, "the server to be ready")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the server did not stop"


@pytest.fixture
def browser() -> tuple[str, str]:
    """(browser, driver) paths, checked before any server starts."""
    return _browser()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    repo = Repo(tmp_path / "models")
    repo.onnx("affine", config="max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
                               "[payload_log]\nsample_rate = 1.0\n")
    repo.python("broken", BROKEN, 'backend = "python"\nmax_batch_size = 4\n'
                '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [2]\n'
                '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [2]\n[payload_log]\n')
    settings = app_module.ServerSettings(
        repository=repo.root, port=free_port(),
        payload_log=PayloadLogSettings(log_dir=tmp_path / "log", flush_s=0.1),
        dashboard=DashboardSettings(interval_s=0.5, history_s=120.0))
    srv = InProcessServer(settings, monkeypatch)
    srv.start()
    (app,) = srv.apps
    # Known drift results for the page to draw (the real monitor feeding the dashboard is tested in
    # tests/test_drift.py with a live server).
    app.drift = FakeMonitor()
    try:
        yield srv
    finally:
        srv.stop()


def traffic(url: str) -> dict[str, int]:
    """Successes in concurrent bursts (so batches form), bad input (400) and model failures (500)."""
    sent = {"ok": 0, "bad": 0, "broken": 0}
    rng = np.random.default_rng(0)

    def burst(k: int) -> None:
        x = rng.normal(size=(1 + k % 3, 4)).astype(np.float32)
        assert infer(url, "affine", "json", {"x": x}, id=f"ok-{k}").status_code == 200

    for round_ in range(6):
        threads = [threading.Thread(target=burst, args=(round_ * 8 + k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent["ok"] += 8
    for i in range(5):
        assert infer(url, "affine", "json", {"x": np.ones((1, 3), np.float32)}, id=f"bad-{i}").status_code == 400
        sent["bad"] += 1
    for i in range(3):
        assert infer(url, "broken", "json", {"x": -np.ones((1, 2), np.float32)}, id=f"broken-{i}").status_code == 500
        sent["broken"] += 1
    assert infer(url, "broken", "json", {"x": np.ones((1, 2), np.float32)}).status_code == 200
    return sent


def chrome(browser: str, driver: str, scripts: bool) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2200", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    if not scripts:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


# Each plotly graph: its chart key, model, version, and per trace its name, type and points.
CHART_DATA_JS = """
return Array.from(document.querySelectorAll('.charts .js-plotly-plot'), g => ({
  chart: g.dataset.chart, model: g.closest('.charts').dataset.model, version: g.closest('.charts').dataset.version,
  traces: g.data.map(t => ({name: t.name, type: t.type, x: Array.from(t.x || []).map(String),
                            y: Array.from(t.y || []), colors: t.marker && Array.isArray(t.marker.color) ? t.marker.color : null}))
}));
"""


def test_the_dashboard_in_headless_chromium(browser: tuple[str, str], server: InProcessServer,
                                            tmp_path: Path) -> None:
    browser_path, driver_path = browser
    sent = traffic(server.url)

    def settled() -> bool:
        doc = requests.get(server.url + "/dashboard/data", timeout=10).json()
        rows = {(m["model"], m["version"]): m["summary"] for m in doc["models"]}
        affine = rows.get(("affine", "1"))
        return bool(affine and affine["requests"]["success"] == sent["ok"]
                    and affine["errors"].get("invalid_argument") == sent["bad"]
                    and len(doc["failures"]["records"]) == sent["bad"] + sent["broken"])

    wait_until(settled, 30, "the dashboard to count the traffic")

    driver = chrome(browser_path, driver_path, scripts=True)
    try:
        driver.set_page_load_timeout(60)
        driver.get(server.url + "/dashboard")
        wait_until(lambda: driver.execute_script("return (window.pyserveDashboard || {}).draws || 0") >= 1, 60,
                   "the charts to be drawn")
        charts = driver.execute_script(CHART_DATA_JS)
        shown = driver.execute_script("return window.pyserveDashboard.doc")  # what the charts were drawn from
        # One refresh: new data and the tables swapped in place, without an error.
        wait_until(lambda: driver.execute_script("return window.pyserveDashboard.refreshes") >= 1, 30,
                   "a refresh of the page")
        assert driver.execute_script("return window.pyserveDashboard.lastError") is None
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        console = driver.get_log("browser")
    finally:
        driver.quit()

    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == [], console
    by = {(c["model"], c["version"], c["chart"]): c for c in charts}
    affine = {(m["model"], m["version"]): m for m in shown["models"]}[("affine", "1")]
    assert affine["summary"]["requests"]["success"] == sent["ok"]
    for key in ("throughput", "latency", "queue", "batch_sizes", "errors", "drift"):
        assert ("affine", "1", key) in by, sorted(by)
    throughput = {t["name"]: t for t in by[("affine", "1", "throughput")]["traces"]}
    assert throughput["success req/s"]["y"] == affine["series"]["throughput_rps"]
    assert max(throughput["success req/s"]["y"]) > 0 and len(affine["series"]["time"]) >= 2
    latency = {t["name"]: t for t in by[("affine", "1", "latency")]["traces"]}
    assert latency["p99"]["y"] == affine["series"]["latency_ms"]["p99"]
    assert [v for v in latency["p99"]["y"] if v is not None], latency
    sizes = by[("affine", "1", "batch_sizes")]["traces"][0]
    assert sum(sizes["y"]) == affine["summary"]["batches"] and max(sizes["y"]) > 0
    assert sizes["x"] == [b["label"] for b in affine["summary"]["batch_sizes"]]
    errors = {t["name"]: sum(t["y"]) for t in by[("affine", "1", "errors")]["traces"]}
    assert set(errors) == {"invalid_argument"} and errors["invalid_argument"] > 0
    broken_errors = {t["name"] for t in by[("broken", "1", "errors")]["traces"]}
    assert broken_errors == {"internal"}
    drift = by[("affine", "1", "drift")]["traces"]
    scores = drift[0]
    assert scores["x"] == [f"x x[{i}]" for i in range(4)] and scores["y"][2] == 0.004
    assert scores["colors"][2] != scores["colors"][0]  # the drifted feature stands out
    assert drift[1]["name"] == "threshold" and drift[1]["y"] == [0.05] * 4


def test_the_tables_carry_the_numbers_with_scripts_off(browser: tuple[str, str], server: InProcessServer,
                                                       tmp_path: Path) -> None:
    browser_path, driver_path = browser
    sent = traffic(server.url)

    def settled() -> bool:
        doc = requests.get(server.url + "/dashboard/data", timeout=10).json()
        return len(doc["failures"]["records"]) == sent["bad"] + sent["broken"] and any(
            m["summary"]["requests"]["success"] == sent["ok"] for m in doc["models"] if m["model"] == "affine")

    wait_until(settled, 30, "the dashboard to count the traffic")
    from selenium.common.exceptions import StaleElementReferenceException

    driver = chrome(browser_path, driver_path, scripts=False)
    try:
        # The page reloads itself every 5 s without scripts: read it again if it did while being read.
        for attempt in range(3):
            try:
                driver.get(server.url + "/dashboard")
                read_without_scripts(driver, sent)
                break
            except StaleElementReferenceException:
                if attempt == 2:
                    raise
        driver.save_screenshot(str(tmp_path / "dashboard-noscript.png"))
    finally:
        driver.quit()


def read_without_scripts(driver: Any, sent: dict[str, int]) -> None:
    from selenium.webdriver.common.by import By

    assert driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot") == []
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Scripts are off" in body  # a <noscript>: shown only when scripts are off
    overview = driver.find_element(By.CSS_SELECTOR, "table.overview")
    rows = {r.find_elements(By.TAG_NAME, "td")[0].text: [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in overview.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert rows["affine"][3] == str(sent["ok"])  # requests in the window
    assert rows["affine"][12] == str(sent["bad"])  # errors
    assert rows["affine"][13] == "1 of 4"  # drifted features
    failures = driver.find_element(By.CSS_SELECTOR, "table.failures").text
    for i in range(sent["bad"]):
        assert f"bad-{i}" in failures
    assert "broken-0" in failures and "internal" in failures
    drift = driver.find_element(By.CSS_SELECTOR, "table.drift").text
    assert "x[2]" in drift and "drifted" in drift

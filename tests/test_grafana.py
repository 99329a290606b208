"""The Grafana dashboard (deploy/grafana/pyserve.json): every PromQL query in it parses, names only
metrics a live pyserve exports (a histogram's _bucket, _sum and _count, a counter's _total), matches
only on labels those metrics have, and follows the ``model`` variable."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, infer
from prometheus_client.parser import text_string_to_metric_families

promql_parser = pytest.importorskip("promql_parser", reason="pip install -e '.[test]' (promql-parser)")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "pyserve.json"
# Grafana's variables, replaced before parsing: $model and $version by a value the test recognises.
MODEL = "MODEL_VARIABLE"
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${model}": MODEL, "$model": MODEL,
             "${version}": ".*", "$version": ".*"}
# Metrics without a model label (nothing to filter by the variable).
NO_MODEL_LABEL = {"pyserve_payload_log_queue_depth", "pyserve_payload_log_writer_cpu_seconds_total"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "summary": ("", "_sum", "_count", "_created"),
            "info": ("_info",), "gauge": ("",), "unknown": ("",), "stateset": ("",)}


def queries(node: Any) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets (rows' panels too) and its
    template variables' ``label_values(<selector>, label)`` selectors."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])
        for key, value in node.items():
            if key != "templating":
                found += queries(value)
    elif isinstance(node, list):
        for item in node:
            found += queries(item)
    return found


def variable_queries(doc: dict) -> list[str]:
    out = []
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            text = var["definition"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
            assert match, f"variable {var['name']}: expected label_values(<selector>, label), got {text!r}"
            out.append(match.group(1))
    return out


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[Any]:
    """The vector selectors of ``expr`` (parsed by promql-parser, the Prometheus grammar)."""
    found: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return found


def selector_name(selector: Any) -> str:
    if selector.name:
        return selector.name
    names = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    assert names, f"a selector without a metric name: {selector}"
    return names[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, serve_module: Any) -> dict[str, set[str]]:
    """{sample name: label names seen} of a live server's /metrics, after traffic to a logged model
    (every family is listed, with its samples' names by type, even one with no sample yet)."""
    root = tmp_path_factory.mktemp("grafana")
    repo = Repo(root / "models")
    repo.onnx("affine", config="max_batch_size = 8\n[payload_log]\nsample_rate = 1.0\n")
    server = serve_module([repo.root, "--payload-log-dir", root / "log"])
    for _ in range(3):
        assert infer(server.url, "affine", "json", {"x": np.ones((1, 4), np.float32)}).status_code == 200
    assert infer(server.url, "affine", "json", {"x": np.ones((1, 3), np.float32)}).status_code == 400
    text = requests.get(server.url + "/metrics", timeout=10).text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def documented_drift_metrics() -> set[str]:
    """The drift metrics the docs name: docs/metrics.md (the drift module's own list), and, while the
    drift module is not in this checkout, docs/dashboard.md's list of the names it will export."""
    docs = [ROOT / "docs" / "metrics.md"]
    if importlib.util.find_spec("pyserve.drift") is None:
        docs.append(ROOT / "docs" / "dashboard.md")
    return {n for doc in docs if doc.exists() for n in re.findall(r"`(pyserve_drift_[a-z_]+)", doc.read_text())}


def test_every_query_parses_and_names_exported_metrics(exported: dict[str, set[str]]) -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = queries(doc["panels"]) + variable_queries(doc)
    assert len(exprs) >= 20
    drift = documented_drift_metrics() - set(exported)
    assert {"pyserve_drift_score", "pyserve_drift_detected"} <= drift | set(exported)
    unknown, seen = [], set()
    for expr in exprs:
        for sel in selectors(expr):
            name = selector_name(sel)
            seen.add(name)
            if name not in exported and name not in drift:
                unknown.append((name, expr))
    assert unknown == [], unknown
    # The dashboard covers the core, the errors, the payload log and drift.
    for name in ("pyserve_requests_total", "pyserve_request_duration_seconds_bucket", "pyserve_queue_depth",
                 "pyserve_batch_size_bucket", "pyserve_infer_errors_total", "pyserve_payload_log_records_total",
                 "pyserve_payload_log_queue_depth", "pyserve_drift_score", "pyserve_drift_detected"):
        assert name in seen, name


def test_queries_match_on_labels_the_metrics_have_and_follow_the_model_variable(
        exported: dict[str, set[str]]) -> None:
    doc = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in doc["templating"]["list"]]
    assert "model" in names and "datasource" in names
    for expr in queries(doc["panels"]) + variable_queries(doc)[1:]:
        for sel in selectors(expr):
            name = selector_name(sel)
            matchers = {m.name: m.value for m in sel.matchers.matchers if m.name != "__name__"}
            labels = exported.get(name)
            if labels:  # samples seen: a query may only match on labels the metric has
                assert set(matchers) <= labels, (name, sorted(matchers), sorted(labels), expr)
            if name not in NO_MODEL_LABEL:
                assert matchers.get("model") == MODEL, f"{name} does not follow $model in {expr!r}"


def test_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    panels = [p for p in doc["panels"]] + [c for p in doc["panels"] for c in p.get("panels", [])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]

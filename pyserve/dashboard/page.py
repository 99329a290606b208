"""The dashboard page as HTML, rendered on the server from the document of ``GET /dashboard/data``.

Every number is in a table, so the page works with scripts blocked; ``dashboard.js`` draws the charts
into the ``.charts`` elements and refreshes the elements marked ``data-refresh`` in place. Every text
that comes from outside (model names, errors, inputs, feature names) goes through :func:`html.escape`.
"""

from __future__ import annotations

import datetime
import html
import re
from collections.abc import Iterable, Sequence

from pyserve.dashboard.assets import CHARTS_HINT

PAYLOAD_LOG_OFF = ("The payload log is off, so no failed request is shown here: start the server with "
                   "--payload-log-dir DIR (and give each model a [payload_log] table in its config.toml).")
DRIFT_OFF = ("Drift detection is off on this server, so no drift is shown. It compares each model version's "
             "logged traffic with the version's reference profile (pyserve profile); the payload log must be on "
             "(--payload-log-dir).")
DRIFT_EMPTY = "Drift detection is on, but no feature has a result yet (no reference profile, or no full window)."
SCRIPTS_OFF = "Scripts are off: the charts are not drawn, and the tables carry every number. The page reloads every {s} s."
CHARTS_OFF = ("Charts are off: the plotly package is not installed. " + CHARTS_HINT
              + " and restart the server to get them; the tables carry every number.")
NO_VERSION = "(no version)"
MIN_RELOAD_S = 5  # a page without scripts reloads whole: not more often than this


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def section_id(model: str, version: str, part: str = "") -> str:
    """An HTML id for a model version's elements: the name with every character other than letters,
    digits and ``_`` written as ``-XX`` (its code point in hex), so two names never share an id."""
    def code(m: re.Match[str]) -> str:
        return f"-{ord(m.group()):x}-"

    name = re.sub(r"[^A-Za-z0-9_]", code, model)
    return f"v-{name}--{re.sub(r'[^A-Za-z0-9_]', code, version)}{'--' + part if part else ''}"


def utc(t: float | None, with_date: bool = False) -> str:
    """A Unix time as ``HH:MM:SS`` UTC (with the date when asked); "—" for None."""
    if t is None:
        return "—"
    when = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def num(value: float | int | None, digits: int = 2) -> str:
    """A number for a table cell: integers with thousands separators, others with ``digits``
    significant decimals; "—" for None (nothing to measure)."""
    if value is None:
        return "—"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}"


def duration(seconds: float) -> str:
    """A span of time in words: ``45 s``, ``12 min``, ``1.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", caption: str = "") -> str:
    """An HTML table; ``headers`` are escaped, cells must be HTML already (escape what comes from outside)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="{esc(cls)}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _version_label(version: str) -> str:
    return esc(version) if version else NO_VERSION


def _errors_total(summary: dict) -> int:
    return sum(summary["errors"].values())


def overview(doc: dict) -> str:
    """The table of every model version: requests, throughput, latency, queue, batches, errors, drift."""
    drift = doc["drift"]["features"] if doc["drift"]["enabled"] else []
    rows = []
    for m in doc["models"]:
        s = m["summary"]
        features = [f for f in drift if f["model"] == m["model"] and f["version"] == m["version"]]
        drifted = sum(f["drifted"] for f in features)
        link = f'<a href="#{section_id(m["model"], m["version"])}">{esc(m["model"])}</a>'
        rows.append([
            link, _version_label(m["version"]), ("loaded" if m["loaded"] else "unloaded") if m["version"] else "—",
            num(sum(s["requests"].values())), num(s["throughput_rps"]), num(s["throughput_now_rps"]),
            num(s["latency_ms"]["p50"]), num(s["latency_ms"]["p90"]), num(s["latency_ms"]["p99"]),
            num(s["queue_depth"]), num(s["queue_ms"]["p99"]), num(s["batch_size_mean"]),
            num(_errors_total(s)),
            (f'<span class="bad">{drifted} of {len(features)}</span>' if drifted
             else f"0 of {len(features)}") if features else "—",
        ])
    if not rows:
        return '<p class="note">No model version has been loaded yet.</p>'
    return table(["model", "version", "state", "requests", "req/s (window)", "req/s (now)", "p50 ms", "p90 ms",
                  "p99 ms", "queue depth", "queue p99 ms", "mean batch", "errors", "drifted features"],
                 rows, "overview", f"Every model version over the last {duration(doc['server']['window_s'])}")


def version_tables(m: dict) -> str:
    """The numbers of one model version: requests by outcome, latency and queue time, batch sizes,
    errors by kind."""
    s = m["summary"]
    parts = []
    if m["version"]:
        out = s["requests"]
        parts.append(table(["success", "failure", "timeout", "rejected", "cancelled", "samples/s", "batches"],
                           [[num(out["success"]), num(out["failure"]), num(out["timeout"]), num(out["rejected"]),
                             num(out["cancelled"]), num(s["samples_ps"]), num(s["batches"])]],
                           "outcomes", "Requests by outcome"))
        lat, queue = s["latency_ms"], s["queue_ms"]
        parts.append(table(["", "p50", "p90", "p99", "mean"], [
            ["request (queue to answer)", num(lat["p50"]), num(lat["p90"]), num(lat["p99"]), "—"],
            ["queue", num(queue["p50"]), num(queue["p90"]), num(queue["p99"]), num(queue["mean"])],
            ["compute (per batch)", "—", "—", "—", num(s["compute_ms"]["mean"])],
        ], "latency", f"Time in ms; queue depth now {num(s['queue_depth'])}, in flight {num(s['in_flight'])}"))
        parts.append(table(["batch size", "batches"],
                           [[esc(b["label"]), num(b["batches"])] for b in s["batch_sizes"]],
                           "batch-sizes", f"Batch sizes (mean {num(s['batch_size_mean'])})")
                     if s["batch_sizes"] else '<p class="note">No batch ran in the window.</p>')
    errors = s["errors"]
    parts.append(table(["kind", "errors"], [[esc(k), num(v)] for k, v in errors.items()], "errors",
                       "Errors by kind") if errors else '<p class="note">No error in the window.</p>')
    return "".join(parts)


def minutes_table(m: dict) -> str:
    """The window minute by minute, newest first, inside a ``<details>``."""
    rows = [[utc(r["start"]), num(sum(r["requests"].values())), num(r["throughput_rps"]),
             num(r["latency_ms"]["p50"]), num(r["latency_ms"]["p90"]), num(r["latency_ms"]["p99"]),
             num(r["queue_ms"]["p99"]), num(r["batch_size_mean"]), num(sum(r["errors"].values()))]
            for r in m["minutes"]]
    if not rows:
        return ""
    return ("<details><summary>Minute by minute</summary>"
            + table(["minute (UTC)", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "queue p99 ms",
                     "mean batch", "errors"], rows, "minutes") + "</details>")


def drift_table(features: list[dict]) -> str:
    """One version's features, drifted first."""
    ordered = sorted(features, key=lambda f: not f["drifted"])
    rows = [[esc(f["tensor"]), esc(f["feature"]), esc(f["kind"]), esc(f["method"]), num(f["score"], 3),
             num(f["threshold"], 3), '<span class="bad">drifted</span>' if f["drifted"] else "no",
             num(f["window_rows"]), utc(f["updated"])] for f in ordered]
    drifted = sum(f["drifted"] for f in features)
    return table(["tensor", "feature", "kind", "method", "score", "threshold", "drift", "window rows",
                  "updated (UTC)"], rows, "drift", f"Drift: {drifted} of {len(features)} features drifted")


def failures_section(doc: dict) -> str:
    """The recent failed requests (or why there are none to show)."""
    f = doc["failures"]
    if not f["enabled"]:
        return f'<p class="note off">{esc(f["message"])}</p>'
    parts = []
    if f.get("not_logged"):
        parts.append(f'<p class="note">Not in the payload log (no [payload_log] table): '
                     f'{esc(", ".join(f["not_logged"]))}.</p>')
    if not f["records"]:
        parts.append('<p class="note">No failed request since the server started.</p>')
        return "".join(parts)
    rows = [[utc(r["time"], True), esc(r["model"]), _version_label(r["version"] or ""),
             f'<code>{esc(r["request_id"] or "")}</code>', esc(r["protocol"]), esc(r["status"]),
             esc(r["error"] or ""), f'<code>{esc(r["inputs"])}</code>'] for r in f["records"]]
    parts.append(table(["time (UTC)", "model", "version", "request id", "protocol", "status", "error", "inputs"],
                       rows, "failures", f"The last {len(rows)} failed requests, newest first"))
    return "".join(parts)


def render(doc: dict, static_prefix: str, data_url: str, assets_version: str) -> str:
    """The whole page for ``doc`` (the ``/dashboard/data`` document)."""
    server = doc["server"]
    interval = server["interval_s"]
    reload_s = max(int(round(interval)), MIN_RELOAD_S)
    charts = server["charts"]
    v = esc(assets_version)
    scripts = ""
    if charts is not None:
        scripts += f'<script src="{esc(static_prefix)}plotly.min.js?v={esc(charts["version"])}" defer></script>\n'
    scripts += f'<script src="{esc(static_prefix)}dashboard.js?v={v}" defer></script>\n'
    status = (f"as of {utc(server['time'], True)} UTC · {server['snapshots']} snapshots, one every "
              f"{num(interval)} s, kept for {duration(server['history_s'])} · "
              f"{len(doc['models'])} model versions")
    worker = server.get("worker")
    if worker is not None:
        status += (f" · worker {worker['index']} of {worker['count']}: the figures of the one process that "
                   "answered this page (/metrics sums every worker)")
    if server["snapshots"] < 2:
        status += f" · collecting: the first figures come {num(interval)} s after start"
    notes = "" if charts is not None else f'<p class="note off" id="charts-off">{esc(CHARTS_OFF)}</p>'
    drift = doc["drift"]
    sections = []
    for m in doc["models"]:
        sid = section_id(m["model"], m["version"])
        features = [f for f in drift["features"] if f["model"] == m["model"] and f["version"] == m["version"]]
        if not m["version"] or not drift["enabled"]:  # off: the header says so once
            drift_html = ""
        elif features:
            drift_html = drift_table(features)
        else:
            drift_html = '<p class="note">No drift result for this version yet.</p>'
        title = f"{esc(m['model'])} · version {_version_label(m['version'])}"
        if not m["version"]:
            title = f"{esc(m['model'])} · calls that reached no version"
        elif not m["loaded"]:
            title += " (not loaded now)"
        sections.append(
            f'<section class="version" id="{sid}"><h2>{title}</h2>'
            f'<div id="{sid}--tables" data-refresh>{version_tables(m)}</div>'
            + (f'<div class="charts" data-model="{esc(m["model"])}" data-version="{esc(m["version"])}"></div>'
               if m["version"] else "")
            + f'<div id="{sid}--drift" data-refresh>{drift_html}{minutes_table(m)}</div></section>')
    logs_link = ('· failed requests in the payload log files: <a href="/v2/logs?outcome=failure">'
                 '/v2/logs?outcome=failure</a>\n' if doc["failures"]["enabled"] else "")
    drift_note = "" if drift["enabled"] else f'<p class="note off" id="drift-off">{esc(drift["message"])}</p>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>pyserve dashboard</title>
<link rel="stylesheet" href="{esc(static_prefix)}dashboard.css?v={v}">
<noscript><meta http-equiv="refresh" content="{reload_s}"></noscript>
{scripts}</head>
<body>
<header><h1>pyserve dashboard</h1>
<p id="status" data-refresh>{esc(status)}</p>
<noscript><p class="note off">{esc(SCRIPTS_OFF.format(s=reload_s))}</p></noscript>
{notes}{drift_note}</header>
<main id="dashboard" data-data-url="{esc(data_url)}" data-interval-s="{esc(interval)}">
<section id="overview" data-refresh>{overview(doc)}</section>
{''.join(sections)}
<section id="failures-section"><h2>Recent failed requests</h2>
<div id="failures" data-refresh>{failures_section(doc)}</div></section>
</main>
<footer>The same numbers as JSON: <a href="{esc(data_url)}">{esc(data_url)}</a> · Prometheus: <a href="/metrics">/metrics</a>
{logs_link}· percentiles are estimated from the core's histogram buckets, as Prometheus's histogram_quantile does.</footer>
</body>
</html>
"""

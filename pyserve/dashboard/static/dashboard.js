// The pyserve dashboard's script: draws the charts of GET /dashboard/data with plotly.js into the
// page's .charts elements, and every interval refreshes them and the server-rendered tables (the
// elements marked data-refresh) in place. The page works without it: the tables carry the numbers.
"use strict";

(function () {
  const main = document.getElementById("dashboard");
  if (!main) return;
  const dataUrl = main.dataset.dataUrl;
  // Clamped to [1 s, 1 h]: setTimeout runs a delay over 2^31-1 ms (or Infinity) at once.
  const intervalMs = Math.min(3600, Math.max(1, Number(main.dataset.intervalS) || 5)) * 1000;
  const state = { draws: 0, refreshes: 0, lastError: null, doc: null };
  window.pyserveDashboard = state; // what a test or a curious user can look at

  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
  const ERROR_OUTCOMES = ["failure", "timeout", "rejected", "cancelled"];
  const QUANTILES = ["p50", "p90", "p99"];

  // plotly.js reads a few tags in its text (<b>, <br>): names from outside are shown as text.
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function layout(title, yTitle, extra) {
    return Object.assign({
      title: { text: title, font: { size: 14 }, x: 0.01, xanchor: "left" },
      height: 260,
      margin: { l: 56, r: 56, t: 36, b: 40 },
      xaxis: { type: "date" },
      yaxis: { title: { text: yTitle }, rangemode: "tozero" },
      legend: { orientation: "h", y: -0.22 },
      uirevision: "keep", // a refresh keeps the user's zoom
    }, extra || {});
  }

  function line(x, y, name, extra) {
    // Markers too: an interval between two gaps (one busy snapshot) is a point, not a line.
    return Object.assign({ type: "scatter", mode: "lines+markers", marker: { size: 4 }, x: x, y: y, name: name,
      connectgaps: false }, extra || {});
  }

  // [key, traces, layout] of each chart of one model version.
  function chartsOf(m, features) {
    const s = m.series;
    const x = s.time.map((t) => new Date(t * 1000));
    const out = [];
    const span = x.length ? { type: "date", range: [x[0], x[x.length - 1]] } : { type: "date" };
    const throughput = [line(x, s.throughput_rps, "success req/s"), line(x, s.samples_ps, "samples/s", { line: { dash: "dot" } })];
    for (const k of ERROR_OUTCOMES) {
      if (s.requests_ps[k].some((v) => v > 0)) throughput.push(line(x, s.requests_ps[k], k + " req/s"));
    }
    out.push(["throughput", throughput, layout("Throughput", "per second")]);
    out.push(["latency", QUANTILES.map((q) => line(x, s.latency_ms[q], q)), layout("Request latency (queue to answer)", "ms")]);
    out.push(["queue", [
      line(x, s.queue_ms.p50, "queue time p50"),
      line(x, s.queue_ms.p99, "queue time p99"),
      line(x, s.queue_depth, "queue depth", { yaxis: "y2", line: { shape: "hv", dash: "dot" } }),
    ], layout("Queue", "ms", { yaxis2: { title: { text: "requests" }, overlaying: "y", side: "right", rangemode: "tozero" } })]);
    const sizes = m.summary.batch_sizes;
    out.push(["batch_sizes", [{ type: "bar", x: sizes.map((b) => b.label), y: sizes.map((b) => b.batches), name: "batches" }],
      layout("Batch sizes over the window", "batches", { xaxis: { type: "category", title: { text: "samples per batch" } } })]);
    const kinds = Object.keys(s.errors_ps);
    out.push(["errors", kinds.map((k) => ({ type: "bar", x: x, y: s.errors_ps[k], name: esc(k) })),
      layout("Errors by kind", "per second", {
        barmode: "stack",
        xaxis: span, // the window even when no bar is drawn
        annotations: kinds.length ? [] : [{ text: "no error in the window", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
      })]);
    if (features.length) {
      const names = features.map((f) => esc(f.tensor + " " + f.feature));
      out.push(["drift", [
        { type: "bar", x: names, y: features.map((f) => f.score), name: "score",
          marker: { color: features.map((f) => (f.drifted ? "#d62728" : "#1f77b4")) },
          customdata: features.map((f) => esc(f.method)), hovertemplate: "%{x}<br>%{customdata}: %{y}<extra></extra>" },
        { type: "scatter", mode: "markers", x: names, y: features.map((f) => f.threshold), name: "threshold",
          marker: { symbol: "line-ew-open", size: 16, color: "#333" } },
      ], layout("Drift score per feature (red: drifted)", "score", { xaxis: { type: "category" } })]);
    }
    return out;
  }

  function draw(doc) {
    if (!window.Plotly) return; // plotly is not installed: the page says so; tables only
    for (const box of document.querySelectorAll(".charts")) {
      const m = doc.models.find((v) => v.model === box.dataset.model && v.version === box.dataset.version);
      if (!m) continue;
      const features = doc.drift.features.filter((f) => f.model === m.model && f.version === m.version);
      for (const [key, traces, lay] of chartsOf(m, features)) {
        let div = box.querySelector(`[data-chart="${key}"]`);
        if (!div) {
          div = document.createElement("div");
          div.className = "chart";
          div.dataset.chart = key;
          box.appendChild(div);
        }
        window.Plotly.react(div, traces, lay, PLOT_CONFIG);
      }
    }
    state.doc = doc; // the document the charts show
    state.draws += 1;
  }

  function refreshIds(root) {
    return Array.from(root.querySelectorAll("[data-refresh][id]"), (e) => e.id);
  }

  // Swaps in the server's fresh tables; a model version that came or went reloads the page.
  function swapTables(html) {
    const fresh = new DOMParser().parseFromString(html, "text/html");
    if (refreshIds(fresh).join("\n") !== refreshIds(document).join("\n")) {
      window.location.reload();
      return;
    }
    for (const el of fresh.querySelectorAll("[data-refresh][id]")) {
      const old = document.getElementById(el.id);
      const open = Array.from(old.querySelectorAll("details"), (d) => d.open);
      const node = document.importNode(el, true);
      node.querySelectorAll("details").forEach((d, i) => { d.open = Boolean(open[i]); });
      old.replaceWith(node);
    }
  }

  function showError(message) {
    let el = document.getElementById("refresh-error");
    if (!el) {
      el = document.createElement("p");
      el.id = "refresh-error";
      el.className = "note off";
      document.querySelector("header").appendChild(el);
    }
    el.textContent = message;
    el.hidden = !message;
  }

  async function refresh(withTables) {
    try {
      const resp = await fetch(dataUrl, { cache: "no-store" });
      if (!resp.ok) throw new Error(`${dataUrl}: HTTP ${resp.status}`);
      draw(await resp.json());
      if (withTables) {
        const page = await fetch(window.location.pathname + window.location.search, { cache: "no-store" });
        if (!page.ok) throw new Error(`${window.location.pathname}: HTTP ${page.status}`);
        swapTables(await page.text());
      }
      state.refreshes += 1;
      state.lastError = null;
      showError("");
    } catch (e) {
      // The server may be restarting: say so on the page and try again at the next tick.
      state.lastError = String(e);
      showError(`Refresh failed at ${new Date().toLocaleTimeString()}: ${e.message}; trying again.`);
    }
    window.setTimeout(() => refresh(true), intervalMs);
  }

  refresh(false); // the tables are fresh already: draw the charts now
})();

/* flexgc report page: draws the data embedded in #flexgc-data with Plotly (inlined above, no network).
 * In live mode (`flexgc view`) it polls the viewer for new iterations and redraws.
 * The timeline's bar layout mirrors flexgc.report.data.layout_slot (tests compare the two). */
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("flexgc-data").textContent);
  const TRACES = DATA.timeline_traces;
  const COLORS = DATA.timeline_colors;
  const PALETTE = DATA.palette;
  const POLL_MS = 500;
  const CHART_EVERY_MS = 1000; // live: redraw the charts at most this often (the timeline: every poll)
  const state = { runs: DATA.runs, charts: DATA.charts, targets: DATA.targets, iteration: null, shown: [], renders: 0,
    version: DATA.version };
  const $ = (id) => document.getElementById(id);
  const config = { responsive: true, displaylogo: false };

  function esc(text) {
    const div = document.createElement("div");
    div.textContent = String(text);
    return div.innerHTML;
  }

  function fmt(x, digits) {
    return x === null || x === undefined ? "-" : Number(x).toFixed(digits);
  }

  function color(r) {
    return PALETTE[r % PALETTE.length];
  }

  // ---------------------------------------------------------------------------------------------------- header

  function renderHeader() {
    $("mode").textContent = DATA.live ? "live view" : "report";
    const when = DATA.live ? "live, started " : "made ";
    $("subtitle").textContent = `${when}${DATA.generated} with ${DATA.generator.versions} on ${DATA.generator.machine}` +
      (DATA.live ? "" : " (the page's maker; the run's own versions appear below when its summary records them)");
    $("identity").innerHTML = state.runs.map((run, r) =>
      `<div class="identity"><h3><span class="swatch" style="background:${color(r)}"></span> ${esc(run.label)}</h3>` +
      `<table>${run.identity.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}` +
      (run.model_note ? `<tr><th>model</th><td>${esc(run.model_note)}</td></tr>` : "") +
      (run.error ? `<tr><th>run log</th><td class="error">${esc(run.error)}</td></tr>` : "") + "</table></div>").join("");
    const head = ["run", "iterations", "exact", "approx.", "failed", "mean ms", "median ms", "p90 ms", "model mean ms",
      "measured / model", "mean load", "final loss"];
    const rows = state.runs.map((run) => {
      const s = run.stats;
      return [esc(run.label), s.iterations, s.exact, s.approximate, s.failed, fmt(s.mean_ms, 1), fmt(s.median_ms, 1),
        fmt(s.p90_ms, 1), fmt(s.ideal_mean_ms, 1), fmt(s.measured_over_ideal, 3), fmt(s.mean_load, 3),
        s.final_loss_estimate ? `≈${fmt(s.final_loss, 5)} (estimate)` : fmt(s.final_loss, 5)];
    });
    $("stats").innerHTML = `<tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr>` +
      rows.map((row) => `<tr>${row.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
    renderTargets();
    renderModelRows();
    $("timeline-note").textContent = DATA.timeline_note || "";
    $("footer").textContent = `flexgc ${DATA.live ? "view" : "report"}; schema flexgc.run.v1; ` +
      "all times in ms since the iteration started, on the master's clock.";
  }

  function table(head, rows, nameColumns) {
    const cls = (j) => (j < nameColumns ? ' class="name"' : "");
    return '<table class="figures">' + `<tr>${head.map((h, j) => `<th${cls(j)}>${h}</th>`).join("")}</tr>` +
      rows.map((row) => `<tr>${row.map((c, j) => `<td${cls(j)}>${c}</td>`).join("")}</tr>`).join("") + "</table>";
  }

  // time to target (flexgc.targets): exact runs first, then by time; "never" when not within the run
  function renderTargets() {
    const t = state.targets;
    const box = $("targets");
    if (!t) {
      box.innerHTML = "";
      return;
    }
    if (t.target === null) {
      box.innerHTML = `<h3>Time to target</h3><p class="help">${esc(t.rule)}</p>`;
      return;
    }
    const head = ["rank", "run", "time to target s", "iterations to it", "best full-batch loss", "run s", "exact",
      "approx.", "failed", "why never"];
    const rows = t.rows.map((row, k) => [k + 1, (row.approximate ? "≈ " : "") + esc(row.label),
      row.time_to_target_s === null ? "never" : fmt(row.time_to_target_s, 2),
      row.target_iterations === null ? "-" : row.target_iterations, fmt(row.best_full_batch_loss, 6),
      fmt(row.run_s, 2), row.exact, row.approximate_iterations, row.failed,
      row.time_to_target_s === null ? esc(row.time_to_target_note) : ""]);
    box.innerHTML = `<h3>Time to target loss ${fmt(t.target, 6)}</h3><p class="help">${esc(t.rule)}. Wall-clock ` +
      "seconds from the first iteration until the full-batch loss first reached it (failed iterations count their " +
      "time; an approximate iteration's loss is an estimate and never counts; a parameter snapshot's is evaluated " +
      "on the whole data). ≈: the run stepped on approximate gradients, ranked after the exact runs.</p>" +
      table(head, rows, 2);
  }

  // one run: what its code, CRC(s_max) and uncoded would have needed on its very delays (the demo's rows)
  function renderModelRows() {
    const box = $("model-rows");
    const m = state.runs.length === 1 ? state.runs[0].model_rows : null;
    if (!m || !m.rows.length) {
      box.innerHTML = "";
      return;
    }
    const rows = m.rows.map((r) => [esc(r.scheme), fmt(r.mean_ms, 1),
      r.median_ms === "inf" ? "inf" : fmt(r.median_ms, 1), r.stalls || "-"]);
    box.innerHTML = "<h3>The same delays under other schemes (model)</h3>" +
      table(["scheme", "mean ms", "median ms", "stalls"], rows, 1) +
      '<p class="help">stalls: iterations the scheme could never decode (a worker it cannot do without was ' +
      "unresponsive); the mean is over the others. " + esc(m.saving) + "</p>";
  }

  function renderToggles() {
    const box = $("run-toggles");
    if (state.runs.length < 2) {
      box.innerHTML = "";
      return;
    }
    box.innerHTML = state.runs.map((run, r) =>
      `<label><input type="checkbox" data-run="${r}" ${state.shown.includes(r) ? "checked" : ""}> ` +
      `<span class="swatch" style="background:${color(r)}"></span> ${esc(run.label)}</label>`).join("");
    box.querySelectorAll("input").forEach((input) => input.addEventListener("change", () => {
      state.shown = Array.from(box.querySelectorAll("input:checked")).map((x) => Number(x.dataset.run));
      buildTimelineDivs();
      show(state.iteration);
    }));
  }

  // ---------------------------------------------------------------------------------------------- iterations

  function iterationList() {
    const all = new Set();
    state.runs.forEach((run) => {
      if (DATA.live) run.iteration.forEach((i) => all.add(i));
      else Object.keys(run.timeline).forEach((i) => all.add(Number(i)));
    });
    return Array.from(all).sort((a, b) => a - b);
  }

  function latencyOf(run, i) {
    const j = run.iteration.indexOf(i);
    return j < 0 ? null : run.latency[j];
  }

  function slowestIteration() {
    const list = iterationList();
    const run = state.runs[state.shown.length ? state.shown[0] : 0];
    let best = null;
    let bestLat = -Infinity;
    for (const i of list) {
      const lat = latencyOf(run, i);
      if (lat !== null && lat > bestLat) {
        best = i;
        bestLat = lat;
      }
    }
    return best === null ? list[list.length - 1] : best;
  }

  function nearest(list, i) {
    let best = list[0];
    for (const x of list) if (Math.abs(x - i) < Math.abs(best - i)) best = x;
    return best;
  }

  function step(delta) {
    const list = iterationList();
    if (!list.length) return Promise.resolve();
    const k = list.indexOf(state.iteration);
    const next = k < 0 ? nearest(list, state.iteration || 0) : list[Math.min(list.length - 1, Math.max(0, k + delta))];
    return show(next);
  }

  async function getEntry(r, i) {
    const run = state.runs[r];
    if (run.timeline[i] !== undefined) return run.timeline[i];
    if (!DATA.live || !run.iteration.includes(i)) return null;
    try {
      const resp = await fetch(`api/timeline?run=${r}&i=${i}`, { cache: "no-store" });
      if (!resp.ok) return null;
      run.timeline[i] = await resp.json();
      return run.timeline[i];
    } catch (err) {
      return null;
    }
  }

  // ------------------------------------------------------------------------------------------------ timeline

  // mirrors flexgc.report.data.layout_slot: delay then compute per partition, from the task's send instant
  function layoutSlot(slot) {
    const [sent, , delays, computes, , , , , planned] = slot;
    const bars = { delay: [], compute: [], planned: [] };
    if (sent === null) return bars;
    let t = sent;
    for (let p = 0; p < Math.min(delays.length, computes.length); p++) {
      const d = delays[p] || 0;
      const c = computes[p] || 0;
      bars.delay.push([t, d, p]);
      t += d;
      bars.compute.push([t, c, p]);
      t += c;
    }
    if (planned !== null) bars.planned.push([t, planned < 0 ? Infinity : planned, computes.length]);
    return bars;
  }

  function extent(e) {
    let m = Math.max(e.lat || 0, e.ideal || 0);
    for (const slot of e.w) {
      for (const x of [slot[1], slot[5], slot[6], slot[7], ...slot[4]]) if (x !== null) m = Math.max(m, x);
      const bars = layoutSlot(slot);
      for (const kind of ["delay", "compute", "planned"]) {
        for (const [a, b] of bars[kind]) if (Number.isFinite(b)) m = Math.max(m, a + b);
      }
    }
    return m;
  }

  // the code an entry ran under: the run's, or (adaptive) its plan's partitions and levels
  function planOf(run, e) {
    const plan = e.plan && run.plans ? run.plans[e.plan] : null;
    return plan || { order: run.order, levels: run.levels };
  }

  function levelName(code, level) {
    return code.levels && level < code.levels.length ? `level ${level} (s=${code.levels[level]})` : `level ${level}`;
  }

  function timelineFigure(run, e, xmax) {
    const n = e.w.length;
    const code = planOf(run, e);
    // a lane names its slot and the worker that held it in this iteration (charts.lane_label does the same)
    // a slot the plan gives nothing (room to grow, removed by an elastic plan) says so
    const lanes = Array.from({ length: n }, (_, s) => (e.who && e.who[s] ? `slot ${s} · ${esc(e.who[s])}` :
      code.order && code.order[s] && code.order[s].length === 0 ? `slot ${s} (empty)` : `slot ${s}`));
    const stragglers = new Set(e.stragglers);
    const used = new Map();
    for (let j = 0; j + 2 < e.used.length; j += 3) used.set(`${e.used[j]}:${e.used[j + 1]}`, e.used[j + 2]);
    const bar = (k) => ({ type: "bar", orientation: "h", name: TRACES[k], x: [], y: [], base: [], hovertext: [],
      hoverinfo: "text", marker: { color: COLORS[k], line: { width: 0 } }, opacity: k === 2 ? 0.7 : 1 });
    const mark = (k, symbol) => ({ type: "scatter", mode: "markers", name: TRACES[k], x: [], y: [], hovertext: [],
      hoverinfo: "text", marker: { color: COLORS[k], symbol: symbol, size: n > 32 ? 7 : 10,
        line: { color: COLORS[k], width: 2 } } });
    const traces = [bar(0), bar(1), bar(2), mark(3, "circle"), mark(4, "circle-open"), mark(5, "x"),
      mark(6, "triangle-left"), mark(7, "star")];
    const kinds = { delay: 0, compute: 1, planned: 2 };
    e.w.forEach((slot, s) => {
      const bars = layoutSlot(slot);
      for (const kind of Object.keys(kinds)) {
        const tr = traces[kinds[kind]];
        for (const [start, len, p] of bars[kind]) {
          const part = code.order ? code.order[s][p] : p;
          tr.base.push(start);
          tr.x.push(Number.isFinite(len) ? len : Math.max(xmax - start, 0));
          tr.y.push(lanes[s]);
          const what = kind === "compute" ? `compute ${fmt(len, 2)} ms` : kind === "delay" ?
            `injected delay ${fmt(len, 2)} ms` : Number.isFinite(len) ?
              `injected delay ${fmt(len, 2)} ms, not waited out: the iteration ended` : "unresponsive this iteration";
          tr.hovertext.push(`slot ${s}, partition ${part} (#${p + 1} of its order): ${what}<br>from ${fmt(start, 2)} ms`);
        }
      }
      slot[4].forEach((t, level) => {
        if (t === null) return;
        const key = `${s}:${level}`;
        const tr = traces[used.has(key) ? 3 : 4];
        tr.x.push(t);
        tr.y.push(lanes[s]);
        tr.hovertext.push(`slot ${s}: ${levelName(code, level)} message at ${fmt(t, 2)} ms` +
          (used.has(key) ? `, used with weight ${used.get(key)}` : ", not used"));
      });
      [[5, "cancel sent"], [6, "cancel acknowledged"], [7, "whole task done (flagged)"]].forEach(([field, what]) => {
        if (slot[field] === null) return;
        const tr = traces[field];
        tr.x.push(slot[field]);
        tr.y.push(lanes[s]);
        tr.hovertext.push(`slot ${s}: ${what} at ${fmt(slot[field], 2)} ms`);
      });
    });
    const vline = (k, x, dash) => ({ type: "scatter", mode: "lines", name: TRACES[k], hoverinfo: "text",
      x: x === null ? [] : [x, x], y: x === null ? [] : [lanes[0], lanes[n - 1]],
      hovertext: x === null ? [] : [`${TRACES[k]}: ${fmt(x, 2)} ms`, `${TRACES[k]}: ${fmt(x, 2)} ms`],
      line: { color: COLORS[k], width: 2, dash: dash } });
    traces.push(vline(8, e.lat, "solid"), vline(9, e.ideal, "dash"));
    const lane = n <= 16 ? 26 : n <= 32 ? 16 : 11;
    const layout = {
      title: { text: `${esc(run.label)}: iteration ${e.i}: ${e.outcome}, level ${e.level === null ? "-" : e.level}, ` +
        `${fmt(e.lat, 1)} ms (model ideal ${fmt(e.ideal, 1)} ms), stragglers ${e.stragglers.join(",") || "-"}`,
        font: { size: 13 } },
      height: 150 + lane * n, barmode: "overlay", bargap: 0.35, hovermode: "closest",
      margin: { l: 110, r: 20, t: 40, b: 40 }, legend: { font: { size: 10 } },
      modebar: { orientation: "v" },  // upright at the right edge: across the top it covered the title
      xaxis: { title: { text: "ms since the iteration started (master clock)" }, range: [0, xmax], zeroline: false },
      yaxis: { type: "category", categoryorder: "array", categoryarray: lanes, autorange: "reversed", automargin: true,
        tickvals: lanes, ticktext: lanes.map((l, s) => (stragglers.has(s) ? `${l} (straggler)` : l)),
        fixedrange: true },
      template: DATA.template,
    };
    return { data: traces, layout: layout };
  }

  function buildTimelineDivs() {
    const box = $("timelines");
    box.innerHTML = state.shown.map((r) =>
      `<div class="timeline" data-run="${r}"><div class="missing" id="tl-missing-${r}" hidden></div>` +
      `<div id="tl-${r}"></div></div>`).join("");
  }

  function drawTimeline(r, entry, xmax) {
    const div = $(`tl-${r}`);
    const missing = $(`tl-missing-${r}`);
    if (!div) return;
    if (!entry) {
      Plotly.purge(div);
      div.dataset.iteration = "";
      div.dataset.computeBars = "0";
      div.dataset.lanes = "0";
      missing.hidden = false;
      missing.textContent = `${state.runs[r].label}: no timeline for iteration ${state.iteration} in this run`;
      return Promise.resolve();
    }
    missing.hidden = true;
    const fig = timelineFigure(state.runs[r], entry, xmax);
    div.dataset.iteration = String(entry.i);
    div.dataset.computeBars = String(fig.data[1].x.length);
    div.dataset.lanes = String(entry.w.length);
    return Plotly.react(div, fig.data, fig.layout, config);
  }

  async function show(i) {
    const list = iterationList();
    if (!list.length) return;
    if (i === null || i === undefined || !list.includes(i)) i = nearest(list, i === null || i === undefined ? 0 : i);
    state.iteration = i;
    $("iteration").value = i;
    $("position").textContent = `iteration ${i}: #${list.indexOf(i) + 1} of the ${list.length} iterations ` +
      "that keep a timeline";
    const entries = await Promise.all(state.shown.map((r) => getEntry(r, i)));
    if (state.iteration !== i) return; // a newer request won
    const xmax = Math.max(1, ...entries.filter(Boolean).map(extent)) * 1.04;
    await Promise.all(state.shown.map((r, j) => drawTimeline(r, entries[j], xmax)));
    state.renders += 1;
    document.body.dataset.iteration = String(i);
    document.body.dataset.renders = String(state.renders);
  }

  // -------------------------------------------------------------------------------------------------- charts

  let chartsDrawnAt = 0;
  let chartsTimer = null;
  const onScreen = new Set(); // chart keys in or near the viewport
  const stale = new Set(); // chart keys whose data changed while off screen
  const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const key = entry.target.dataset.key;
      if (entry.isIntersecting) {
        onScreen.add(key);
        if (stale.has(key)) drawChart(key);
      } else {
        onScreen.delete(key);
      }
    }
  }, { rootMargin: "200px" }) : null;

  // live: at most one chart redraw per CHART_EVERY_MS, the last one always; off-screen charts wait until
  // they scroll into view (a redraw of all eight costs ~0.15 s of the browser's main thread)
  function scheduleCharts() {
    if (chartsTimer !== null) return;
    const wait = Math.max(0, chartsDrawnAt + CHART_EVERY_MS - Date.now());
    chartsTimer = setTimeout(() => {
      chartsTimer = null;
      renderCharts(false);
    }, wait);
  }

  function drawChart(key) {
    const chart = state.charts.find((c) => c.key === key);
    const div = $(`chart-${key}`);
    stale.delete(key);
    if (!chart || !div) return;
    Plotly.react(div, chart.data, Object.assign({ template: DATA.template }, chart.layout), config);
    if (chart.key === "latency" && !div.dataset.bound) {
      div.dataset.bound = "1";
      div.on("plotly_click", (ev) => {
        if (ev.points && ev.points.length) show(Number(ev.points[0].x));
      });
    }
  }

  function renderCharts(all) {
    chartsDrawnAt = Date.now();
    const box = $("charts");
    for (const chart of state.charts) {
      let div = $(`chart-${chart.key}`);
      if (!div) {
        div = document.createElement("div");
        div.id = `chart-${chart.key}`;
        div.className = "chart";
        div.dataset.key = chart.key;
        div.title = chart.note || "";
        box.appendChild(div);
        if (observer) observer.observe(div);
      }
      if (all || !observer || onScreen.has(chart.key)) drawChart(chart.key);
      else stale.add(chart.key);
    }
  }

  // ---------------------------------------------------------------------------------------------------- live

  function merge(update) {
    update.runs.forEach((meta, r) => {
      const old = state.runs[r];
      const cache = !old || old.generation !== meta.generation ? {} : old.timeline; // rewritten: start over
      Object.assign(cache, meta.timeline);
      meta.timeline = cache;
      state.runs[r] = meta;
    });
    state.charts = update.charts;
    state.targets = update.targets || state.targets;
    state.version = update.version;
    renderHeader();
    scheduleCharts();
  }

  async function poll() {
    let next = POLL_MS;
    try {
      const have = state.runs.map((run) => run.iteration.length).join(",");
      const resp = await fetch(`api/data?v=${state.version}&have=${have}`, { cache: "no-store" });
      if (resp.ok) {
        const update = await resp.json();
        if (update.changed) {
          merge(update);
          const list = iterationList();
          if ($("follow").checked && list.length) await show(list[list.length - 1]);
          else if (state.iteration === null && list.length) await show(list[list.length - 1]);
        }
        $("subtitle").dataset.lastPoll = String(Date.now());
      }
    } catch (err) {
      next = 2000; // the viewer stopped: keep the page, try now and then
    }
    setTimeout(poll, next);
  }

  // ---------------------------------------------------------------------------------------------------- start

  function bind() {
    $("prev").addEventListener("click", () => step(-1));
    $("next").addEventListener("click", () => step(1));
    $("slowest").addEventListener("click", () => show(slowestIteration()));
    $("latest").addEventListener("click", () => {
      const list = iterationList();
      if (list.length) show(list[list.length - 1]);
    });
    $("iteration").addEventListener("change", (ev) => show(Number(ev.target.value)));
    document.addEventListener("keydown", (ev) => {
      if (ev.target && ev.target.tagName === "INPUT") return;
      if (ev.key === "ArrowLeft") step(-1);
      else if (ev.key === "ArrowRight") step(1);
      else if (ev.key === "s") show(slowestIteration());
    });
    $("follow-label").hidden = !DATA.live;
    $("follow").addEventListener("change", () => {
      const list = iterationList();
      if ($("follow").checked && list.length) show(list[list.length - 1]);
    });
  }

  async function start() {
    state.shown = state.runs.length <= 4 ? state.runs.map((_, r) => r) : [0, 1, 2];
    renderHeader();
    renderToggles();
    buildTimelineDivs();
    bind();
    renderCharts(true);
    const list = iterationList();
    if (list.length) await show(DATA.live ? list[list.length - 1] : slowestIteration());
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "1";
    if (DATA.live) setTimeout(poll, POLL_MS);
  }

  window.flexgc = { state, show, step, slowestIteration, iterationList, layoutSlot, timelineFigure };
  start();
})();

// PruningBench platform pages: hand-written, no framework. Every change goes through the JSON API.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const csrf = () => ($('meta[name="csrf-token"]') || {}).content || "";

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status; this.field = body.field || null;
  }
}

async function api(method, url, body) {
  const opts = { method, headers: { "X-PBench-CSRF": csrf() }, credentials: "same-origin" };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const res = await fetch(url, opts);
  const text = await res.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { error: text.slice(0, 300) }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const clock = (t) => new Date(t * 1000).toTimeString().slice(0, 8);

// ---------------------------------------------------------------------------------------------- session
function initSession() {
  const login = $("#login");
  if (login) login.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const row = $('[data-field="token"]', login);
    try {
      await api("POST", "/api/session", { token: $("#token").value });
      location.href = login.dataset.next || "/";
    } catch (e) { $(".error", row).textContent = e.message; row.classList.add("invalid"); }
  });
  const logout = $("#logout");
  if (logout) logout.addEventListener("click", async (ev) => {
    ev.preventDefault();
    try { await api("DELETE", "/api/session"); } finally { location.href = "/login"; }
  });
}

// ---------------------------------------------------------------------------------------------- builder
function parseList(raw, cast, field) {
  const items = raw.split(",").map((s) => s.trim()).filter(Boolean);
  if (!items.length) return null;
  const out = items.map(cast);
  if (out.some((v) => Number.isNaN(v))) throw new ApiError(422, { field, error: `${field}: cannot parse '${raw}' (expected a comma-separated list of numbers)` });
  return out;
}

function parseHp(raw, field) {
  const out = {};
  for (const line of raw.split(/\n|;/).map((s) => s.trim()).filter(Boolean)) {
    const i = line.indexOf("=");
    if (i <= 0) throw new ApiError(422, { field, error: `${field}: expects name=value, got '${line}'` });
    const value = line.slice(i + 1).trim();
    try { out[line.slice(0, i).trim()] = JSON.parse(value); } catch (e) { out[line.slice(0, i).trim()] = value; }
  }
  return out;
}

function collectPlan(form) {
  const checked = (name) => $$(`input[name="${name}"]:checked`, form).map((i) => i.value);
  const trackFile = $("#track_file") ? $("#track_file").value.trim() : "";
  const track = trackFile || $("#track").value || null;
  const timeout = $("#call_timeout").value.trim();
  const plan = {
    label: $("#label").value.trim(), track,
    model: track ? null : ($("#model").value.trim() || null), dataset: track ? null : ($("#dataset").value.trim() || null),
    methods: checked("methods"), regularizers: checked("regularizers"),
    speedups: parseList($("#speedups").value, Number, "speedups"), seeds: parseList($("#seeds").value, (s) => (/^-?\d+$/.test(s) ? Number(s) : NaN), "seeds"),
    strategy: $("#strategy").value || null, runner: $("#runner").value, device: $("#device").value,
    hyperparameters: parseHp($("#hyperparameters").value, "hyperparameters"),
    reg_hyperparameters: parseHp($("#reg_hyperparameters").value, "reg_hyperparameters"),
    call_timeout: timeout ? Number(timeout) : null, save_models: $("#save_models").checked, retry_failed: $("#retry_failed").checked,
  };
  if (!plan.methods.length) throw new ApiError(422, { field: "methods", error: "methods: check at least one importance method" });
  if (!plan.regularizers.length) plan.regularizers = ["-"];
  if (plan.call_timeout !== null && Number.isNaN(plan.call_timeout)) throw new ApiError(422, { field: "call_timeout", error: "call_timeout: a number of seconds" });
  return plan;
}

function showFieldError(form, e) {
  $$(".form-row", form).forEach((r) => { r.classList.remove("invalid"); $(".error", r).textContent = ""; });
  $("#form-error").textContent = "";
  if (!e) return;
  const row = e.field && $(`.form-row[data-field="${e.field}"]`, form);
  if (row) {
    row.classList.add("invalid"); $(".error", row).textContent = e.message;
    const details = row.closest("details"); if (details) details.open = true;
  } else $("#form-error").textContent = e.message;
}

function initBuilder() {
  const form = $("#builder");
  if (!form) return;
  const tracks = JSON.parse($("#tracks-data").textContent);
  const dry = $("#dry");
  const describe = () => {
    const t = tracks[$("#track").value];
    $("#track-help").textContent = t ? `${t.description} · default speedups ${t.speedups.map((s) => s + "x").join(", ")}, seeds ${t.seeds.join(", ")}, ${t.strategy}, retrain ${t.retrain_epochs} epochs · ${t.records} records` : "";
    $("#speedups").placeholder = t ? `the track's: ${t.speedups.join(", ")}` : "e.g. 2, 4, 8";
    $("#seeds").placeholder = t ? `the track's: ${t.seeds.join(", ")}` : "e.g. 0, 1, 2";
  };
  let timer = null, seq = 0;
  const check = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      try {
        const plan = collectPlan(form);
        const r = await api("POST", "/api/plans?dry_run=true", plan);
        if (mine !== seq) return;
        showFieldError(form, null);
        dry.className = "summary-line";
        dry.textContent = `${r.runs} runs on ${r.track} at ${r.targets.map((s) => s + "x").join(", ")}, seeds ${r.seeds.join(", ")}: ${r.new} to run, ${r.runs - r.new} already recorded (skipped).`;
      } catch (e) {
        if (mine !== seq) return;
        showFieldError(form, e); dry.className = "summary-line bad"; dry.textContent = "Not a valid plan yet (see the field marked in red).";
      }
    }, 250);
  };
  $$("[data-all]", form).forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); $$(`input[name="${a.dataset.all}"]`, form).forEach((i) => (i.checked = true)); check(); }));
  $$("[data-none]", form).forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); $$(`input[name="${a.dataset.none}"]`, form).forEach((i) => (i.checked = false)); check(); }));
  $("#track").addEventListener("change", describe);
  form.addEventListener("input", check);
  form.addEventListener("change", check);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("#submit");
    button.disabled = true;
    try {
      const out = await api("POST", "/api/plans", collectPlan(form));
      location.href = `/plans/${out.plan.id}`;
    } catch (e) { showFieldError(form, e); button.disabled = false; }
  });
  describe(); check();
}

// ---------------------------------------------------------------------------------------------- plan page
function initPlan() {
  const root = $("#plan");
  if (!root) return;
  const id = root.dataset.plan;
  const log = $("#plan-log");
  const cancelPlan = $("#cancel-plan");
  if (cancelPlan) cancelPlan.addEventListener("click", async () => {
    if (!confirm("Cancel this task? Runs in flight are recorded as cancelled; no further run starts.")) return;
    cancelPlan.disabled = true;
    try { await api("POST", `/api/plans/${id}/cancel`); } catch (e) { alert(e.message); cancelPlan.disabled = false; }
  });
  $$("[data-cancel]", root).forEach((b) => b.addEventListener("click", async () => {
    b.disabled = true;
    try { await api("POST", `/api/runs/${b.dataset.cancel}/cancel`); } catch (e) { alert(e.message); b.disabled = false; }
  }));
  if (!["queued", "running"].includes(root.dataset.state)) return;
  log.textContent = "";
  const es = new EventSource(`/api/plans/${id}/events`);
  es.addEventListener("run", (m) => {
    const r = JSON.parse(m.data);
    const row = $(`tr[data-key="${r.key}"]`, root);
    if (!row) return;
    const badge = $('[data-col="status"]', row);
    badge.textContent = r.status; badge.className = `badge ${r.status.replace(" ", "-")}`;
    $('[data-col="stage"]', row).textContent = r.status === "running" && r.stage ? `${r.stage} ${r.done}/${r.total}` : "";
    const pct = r.status === "ok" ? 100 : r.total ? (100 * r.done) / r.total : 0;
    $('[data-col="bar"]', row).style.width = `${pct}%`;
    $('[data-col="final"]', row).textContent = fmt(r.final);
    $('[data-col="error"]', row).textContent = r.error || "";
    row.classList.toggle("notok", ["failed", "cancelled"].includes(r.status));
    const cancel = $("[data-cancel]", row);
    if (cancel) cancel.style.display = ["queued", "running"].includes(r.status) ? "" : "none";
  });
  es.addEventListener("log", (m) => { log.textContent += JSON.parse(m.data); log.scrollTop = log.scrollHeight; });
  es.addEventListener("plan", (m) => {
    const p = JSON.parse(m.data);
    const badge = $("#plan-state");
    badge.textContent = p.state; badge.className = `badge ${p.state}`;
    $("#counts").textContent = Object.entries(p.counts).map(([k, v]) => `${v} ${k}`).join(" · ");
    if (p.error) $("#plan-error").innerHTML = `<div class="alert"><b>The task failed</b>${esc(p.error)}</div>`;
    if (!["queued", "running"].includes(p.state) && cancelPlan) cancelPlan.style.display = "none";
  });
  es.addEventListener("done", () => es.close());
}

// ---------------------------------------------------------------------------------------------- run page
const STAGE_ORDER = ["pretrain", "sparsify", "prune", "evaluate", "retrain"];
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1"];

function lossChart(series) {
  // series: {stage: [[epoch, loss], ...]} -> a small SVG line chart
  const names = Object.keys(series).filter((k) => series[k].length);
  if (!names.length) return '<span class="muted">no training epochs yet</span>';
  const W = 560, H = 260, L = 52, R = 12, T = 12, B = 36;
  const xs = names.flatMap((n) => series[n].map((p) => p[0])), ys = names.flatMap((n) => series[n].map((p) => p[1]));
  const x0 = 0, x1 = Math.max(...xs, 1), y0 = Math.min(...ys, 0), y1 = Math.max(...ys) * 1.05 || 1;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  let svg = `<svg class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">`;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg += `<line x1="${L}" x2="${W - R}" y1="${py(y)}" y2="${py(y)}" class="grid"/><text x="${L - 6}" y="${py(y) + 4}" class="tick" text-anchor="end">${y.toFixed(2)}</text>`;
  }
  const step = Math.max(1, Math.ceil(x1 / 10));
  for (let x = 0; x <= x1; x += step) svg += `<text x="${px(x)}" y="${H - B + 15}" class="tick" text-anchor="middle">${x}</text>`;
  svg += `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" class="frame"/>`;
  svg += `<text x="${(L + W - R) / 2}" y="${H - 6}" class="label" text-anchor="middle">epoch</text>`;
  svg += `<text transform="translate(13 ${(T + H - B) / 2}) rotate(-90)" class="label" text-anchor="middle">mean training loss</text>`;
  names.forEach((n, i) => {
    const c = PALETTE[i % PALETTE.length], pts = series[n];
    svg += `<path d="${pts.map((p, j) => `${j ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join("")}" fill="none" stroke="${c}" stroke-width="2"/>`;
    pts.forEach((p) => (svg += `<circle cx="${px(p[0]).toFixed(1)}" cy="${py(p[1]).toFixed(1)}" r="3" fill="${c}"><title>${n} epoch ${p[0]}: loss ${p[1].toFixed(4)}</title></circle>`));
  });
  svg += "</svg>";
  const legend = names.map((n, i) => `<li><span class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></span>${esc(n)}</li>`).join("");
  return `<div class="figure">${svg}<ul class="legend">${legend}</ul></div>`;
}

function eventLine(e) {
  const t = clock(e.t);
  if (e.kind === "start") return `${t} start: ${e.name} ${e.speedup}x seed ${e.seed} on ${e.track} (pid ${e.pid} on ${e.host})`;
  if (e.kind === "end") return `${t} end: ${e.status}${e.error ? ": " + e.error : ""}${e.final != null ? ` (final ${fmt(e.final)})` : ""}`;
  const extra = [];
  if (e.loss !== undefined) extra.push(`loss ${fmt(e.loss, 4)}`);
  if (e.lr !== undefined) extra.push(`lr ${Number(e.lr).toPrecision(3)}`);
  if (e.speedup !== undefined) extra.push(`speedup ${fmt(e.speedup)}x`);
  if (e.macs !== undefined) extra.push(`MACs ${(e.macs / 1e6).toFixed(2)}M`);
  for (const k of ["base", "pruned", "final"]) if (e[k] !== undefined) extra.push(`${k} ${e.metric || ""} ${fmt(e[k])}`);
  const unit = ["pretrain", "sparsify", "retrain"].includes(e.stage) ? "epoch" : e.stage === "prune" ? "round" : "step";
  return `${t} ${e.stage} ${unit} ${e.done}/${e.total}${extra.length ? ": " + extra.join(", ") : ""}`;
}

function initRun() {
  const root = $("#run");
  if (!root) return;
  const key = root.dataset.key, wasLive = root.dataset.live === "1";
  // a finished run's page shows its record (rendered by the server) until live events replace it
  const fromRecord = root.dataset.record === "1" && !wasLive;
  const log = $("#run-log");
  const cancel = $("#cancel-run");
  if (cancel) cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try { const r = await api("POST", `/api/runs/${key}/cancel`); cancel.textContent = `Cancelling (${r.result})…`; }
    catch (e) { alert(e.message); cancel.disabled = false; }
  });
  let stages = {}, loss = {}, probes = [], metrics = {}, lines = [];
  window.pbenchLatencies = [];
  const opened = Date.now() / 1000;
  const render = () => {
    const names = Object.keys(stages).sort((a, b) => STAGE_ORDER.indexOf(a) - STAGE_ORDER.indexOf(b));
    if (!(fromRecord && !names.length)) $("#stages").innerHTML = names.length ? names.map((s) => {
      const st = stages[s], pct = st.total ? (100 * st.done) / st.total : 0;
      const info = st.loss !== undefined ? `loss ${fmt(st.loss, 4)}` : st.speedup !== undefined ? `${fmt(st.speedup)}x` : "";
      return `<span class="name">${esc(s)}</span><div class="bar"><i style="width:${pct}%"></i></div><span class="info">${st.done}/${st.total}</span><span class="info">${esc(info)}</span>`;
    }).join("") : '<span class="muted" style="grid-column: 1 / -1">waiting for events…</span>';
    if (!fromRecord) $("#metrics").innerHTML = ["base", "pruned", "final"].map((k) => `<div>${k === "pruned" ? "after pruning" : k}</div><div><b>${fmt(metrics[k])}</b> ${metrics.name || ""}</div>`).join("");
    if (!(fromRecord && !probes.length)) $("#probes").innerHTML = probes.length ? `<table class="data"><thead><tr><th>round</th><th>MACs</th><th>speedup</th></tr></thead><tbody>${probes.map((p) => `<tr><td>${p.done}/${p.total}</td><td>${(p.macs / 1e6).toFixed(2)}M</td><td>${fmt(p.speedup)}x</td></tr>`).join("")}</tbody></table>` : '<span class="muted">none yet</span>';
    if (!(fromRecord && !Object.keys(loss).length)) $("#loss-chart").innerHTML = lossChart(loss);
    log.textContent = lines.join("\n");
    log.scrollTop = log.scrollHeight;
  };
  const es = new EventSource(`/api/runs/${key}/events`);
  let pending = false;
  const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } };
  const onEvent = (m) => {
    const e = JSON.parse(m.data);
    if (e.t >= opened) {
      window.pbenchLatencies.push(Date.now() / 1000 - e.t);
      if (wasLive) sessionStorage.setItem(`pbenchLatencies:${key}`, JSON.stringify(window.pbenchLatencies));
    }
    if (e.kind === "start") {
      stages = {}; loss = {}; probes = []; metrics = {};
      if (wasLive) { const badge = $("#run-status"); badge.textContent = "running"; badge.className = "badge running"; }
    }
    if (e.kind === "progress") {
      if (e.stage !== "evaluate") stages[e.stage] = e;  // (evaluations show under Accuracy)
      if (e.loss !== undefined) (loss[e.stage] = loss[e.stage] || []).push([e.done, e.loss]);
      if (e.stage === "prune") probes.push(e);
      if (e.stage === "evaluate") { for (const k of ["base", "pruned", "final"]) if (e[k] !== undefined) metrics[k] = e[k]; metrics.name = e.metric; }
    }
    if (e.kind === "end") {
      const badge = $("#run-status");
      badge.textContent = e.status; badge.className = `badge ${e.status}`;
      if (e.error && wasLive) $("#run-error").innerHTML = `<div class="alert"><b>${e.status === "cancelled" ? "Cancelled" : "This run failed"}</b>${esc(e.error)}</div>`;
      if (cancel) cancel.style.display = "none";
    }
    lines.push(eventLine(e));
    const lat = window.pbenchLatencies;
    if (lat.length) {
      const sorted = [...lat].sort((a, b) => a - b);
      $("#latency").textContent = `event latency (run progress → this page): median ${(1000 * sorted[Math.floor(sorted.length / 2)]).toFixed(0)} ms over ${lat.length} live events`;
    }
    schedule();
  };
  for (const kind of ["start", "progress", "end"]) es.addEventListener(kind, onEvent);
  es.addEventListener("done", (m) => {
    es.close();
    const status = JSON.parse(m.data).status;
    if (wasLive && !["queued", "running"].includes(status)) setTimeout(() => location.reload(), 600);
  });
}

// ---------------------------------------------------------------------------------------------- leaderboard
function initBoard() {
  const filters = $("#filters");
  if (filters) filters.addEventListener("change", () => filters.submit());
  const button = $("#compare");
  if (!button) return;
  const picked = () => $$("input.cmp:checked").map((i) => i.value);
  document.addEventListener("change", (ev) => { if (ev.target.classList.contains("cmp")) button.disabled = picked().length < 2; });
  button.addEventListener("click", () => { location.href = `/compare?runs=${picked().join(",")}`; });
}

// ---------------------------------------------------------------------------------------------- uploads
function initUploads() {
  for (const [id, url] of [["upload-method", "/api/uploads/methods"], ["upload-model", "/api/uploads/models"]]) {
    const form = $(`#${id}`);
    if (!form) continue;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = $(`[data-result="${id}"]`);
      out.style.color = "";
      out.textContent = "uploading and checking…";
      try {
        const r = await api("POST", url, new FormData(form));
        out.style.color = "var(--ok)";
        out.textContent = r.reference ? `kept as ${r.reference}: ${r.architecture} on ${r.dataset}, ${r.params.toLocaleString()} parameters` : `kept as upload:${r.name} (${r.status}: ${r.detail})`;
        setTimeout(() => location.reload(), 1200);
      } catch (e) { out.style.color = "var(--fail)"; out.textContent = `refused (${e.status}): ${e.message}`; }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  initSession(); initBuilder(); initPlan(); initRun(); initBoard(); initUploads();
});

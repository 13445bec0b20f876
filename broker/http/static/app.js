// jobq dashboard: plain DOM + SVG, no dependencies. Data from the dispatcher's JSON API;
// live updates from /api/events (server-sent events, read with fetch so that the request can
// carry the token), with a slow poll as a safety net.
// The API token (JOBQ_HTTP_TOKEN) lives in sessionStorage for this tab only: it comes from the
// URL fragment (#token=..., which browsers never send to the server; `jobq up` prints such a
// link) or from the form the page shows when the API answers 401. It is sent only as
// `Authorization: Bearer`, never in a URL.
"use strict";

const STATES = ["queued", "running", "succeeded", "dead", "cancelled"];
const COLORS = { queued: "#9aa5b1", running: "#3b82f6", succeeded: "#16a34a", dead: "#dc2626",
                 cancelled: "#a855f7", failed: "#dc2626", pending: "#f59e0b", creating: "#cbd2d9" };
const REASON_COLORS = ["#ef4444", "#f59e0b", "#3b82f6", "#8b5cf6", "#10b981", "#ec4899", "#14b8a6",
                       "#6366f1", "#84cc16", "#f97316"];
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const reasonColor = {};
const view = { jobId: null, refreshing: false, again: false, timer: null, logAttempt: null, stream: null,
               // Job pages: the cursor of the page shown (null: the newest), those of the pages
               // before it, and the next page's (GET /api/jobs pages by cursor, newest first).
               jobCursor: null, jobCursors: [], nextCursor: null, jobOffset: 0 };
const TOKEN_KEY = "jobq-token";
const PROGRESS_POLL_MS = 2000;  // pods store progress at most every 2 s (docs/design/progress.md)

// --- helpers -----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function fill(tbody, rows, columns, empty) {
  clear(tbody);
  if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty)));
  else tbody.append(...rows);
}

function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : "-"; }
function ago(iso) {
  if (!iso) return "-";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  return s < 1 ? "now" : s < 90 ? `${s.toFixed(0)}s ago` : `${(s / 60).toFixed(0)}m ago`;
}
function secs(v) { return v === null || v === undefined ? "-" : `${Number(v).toFixed(v < 10 ? 2 : 1)}s`; }
function colorFor(reason) {
  if (!(reason in reasonColor)) {
    reasonColor[reason] = REASON_COLORS[Object.keys(reasonColor).length % REASON_COLORS.length];
  }
  return reasonColor[reason];
}

// --- the API token ----------------------------------------------------------------------

function takeTokenFromFragment() {
  const match = location.hash.match(/^#token=([^&]+)$/);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(body) {
  const wrong = body && body.error === "invalid_token";
  if (wrong) sessionStorage.removeItem(TOKEN_KEY);
  $("token-msg").textContent = wrong
    ? "That token was refused: it is not this dispatcher's API token. Enter the right one."
    : "This dispatcher requires its API token (JOBQ_HTTP_TOKEN; `jobq up` keeps it in <data dir>/http-token).";
  $("token-msg").className = wrong ? "error" : "muted";
  const panel = $("auth");
  if (panel.hidden) { panel.hidden = false; $("token-input").focus(); }
  const live = $("live");
  live.textContent = "locked"; live.className = "badge bad";
}

function useToken(event) {
  event.preventDefault();
  const given = $("token-input").value.trim();
  if (!given) return;
  sessionStorage.setItem(TOKEN_KEY, given);
  $("token-input").value = "";
  $("auth").hidden = true;
  refresh();
  connect();
}

async function api(path, options) {
  const opts = options || {};
  const response = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) askForToken(body);
    const error = new Error(body.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function mutate(path) { return api(path, { method: "POST" }); }

async function download(path, name) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) askForToken(body);
    throw new Error(body.message || `${response.status} ${response.statusText}`);
  }
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// --- rendering ---------------------------------------------------------------------------

function renderStatus(ready, ok) {
  const leader = $("leader");
  leader.textContent = ready.leader ? "leader" : "standby";
  leader.className = `badge ${ready.leader ? "ok" : "warn"}`;
  const nats = $("nats");
  nats.textContent = ready.nats_connected ? "NATS connected" : "NATS disconnected";
  nats.className = `badge ${ready.nats_connected ? "ok" : "bad"}`;
  $("updated").textContent = ok ? `updated ${new Date().toLocaleTimeString()}` : "update failed";
}

function renderCounts(q) {
  const cards = clear($("count-cards"));
  for (const state of STATES) {
    cards.append(el("div", { class: `card ${state}`, "data-state": state },
      el("div", { class: "n" }, q.totals[state] || 0), el("div", { class: "label" }, state)));
  }
  cards.append(el("div", { class: "card dead" }, el("div", { class: "n" }, q.dead_letters || 0),
    el("div", { class: "label" }, "dead letters")));
  const bar = clear($("count-bar"));
  const total = STATES.reduce((n, s) => n + (q.totals[s] || 0), 0);
  let x = 0;
  for (const state of STATES) {
    const w = total ? (600 * (q.totals[state] || 0)) / total : 0;
    if (w > 0) {
      const rect = svg("rect", { x, y: 0, width: w, height: 18, fill: COLORS[state] });
      rect.append(svg("title", {}, `${state}: ${q.totals[state]}`));
      bar.append(rect);
    }
    x += w;
  }
  const rows = q.queues.map((row) => el("tr", { "data-queue": row.queue },
    el("td", {}, row.queue), el("td", {}, row.depth), el("td", {}, row.pending), el("td", {}, row.queued),
    el("td", {}, row.running), el("td", {}, row.jobs.succeeded), el("td", {}, row.jobs.dead),
    el("td", {}, row.jobs.cancelled),
    el("td", {}, Object.entries(row.retries).map(([k, v]) => `${k}=${v}`).join(", ") || "-")));
  fill($("queues").tBodies[0], rows, 9, "no queues yet");
  const select = $("filter-queue");
  const known = new Set([...select.options].map((o) => o.value));
  for (const row of q.queues) if (!known.has(row.queue)) select.append(el("option", {}, row.queue));
}

function renderRetries(timeline) {
  const chart = clear($("retry-chart"));
  const legend = clear($("retry-legend"));
  const series = Object.entries(timeline.series).sort();
  const buckets = series.length ? series[0][1].length : 30;
  const totals = Array.from({ length: buckets }, (_, i) => series.reduce((n, [, v]) => n + v[i], 0));
  const max = Math.max(1, ...totals);
  const left = 30, top = 8, width = 560, height = 140, step = width / buckets;
  $("retry-window").textContent = `(last ${Math.round((buckets * timeline.bucket_seconds) / 60)} min)`;
  for (const frac of [0, 0.5, 1]) {
    const y = top + height - frac * height;
    chart.append(svg("line", { x1: left, x2: left + width, y1: y, y2: y, stroke: "#e3e7ec" }));
    chart.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end" }, Math.round(frac * max)));
  }
  for (let i = 0; i < buckets; i++) {
    let y = top + height;
    for (const [reason, values] of series) {
      if (!values[i]) continue;
      const h = (values[i] / max) * height;
      y -= h;
      const rect = svg("rect", { x: left + i * step + 1, y, width: Math.max(1, step - 2), height: h,
                                 fill: colorFor(reason), "data-reason": reason });
      rect.append(svg("title", {}, `${reason}: ${values[i]}`));
      chart.append(rect);
    }
  }
  chart.append(svg("text", { x: left, y: top + height + 16 }, time(timeline.start)));
  chart.append(svg("text", { x: left + width, y: top + height + 16, "text-anchor": "end" }, "now"));
  if (!series.length) {
    chart.append(svg("text", { x: left + width / 2, y: top + height / 2, "text-anchor": "middle" },
      "no retries in this window"));
  }
  for (const [reason, values] of series) {
    const swatch = el("i");
    swatch.style.background = colorFor(reason);
    legend.append(el("span", { "data-reason": reason }, swatch, `${reason} ${values.reduce((a, b) => a + b, 0)}`));
  }
}

function renderNodes(data) {
  const rows = data.nodes.map((n) => el("tr", { "data-node": n.name, class: n.ready ? "" : "notready" },
    el("td", {}, n.name),
    el("td", { class: `status ${n.ready ? "ready" : "notready"}`, title: n.not_ready_reason || "" },
      n.ready ? "Ready" : "NotReady"),
    el("td", { class: `beats ${n.attempt_heartbeats}`, "data-beats": n.attempt_heartbeats }, n.attempt_heartbeats),
    el("td", {}, n.pods), el("td", {}, n.running_attempts),
    el("td", {}, `${n.allocated_cpu}/${n.capacity.cpu}`),
    el("td", {}, n.ready ? ago(n.last_heartbeat) : `silent since ${time(n.last_heartbeat)}`)));
  fill($("nodes").tBodies[0], rows, 7, "no nodes have reported");
  const failures = data.failures.map((f) => el("tr", { "data-failure": f.node },
    el("td", {}, f.node), el("td", {}, time(f.detected_at)), el("td", {}, f.affected_jobs),
    el("td", {}, f.recovered_jobs), el("td", {}, secs(f.recovery_seconds.p50)),
    el("td", {}, secs(f.recovery_seconds.max))));
  fill($("failures").tBodies[0], failures, 6, "none since this dispatcher started");
}

function renderDead(data) {
  $("dead-total").textContent = `(${data.total})`;
  const rows = data.dead_letters.map((d) => {
    const button = d.retryable ? el("button", { type: "button", onclick: async (e) => {
      e.target.disabled = true;
      try { await mutate(`/api/dead-letters/${encodeURIComponent(d.job_id)}/retry`); schedule(); }
      catch (error) { e.target.disabled = false; window.alert(error.message); }
    } }, "Retry") : null;
    return el("tr", { "data-dead": d.job_id || d.seq },
      el("td", {}, d.job_id ? el("a", { href: `#/jobs/${d.job_id}` }, d.job_id) : "-"),
      el("td", {}, d.reason),
      el("td", { class: "msg" }, d.message, d.original ? " " : null, d.original
        ? el("button", { type: "button", class: "link", "data-original": d.seq, onclick: async () => {
          try { await download(`/api/dead-letters/${d.seq}/original`, `dead-letter-${d.seq}.bin`); }
          catch (error) { window.alert(error.message); }
        } }, `original (${d.size} B)`)
        : null),
      el("td", {}, time(d.at)),
      el("td", {}, button));
  });
  fill($("dead").tBodies[0], rows, 5, "no dead letters");
}

// What the job's current attempt last reported (ctx.progress): a bar, the percent, its message.
function progressOf(p) {
  if (!p) return "-";
  return el("span", { class: "progress", "data-fraction": p.fraction, title: `attempt ${p.attempt}, ${time(p.at)}` },
    el("progress", { max: "1", value: String(p.fraction) }), `${Math.round(p.fraction * 100)}%`,
    p.message ? el("span", { class: "pmsg" }, p.message) : null);
}

// An attempt's checkpoints (Attempt.checkpoints, or the running attempt's live `checkpoint`):
// its newest step and when, and the step (and attempt) it resumed from.
function checkpointText(c) {
  if (!c) return "-";
  let text = c.written && c.step !== null ? `step ${c.step}${c.at ? ` at ${time(c.at)}` : ""}` : "none written";
  if (c.resumed_step !== null && c.resumed_step !== undefined) {
    text += ` (resumed from step ${c.resumed_step}` +
      (c.resumed_from_attempt ? ` of attempt ${c.resumed_from_attempt})` : ")");
  }
  return text;
}

function lost(v) { return v === null || v === undefined ? "-" : `${Number(v).toFixed(1)} s`; }

function renderJobs(data) {
  const first = data.jobs.length ? view.jobOffset + 1 : 0;
  $("jobs-total").textContent = `${first}-${view.jobOffset + data.jobs.length} of ${data.total}`;
  view.nextCursor = data.next_cursor;
  $("jobs-older").disabled = !data.next_cursor;
  $("jobs-newer").disabled = view.jobCursors.length === 0;
  const rows = data.jobs.map((j) => el("tr", { "data-job": j.id, class: "clickable",
                                               onclick: () => { location.hash = `#/jobs/${j.id}`; } },
    el("td", {}, j.id), el("td", {}, j.queue), el("td", {}, j.task),
    el("td", { class: `state ${j.phase}` }, j.phase), el("td", { "data-progress": j.id }, progressOf(j.progress)),
    el("td", {}, j.attempts), el("td", {}, j.node || "-"),
    el("td", {}, Object.entries(j.retries).map(([k, v]) => `${k}=${v}`).join(", ") || "-"),
    el("td", {}, time(j.submitted_at))));
  fill($("jobs").tBodies[0], rows, 9, "no jobs");
}

function size(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 ** (i + 1) && i < units.length - 1) i += 1;
  return i ? `${(n / 1024 ** i).toFixed(1)} ${units[i]}` : `${n} B`;
}

async function renderArtifacts(jobId, phase) {
  const panel = $("artifacts-panel");
  panel.hidden = phase !== "succeeded";
  if (panel.hidden) return;
  let listed;
  try { listed = await api(`/api/jobs/${encodeURIComponent(jobId)}/artifacts`); }
  catch (error) { fill($("artifacts").tBodies[0], [], 5, error.message); return; }
  if (view.jobId !== jobId) return;
  const rows = listed.artifacts.map((a) => el("tr", { "data-artifact": a.name },
    el("td", {}, a.name), el("td", {}, size(a.size)), el("td", { class: "sha", title: a.sha256 }, a.sha256.slice(0, 16)),
    el("td", {}, a.attempt),
    el("td", {}, a.problem ? el("span", { class: "error", title: a.problem }, "not served")
      : el("button", { type: "button", onclick: () => download(
          `/api/jobs/${encodeURIComponent(jobId)}/artifacts/${a.name.split("/").map(encodeURIComponent).join("/")}`,
          a.name.split("/").pop()).catch((error) => { $("detail-msg").textContent = error.message; }) },
        "download"))));
  fill($("artifacts").tBodies[0], rows, 5, "no artifacts");
}

function renderTimeline(detail) {
  const chart = $("timeline");
  clear(chart);
  const attempts = detail.attempts;
  const start = new Date(detail.record.submitted_at).getTime();
  const ends = attempts.map((a) => new Date(a.finished_at || Date.now()).getTime());
  const end = Math.max(start + 1000, new Date(detail.record.finished_at || Date.now()).getTime(), ...ends);
  const left = 140, width = 740, row = 22;
  const height = 30 + row * Math.max(1, attempts.length);
  chart.setAttribute("viewBox", `0 0 900 ${height}`);
  const x = (iso) => left + ((new Date(iso).getTime() - start) / (end - start)) * width;
  chart.append(svg("text", { x: left, y: 12 }, `submitted ${time(detail.record.submitted_at)}`));
  chart.append(svg("text", { x: left + width, y: 12, "text-anchor": "end" },
    `${((end - start) / 1000).toFixed(1)}s`));
  attempts.forEach((a, i) => {
    const y = 20 + i * row;
    chart.append(svg("text", { x: 4, y: y + 13 }, `#${a.number} ${a.node || "-"}`));
    const created = x(a.created_at);
    const started = a.started_at ? x(a.started_at) : x(a.finished_at || new Date().toISOString());
    const wait = svg("rect", { x: created, y: y + 4, width: Math.max(1, started - created), height: 10,
                               fill: "#e5e7eb", "data-attempt": a.number });
    wait.append(svg("title", {}, `attempt ${a.number}: waiting to start`));
    chart.append(wait);
    if (a.started_at) {
      const stop = x(a.finished_at || new Date().toISOString());
      const bar = svg("rect", { x: started, y: y + 2, width: Math.max(2, stop - started), height: 14, rx: 2,
                                fill: COLORS[a.state] || "#9aa5b1", "data-attempt": a.number });
      bar.append(svg("title", {}, `attempt ${a.number} ${a.state}${a.reason ? ` (${a.reason})` : ""} ` +
        `ran ${secs(a.run_seconds)}`));
      chart.append(bar);
    }
    if (a.reason) chart.append(svg("text", { x: Math.min(left + width - 60, x(a.finished_at || a.created_at) + 4),
                                             y: y + 13 }, a.reason));
  });
}

async function showDetail(jobId) {
  view.jobId = jobId;
  const section = $("detail");
  section.hidden = false;
  $("detail-id").textContent = jobId;
  let detail;
  try { detail = await api(`/api/jobs/${encodeURIComponent(jobId)}`); }
  catch (error) { $("detail-msg").textContent = error.message; return; }
  if (view.jobId !== jobId) return;
  const j = detail.job;
  const summary = clear($("detail-summary"));
  const fields = [["state", j.phase], ["progress", progressOf(j.progress)],
    ["checkpoint", el("span", { "data-live-checkpoint": j.checkpoint ? j.checkpoint.attempt : "" },
      checkpointText(j.checkpoint))],
    ["work lost", el("span", { "data-work-lost-total": "" }, lost(j.work_lost_s))],
    ["queue", j.queue], ["task", j.task], ["attempts", j.attempts],
    ["node", j.node || "-"], ["reason", j.reason || "-"], ["submitted", time(j.submitted_at)],
    ["finished", time(j.finished_at)], ["retries", Object.entries(j.retries).map(([k, v]) => `${k}=${v}`).join(", ") || "-"]];
  for (const [k, v] of fields) summary.append(el("div", {}, el("span", {}, k), v));
  if (j.message) summary.append(el("div", {}, el("span", {}, "message"), j.message));
  renderTimeline(detail);
  const cancel = $("detail-cancel");
  cancel.disabled = ["succeeded", "dead", "cancelled"].includes(j.phase) || j.cancel_requested;
  const rows = [];
  detail.attempts.forEach((a, i) => {
    rows.push(el("tr", { "data-attempt": a.number },
      el("td", {}, a.number), el("td", { class: `state ${a.state}` }, a.state), el("td", {}, a.node || "-"),
      el("td", {}, a.reason || "-"), el("td", {}, a.exit_code ?? "-"), el("td", {}, secs(a.start_seconds)),
      el("td", {}, secs(a.run_seconds)),
      el("td", { "data-checkpoint": a.number }, checkpointText(a.checkpoints)),
      el("td", { "data-work-lost": a.number }, lost(a.work_lost_s)), el("td", { class: "msg" }, a.message),
      el("td", {}, el("button", { type: "button", "data-log": a.number,
                                  onclick: () => showLog(jobId, a.number) }, "output"))));
    if (a.state === "failed" && a.log_tail) {
      rows.push(el("tr", { class: "tail", "data-tail": a.number }, el("td", {}),
        el("td", { colspan: 10 }, el("div", { class: "muted" }, "last output"), el("pre", {}, a.log_tail))));
    }
    const current = i === detail.attempts.length - 1;
    if (current && ["creating", "pending"].includes(a.state) && a.waiting_reason) {
      rows.push(el("tr", { class: "waiting", "data-waiting": a.number }, el("td", {}),
        el("td", { colspan: 10, class: "msg" }, `waiting: ${a.waiting_reason}`)));
    }
  });
  fill($("attempts").tBodies[0], rows, 11, "no attempt yet");
  await renderArtifacts(jobId, j.phase);
  const events = clear($("events"));
  for (const e of detail.events) {
    events.append(el("li", {}, `${time(e.at)} ${e.type}`, e.attempt ? ` #${e.attempt}` : "",
      e.node ? ` on ${e.node}` : "", e.reason ? ` (${e.reason})` : "", e.message ? `: ${e.message}` : ""));
  }
}

async function showLog(jobId, attempt) {
  view.logAttempt = attempt;
  const box = $("attempt-log");
  box.hidden = false;
  $("attempt-log-title").textContent = `Output of attempt ${attempt}`;
  const out = $("attempt-log-text");
  const note = $("attempt-log-note");
  out.textContent = "";
  note.textContent = "loading…";
  try {
    const chunk = await api(`/api/jobs/${encodeURIComponent(jobId)}/log?attempt=${attempt}`);
    if (view.jobId !== jobId || view.logAttempt !== attempt) return;
    out.textContent = chunk.error ? chunk.tail : chunk.data;
    note.textContent = chunk.error
      ? `${chunk.error}${chunk.tail ? "; shown: the last lines jobq kept" : ""}`
      : chunk.finished ? "" : "still running: this is the output so far";
  } catch (error) {
    note.textContent = error.message;
  }
}

// --- data flow ---------------------------------------------------------------------------

async function refresh() {
  if (view.refreshing) { view.again = true; return; }
  view.refreshing = true;
  try {
    const state = $("filter-state").value, queue = $("filter-queue").value;
    const params = new URLSearchParams({ limit: "50" });
    if (state) params.set("state", state);
    if (queue) params.set("queue", queue);
    if (view.jobCursor) params.set("cursor", view.jobCursor);
    const [ready, queues, nodes, dead, jobs] = await Promise.all([
      fetch("/readyz").then((r) => r.json()), api("/api/queues"), api("/api/nodes"),
      api("/api/dead-letters?limit=20"), api(`/api/jobs?${params}`)]);
    renderStatus(ready, true);
    renderCounts(queues);
    renderRetries(queues.retry_timeline);
    renderNodes(nodes);
    renderDead(dead);
    renderJobs(jobs);
    if (view.jobId) await showDetail(view.jobId);
    // Progress changes publish no event: while jobs run, look again every PROGRESS_POLL_MS.
    if (jobs.jobs.some((j) => j.phase === "running")) schedule(PROGRESS_POLL_MS);
  } catch (error) {
    $("updated").textContent = `update failed: ${error.message}`;
  } finally {
    view.refreshing = false;
    if (view.again) { view.again = false; schedule(); }
  }
}

function firstJobPage() {
  view.jobCursor = null; view.jobCursors = []; view.nextCursor = null; view.jobOffset = 0;
}

function schedule(delay = 250) {
  if (view.timer) return;
  view.timer = setTimeout(() => { view.timer = null; refresh(); }, delay);
}

function connect() {
  if (view.stream) view.stream.abort();
  const controller = new AbortController();
  view.stream = controller;
  const live = $("live");
  const handlers = {
    job: () => schedule(),
    lagged: () => schedule(),
    node: async () => { try { renderNodes(await api("/api/nodes")); } catch (error) { schedule(); } },
  };
  const retry = () => {
    if (controller.signal.aborted) return;
    live.textContent = "reconnecting"; live.className = "badge warn";
    setTimeout(() => { if (view.stream === controller) connect(); }, 2000);
  };
  (async () => {
    const response = await fetch("/api/events", { headers: authHeaders(), signal: controller.signal });
    if (response.status === 401) {
      askForToken(await response.json().catch(() => ({})));
      return;  // the token form calls connect() again
    }
    if (!response.ok || !response.body) { retry(); return; }
    live.textContent = "live"; live.className = "badge ok";
    schedule(0);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {  // one server-sent event per blank line
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const name = block.split("\n").find((line) => line.startsWith("event: "));
        const handler = name && handlers[name.slice(7)];
        if (handler) handler();
      }
    }
    retry();
  })().catch(retry);
}

function route() {
  const match = location.hash.match(/^#\/jobs\/([a-z0-9-]+)$/);
  if (match) { showDetail(match[1]); $("detail").scrollIntoView({ behavior: "smooth" }); }
  else { view.jobId = null; $("detail").hidden = true; }
  view.logAttempt = null;
  $("attempt-log").hidden = true;
}

takeTokenFromFragment();  // before anything reads location.hash

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", useToken);
  $("filter-state").addEventListener("change", () => { firstJobPage(); schedule(0); });
  $("filter-queue").addEventListener("change", () => { firstJobPage(); schedule(0); });
  $("jobs-older").addEventListener("click", () => {
    if (!view.nextCursor) return;
    view.jobCursors.push([view.jobCursor, view.jobOffset]);
    view.jobOffset += $("jobs").tBodies[0].querySelectorAll("tr[data-job]").length;
    view.jobCursor = view.nextCursor;
    schedule(0);
  });
  $("jobs-newer").addEventListener("click", () => {
    const back = view.jobCursors.pop();
    if (back) [view.jobCursor, view.jobOffset] = back;
    schedule(0);
  });
  $("detail-close").addEventListener("click", (e) => { e.preventDefault(); location.hash = ""; });
  $("detail-cancel").addEventListener("click", async () => {
    if (!view.jobId) return;
    try { await mutate(`/api/jobs/${encodeURIComponent(view.jobId)}/cancel`); $("detail-msg").textContent = "cancellation requested"; }
    catch (error) { $("detail-msg").textContent = error.message; }
    schedule(0);
  });
  window.addEventListener("hashchange", route);
  route();
  refresh();
  connect();
  setInterval(() => schedule(0), 10000);
});

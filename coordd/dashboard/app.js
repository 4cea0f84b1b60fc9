// The coordd dashboard: plain DOM and SVG, no framework, no build step.
//
// Every string that comes from the daemon (agent ids, senders, bodies, errors) is untrusted: it only ever
// reaches the page as a text node (el() below, textContent), never as markup.

const TOKEN = document.querySelector('meta[name="coordd-token"]')?.content ?? "";
const FEED_ROWS = 200; // the feed keeps this many rows; older ones leave the DOM
// The feed is redrawn at most this often, in an animation frame: each redraw costs a frame (style, layout,
// paint) whatever it adds, so at 1,000 events a second the page does 10 of them, not one per event.
const FEED_EVERY_MS = 100;
const STATUS_EVERY_MS = 2000;
const SERIES_EVERY_MS = 1000;
const FAILURES_EVERY_MS = 5000;
const OPERATOR = "operator";

// --- helpers -------------------------------------------------------------------------------------------

/** An element with attributes (on*: listeners) and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** Set a node's text only when it changed (no layout work for the rows that stay the same). */
function setText(node, text) {
  text = String(text);
  if (node.textContent !== text) node.textContent = text;
}

const pad2 = (n) => String(n).padStart(2, "0");
function clock(epoch, ms = false) {
  if (epoch == null) return "";
  const d = new Date(epoch * 1000);
  const t = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  return ms ? `${t}.${String(d.getMilliseconds()).padStart(3, "0")}` : t;
}
function dateTime(epoch) {
  if (epoch == null) return "";
  const d = new Date(epoch * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(epoch)}`;
}
/** A duration in seconds, short: 850 ms, 4.2 s, 3 min, 2 h 5 min. */
function duration(s) {
  if (s == null) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}
/** A latency in seconds: 0.4 ms, 12 ms, 1.3 s. */
function latency(s) {
  if (s == null) return "—";
  const ms = s * 1000;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}
function ago(epoch) {
  if (epoch == null) return "—";
  const s = Date.now() / 1000 - epoch;
  return s < 1 ? "just now" : `${duration(s)} ago`;
}
const firstLine = (text, max = 120) => {
  const line = (text ?? "").split("\n", 1)[0];
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
};

class CoordError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** One protocol request through POST /api/call; resolves to the reply, rejects with CoordError. */
async function call(request) {
  const response = await fetch("/api/call", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Coordd-Token": TOKEN },
    body: JSON.stringify(request),
    cache: "no-store",
  });
  let reply;
  try {
    reply = await response.json();
  } catch {
    throw new CoordError("http", `HTTP ${response.status}`);
  }
  if (!response.ok) throw new CoordError(reply?.error?.code ?? "http", reply?.error?.message ?? `HTTP ${response.status}`);
  if (reply.type === "error") throw new CoordError(reply.code, reply.message);
  return reply;
}

function showBanner(node, text, kind = "error") {
  node.hidden = !text;
  node.dataset.kind = kind;
  setText(node, text ?? "");
}

/** Run fn every ms milliseconds, never two at once (a slow daemon does not pile up requests). */
function every(ms, fn) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      await fn();
    } finally {
      running = false;
    }
  };
  tick();
  return setInterval(tick, ms);
}

// --- agents and the summary --------------------------------------------------------------------------

const agentRows = new Map(); // id -> {tr, cells}
const lastDelivery = new Map(); // agent id -> epoch of its latest delivery seen
let agentIds = [];

function agentRow(id) {
  let row = agentRows.get(id);
  if (row) return row;
  const cells = {};
  const names = ["agent", "transport", "health", "paused", "queued", "oldest", "last", "p50", "p99", "delivered", "failed", "inbox"];
  const numeric = new Set(["queued", "oldest", "p50", "p99", "delivered", "failed", "inbox"]);
  const tr = el("tr", { dataset: { agent: id } });
  for (const n of names) {
    cells[n] = el("td", { class: numeric.has(n) ? `num ${n}` : n });
    tr.append(cells[n]);
  }
  const link = el("button", { type: "button", class: "link", title: "Show only this agent in the feed and history" }, id);
  link.addEventListener("click", () => focusAgent(id));
  cells.agent.append(link);
  cells.healthDot = el("i", { class: "dot" });
  cells.healthText = el("span");
  cells.health.append(cells.healthDot, cells.healthText);
  row = { tr, cells };
  agentRows.set(id, row);
  return row;
}

function renderAgents(status) {
  const tbody = document.querySelector("#agents tbody");
  const seen = new Set();
  let down = 0;
  let paused = 0;
  status.agents.forEach((a, i) => {
    seen.add(a.id);
    const { tr, cells } = agentRow(a.id);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] ?? null);
    const healthy = a.healthy ?? true;
    if (!healthy) down++;
    if (a.paused) paused++;
    tr.classList.toggle("down", !healthy);
    tr.classList.toggle("is-paused", !!a.paused);
    setText(cells.transport, a.transport);
    cells.healthDot.className = `dot ${healthy ? (a.last_error ? "warn" : "ok") : "bad"}`;
    let health = healthy ? "up" : `down since ${clock(a.down_since)}`;
    const why = healthy ? a.last_error : a.reason;
    if (why) health += ` — ${why}`;
    setText(cells.healthText, health);
    cells.health.title = why ?? "";
    setText(cells.paused, a.paused ? (a.paused_until ? `until ${clock(a.paused_until)}` : "paused") : "");
    setText(cells.queued, (a.queued ?? 0) + (a.in_flight ? ` +${a.in_flight}` : ""));
    cells.queued.title = a.in_flight ? `${a.in_flight} being delivered now` : "";
    cells.queued.classList.toggle("hot", (a.queued ?? 0) > 0);
    // A pull agent's backlog is queued + fetched but unacknowledged: its oldest is the oldest of both.
    const oldest = a.transport === "pull" ? a.oldest_unacked_age ?? a.oldest_queued_age : a.oldest_queued_age;
    setText(cells.oldest, duration(oldest));
    setText(cells.last, ago(lastDelivery.get(a.id)));
    setText(cells.p50, latency(a.latency_p50));
    setText(cells.p99, latency(a.latency_p99));
    setText(cells.delivered, a.delivered ?? 0);
    setText(cells.failed, a.failed ?? 0);
    cells.failed.classList.toggle("bad", (a.failed ?? 0) > 0);
    let inbox = "—";
    if (a.transport === "pull") inbox = `${a.leased ?? 0} unacked`;
    else if (a.inbox_files != null) inbox = `${a.inbox_files} files`;
    setText(cells.inbox, inbox);
  });
  for (const [id, row] of agentRows) {
    if (!seen.has(id)) {
      row.tr.remove();
      agentRows.delete(id);
    }
  }

  const ids = status.agents.map((a) => a.id);
  if (ids.join("\n") !== agentIds.join("\n")) {
    agentIds = ids;
    fillAgentChoices();
  }
  setText(document.getElementById("agents-count"), `${ids.length} configured${down ? `, ${down} down` : ""}${paused ? `, ${paused} paused` : ""}`);

  const summary = document.getElementById("summary");
  summary.replaceChildren(
    stat("version", status.version),
    stat("up", duration(status.uptime)),
    stat("queued", status.queued, status.queued > 0 ? "hot" : ""),
    stat("agents down", down, down ? "bad" : ""),
    stat("stored", status.rows),
    stat("watchers", status.watchers ?? 0),
  );
  if (status.config_error) summary.append(stat("config", status.config_error, "bad"));
}

function stat(label, value, cls = "") {
  return el("span", { class: `stat ${cls}` }, el("b", {}, value), ` ${label}`);
}

function fillAgentChoices() {
  for (const id of ["feed-agent", "search-agent"]) {
    const select = document.getElementById(id);
    const keep = select.value;
    select.replaceChildren(select.options[0], ...agentIds.map((a) => el("option", { value: a }, a)));
    select.value = agentIds.includes(keep) ? keep : "";
  }
  document.getElementById("agent-ids").replaceChildren(...agentIds.map((a) => el("option", { value: a })));
}

function focusAgent(id) {
  document.getElementById("feed-agent").value = id;
  applyFeedFilter();
  document.getElementById("search-agent").value = id;
  runSearch();
}

async function refreshStatus() {
  try {
    renderAgents(await call({ op: "status" }));
  } catch (e) {
    const summary = document.getElementById("summary");
    summary.replaceChildren(stat("daemon", e.message, "bad"));
  }
}

/** The last delivery of each agent before the page opened (the feed keeps it up to date after). */
async function seedLastDelivery() {
  try {
    const page = await call({ op: "history", status: "delivered", limit: 500 });
    for (const m of page.messages) {
      if (m.delivered != null && !(lastDelivery.get(m.to) >= m.delivered)) lastDelivery.set(m.to, m.delivered);
    }
  } catch {
    // the column shows "—" until a delivery is seen
  }
}

// --- charts --------------------------------------------------------------------------------------------

/** A line chart in plain SVG; its elements are made once and only their attributes change. */
const MIN_LOG = 0.1; // the latency chart's floor: 0.1 ms
let chartWindow = 3600; // seconds the charts show, of the hour /api/series keeps
let lastSeries = null;

class Chart {
  constructor(node, series, { unit = "", log = false, height = 170 } = {}) {
    this.node = node;
    this.log = log;
    this.series = series; // [{key, cls, area}]
    this.unit = unit;
    this.height = height;
    this.grid = svg("g", { class: "grid-lines" });
    this.axis = svg("g", { class: "axis" });
    this.paths = series.map((s) => svg("path", { class: `${s.cls}${s.area ? " area" : ""}` }));
    node.append(this.grid, ...this.paths, this.axis);
  }

  draw(data, allValues) {
    const seriesValues = allValues.map((values) => values.slice(-chartWindow));
    const W = Math.max(200, this.node.clientWidth || 600);
    const H = this.height;
    const left = 44;
    const right = 8;
    const top = 8;
    const bottom = 20;
    this.node.setAttribute("viewBox", `0 0 ${W} ${H}`);
    this.node.setAttribute("height", H);
    const n = Math.max(2, seriesValues[0].length);
    let max = 0;
    let min = Infinity;
    for (const values of seriesValues) {
      for (const v of values) {
        if (v == null) continue;
        if (v > max) max = v;
        if (v > 0 && v < min) min = v;
      }
    }
    const x = (i) => left + (i / (n - 1)) * (W - left - right);
    // Latency spans decades (a millisecond to an inbox, seconds to a pull agent that fetches now and then):
    // on a log scale p50 and p99 both stay readable. Counts use a linear scale from 0.
    let y;
    let ticks;
    if (this.log) {
      const lo = Math.floor(Math.log10(Math.max(MIN_LOG, Math.min(min, max || 1))));
      const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(max, MIN_LOG))));
      y = (v) => top + (1 - (Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * (H - top - bottom);
      ticks = [];
      for (let e = lo; e <= hi; e++) ticks.push(10 ** e);
    } else {
      const top_ = niceCeil(max);
      y = (v) => top + (1 - v / top_) * (H - top - bottom);
      ticks = [0, top_ / 2, top_];
    }

    this.grid.replaceChildren();
    this.axis.replaceChildren();
    for (const v of ticks) {
      this.grid.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      const label = svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = v === 0 ? "0" : this.unit === "ms" ? formatMs(v) : formatCount(v);
      this.axis.append(label);
    }
    const minutes = (n * (data.step ?? 1)) / 60;
    const parts = minutes <= 5 ? 5 : minutes <= 15 ? 3 : 4; // a label each minute, 5 or 15 minutes
    for (let t = 0; t <= parts; t++) {
      const f = t / parts;
      const label = svg("text", { x: x(f * (n - 1)), y: H - 4, "text-anchor": t === 0 ? "start" : t === parts ? "end" : "middle" });
      label.textContent = t === parts ? "now" : `−${Math.round(minutes * (1 - f))} min`;
      this.axis.append(label);
    }

    this.series.forEach((s, k) => {
      const values = seriesValues[k];
      let d = "";
      let open = false; // inside a run of non-null values
      let runStart = 0;
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (v == null) {
          if (open && s.area) d += `L${x(i - 1).toFixed(1)},${y(0)}L${x(runStart).toFixed(1)},${y(0)}Z`;
          open = false;
          continue;
        }
        d += `${open ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        if (!open) runStart = i;
        open = true;
      }
      if (open && s.area) d += `L${x(values.length - 1).toFixed(1)},${y(0)}L${x(runStart).toFixed(1)},${y(0)}Z`;
      this.paths[k].setAttribute("d", d);
    });
  }
}

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function formatMs(v) {
  return v >= 1000 ? `${+(v / 1000).toPrecision(3)} s` : `${+v.toPrecision(3)} ms`;
}
function formatCount(v) {
  if (v >= 1000) return `${+(v / 1000).toFixed(1)}k`;
  return String(+v.toFixed(1));
}

const rateChart = new Chart(document.getElementById("chart-rate"), [
  { key: "accepted", cls: "accepted", area: true },
  { key: "delivered", cls: "delivered" },
  { key: "failed", cls: "failed" },
]);
const latencyChart = new Chart(document.getElementById("chart-latency"), [
  { key: "latency_p50_ms", cls: "p50" },
  { key: "latency_p99_ms", cls: "p99" },
], { unit: "ms", log: true });

/** The mean of the last k buckets that are not null (the current second is still filling: skipped). */
function recent(values, k = 5) {
  const tail = values.slice(-k - 1, -1).filter((v) => v != null);
  return tail.length ? tail.reduce((a, b) => a + b, 0) / tail.length : null;
}
function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
  return null;
}

async function refreshSeries() {
  let data;
  try {
    const response = await fetch("/api/series", { headers: { "X-Coordd-Token": TOKEN }, cache: "no-store" });
    if (!response.ok) return;
    data = await response.json();
  } catch {
    return; // the status line says when the daemon is unreachable
  }
  lastSeries = data;
  drawCharts();
}

function drawCharts() {
  const data = lastSeries;
  if (!data) return;
  rateChart.draw(data, [data.accepted, data.delivered, data.failed]);
  latencyChart.draw(data, [data.latency_p50_ms, data.latency_p99_ms]);
  const a = recent(data.accepted);
  const d = recent(data.delivered);
  setText(document.getElementById("rate-now"), `${formatCount(a ?? 0)} in · ${formatCount(d ?? 0)} out /s`);
  const p50 = lastValue(data.latency_p50_ms);
  const p99 = lastValue(data.latency_p99_ms);
  setText(document.getElementById("latency-now"), p50 == null ? "" : `p50 ${latency(p50 / 1000)} · p99 ${latency(p99 / 1000)}`);
}

// --- live feed -----------------------------------------------------------------------------------------

const feedBody = document.getElementById("feed");
let feedPending = []; // events received since the last frame, newest last (at most FEED_ROWS)
let feedFrame = 0; // a redraw is scheduled (timer or animation frame)
let lastFlush = 0;
let feedPaused = false;
let feedMissedWhilePaused = 0;
let feedAgent = "";
let eventCount = 0;

const FEED_TYPES = {
  "": null,
  quiet: new Set(["accepted", "held", "delivered", "retried", "failed", "cancelled", "read", "acked"]),
  accepted: new Set(["accepted"]),
  delivered: new Set(["delivered", "read", "acked"]),
  problems: new Set(["failed", "retried", "held", "cancelled"]),
};
let feedTypes = FEED_TYPES.quiet;

function eventDetails(e) {
  switch (e.event) {
    case "accepted":
      return e.preview ?? "";
    case "delivered":
      return `in ${latency(e.latency)}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`;
    case "delivering":
      return `attempt ${e.attempt}`;
    case "retried":
      return e.error ? `${e.error} — next attempt in ${duration(e.retry_in)}` : "queued again";
    case "failed":
      return e.error ?? "";
    case "held":
      return e.reason ?? "";
    default:
      return "";
  }
}

function feedRow(e) {
  const id = el("button", { type: "button", class: "link" }, `#${e.id}`);
  id.addEventListener("click", () => openMessage(e.id));
  const route = `${e.sender ?? "—"} → ${e.group ? `${e.group} (${e.agent})` : e.agent}`;
  return el(
    "div",
    { class: `feed-row ev-${e.event}${e.priority === "urgent" ? " urgent" : ""}`, dataset: { id: e.id } },
    el("span", { class: "time" }, clock(e.time, true)),
    el("span", {}, el("span", { class: `badge ${e.event}` }, e.event)),
    el("span", { class: "num" }, id),
    el("span", { class: "route" }, route),
    el("span", { class: "details" }, eventDetails(e)),
  );
}

function flushFeed() {
  feedFrame = 0;
  lastFlush = performance.now();
  if (feedPaused || feedPending.length === 0) return;
  const fragment = document.createDocumentFragment();
  for (let i = feedPending.length - 1; i >= 0; i--) fragment.append(feedRow(feedPending[i]));
  feedPending = [];
  feedBody.prepend(fragment);
  while (feedBody.childElementCount > FEED_ROWS) feedBody.lastElementChild.remove();
}

function onEvent(e) {
  eventCount++;
  if (e.event === "delivered") lastDelivery.set(e.agent, e.time);
  if (e.event === "failed" || e.event === "retried" || e.event === "cancelled") scheduleFailures();
  if ((feedAgent && e.agent !== feedAgent) || (feedTypes && !feedTypes.has(e.event))) return;
  feedPending.push(e);
  if (feedPending.length > FEED_ROWS) feedPending.splice(0, feedPending.length - FEED_ROWS);
  if (feedPaused) {
    feedMissedWhilePaused++;
    setText(document.getElementById("feed-paused"), `Paused: ${feedMissedWhilePaused} new event${feedMissedWhilePaused === 1 ? "" : "s"} (the last ${Math.min(feedMissedWhilePaused, FEED_ROWS)} are shown on resume)`);
    return;
  }
  scheduleFeed();
}

function scheduleFeed() {
  if (feedFrame) return;
  const wait = lastFlush + FEED_EVERY_MS - performance.now();
  feedFrame = wait > 0 ? setTimeout(() => requestAnimationFrame(flushFeed), wait) : requestAnimationFrame(flushFeed);
}

function applyFeedFilter() {
  feedAgent = document.getElementById("feed-agent").value;
  feedTypes = FEED_TYPES[document.getElementById("feed-type").value] ?? null;
  feedPending = [];
  feedBody.replaceChildren();
}

function setPaused(paused) {
  feedPaused = paused;
  const button = document.getElementById("feed-pause");
  button.setAttribute("aria-pressed", String(paused));
  setText(button, paused ? "Resume" : "Pause");
  feedMissedWhilePaused = 0;
  showBanner(document.getElementById("feed-paused"), paused ? "Paused: new events are held" : "", "info");
  if (!paused) scheduleFeed();
}

function connectEvents() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    conn.dataset.state = "live";
    setText(conn, "live");
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; say so meanwhile.
    conn.dataset.state = "down";
    setText(conn, "reconnecting");
  });
  source.addEventListener("message", (m) => {
    let e;
    try {
      e = JSON.parse(m.data);
    } catch {
      return;
    }
    onEvent(e);
  });
  let lastCount = 0;
  setInterval(() => {
    setText(document.getElementById("feed-rate"), `${eventCount - lastCount} events/s`);
    lastCount = eventCount;
  }, 1000);
}

// --- failures ------------------------------------------------------------------------------------------

let failuresTimer = 0;
function scheduleFailures() {
  if (!failuresTimer) failuresTimer = setTimeout(() => ((failuresTimer = 0), refreshFailures()), 300);
}

async function actOn(op, id, node) {
  const msg = document.getElementById("failures-msg");
  try {
    const reply = await call({ op, message_id: id });
    showBanner(msg, `#${id}: ${reply.status}`, "info");
  } catch (e) {
    showBanner(msg, `#${id}: ${e.message}`);
  }
  node?.closest("li")?.classList.add("acted");
  refreshFailures();
}

function failureItem(m) {
  const failed = m.status === "failed";
  const li = el(
    "li",
    { class: failed ? "failed" : "retrying", dataset: { id: m.id } },
    el(
      "div",
      { class: "head" },
      el("button", { type: "button", class: "link", onclick: () => openMessage(m.id) }, `#${m.id}`),
      el("span", { class: `badge ${failed ? "failed" : "retried"}` }, failed ? "failed" : "retrying"),
      el("span", { class: "route" }, `${m.sender ?? "—"} → ${m.to}`),
      el("span", { class: "muted" }, `${m.attempts} attempt${m.attempts === 1 ? "" : "s"}`),
    ),
    el("div", { class: "error" }, m.error ?? ""),
  );
  const actions = el("div", { class: "actions" });
  if (failed) {
    actions.append(el("button", { type: "button", class: "retry", onclick: (ev) => actOn("retry", m.id, ev.target) }, "Retry"));
  } else {
    actions.append(el("button", { type: "button", class: "cancel", onclick: (ev) => actOn("cancel", m.id, ev.target) }, "Cancel"));
  }
  li.append(actions);
  return li;
}

async function refreshFailures() {
  let failed;
  let queued;
  try {
    [failed, queued] = await Promise.all([
      call({ op: "history", status: "failed", limit: 50 }),
      call({ op: "history", status: "queued", limit: 200 }),
    ]);
  } catch (e) {
    showBanner(document.getElementById("failures-msg"), e.message);
    return;
  }
  // A queued message with an error is between attempts: it can still be cancelled (a failed one retried).
  const retrying = queued.messages.filter((m) => m.error);
  const items = [...failed.messages, ...retrying];
  document.getElementById("failures").replaceChildren(...items.map(failureItem));
  document.getElementById("failures-empty").hidden = items.length > 0;
  setText(
    document.getElementById("failures-count"),
    items.length ? `${failed.messages.length}${failed.cursor != null ? "+" : ""} failed, ${retrying.length} retrying` : "",
  );
}

// --- history search ------------------------------------------------------------------------------------

let searchCursor = null;
let searchRequest = null;

function statusBadge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

function resultRow(m) {
  const tr = el(
    "tr",
    { tabindex: "0", dataset: { id: m.id } },
    el("td", { class: "num" }, `#${m.id}`),
    el("td", { class: "time" }, dateTime(m.created)),
    el("td", { class: "route" }, `${m.sender ?? "—"} → ${m.to}`),
    el("td", {}, statusBadge(m.status)),
    el("td", { class: "text" }, m.subject ? el("b", {}, m.subject) : null, m.subject ? "  " : null, firstLine(m.body)),
  );
  tr.addEventListener("click", () => openMessage(m.id));
  tr.addEventListener("keydown", (ev) => ev.key === "Enter" && openMessage(m.id));
  return tr;
}

async function runSearch(more = false) {
  const msg = document.getElementById("search-msg");
  const tbody = document.querySelector("#results tbody");
  if (!more) {
    const text = document.getElementById("search-text").value.trim();
    searchRequest = { op: "history", limit: 20 };
    // Full-text search needs a letter or digit; anything else (a path, "->") is a plain substring.
    if (/[\p{L}\p{N}]/u.test(text)) searchRequest.search = text;
    else if (text) searchRequest.contains = text;
    const agent = document.getElementById("search-agent").value;
    const status = document.getElementById("search-status").value;
    if (agent) searchRequest.agent = agent;
    if (status) searchRequest.status = status;
    searchCursor = null;
  }
  const request = { ...searchRequest };
  if (more && searchCursor != null) request.cursor = searchCursor;
  try {
    const page = await call(request);
    if (!more) tbody.replaceChildren();
    tbody.append(...page.messages.map(resultRow));
    searchCursor = page.cursor ?? null;
    document.getElementById("search-more").hidden = searchCursor == null;
    showBanner(msg, tbody.childElementCount ? "" : "No message matches.", "info");
  } catch (e) {
    showBanner(msg, e.message);
  }
}

// --- the message view ----------------------------------------------------------------------------------

function field(label, value) {
  if (value === undefined || value === null || value === "") return null;
  return el("div", { class: "field" }, el("dt", {}, label), el("dd", {}, value));
}

async function openMessage(id) {
  const dialog = document.getElementById("message");
  const content = document.getElementById("message-content");
  content.replaceChildren(el("p", { class: "muted" }, `Loading #${id}…`));
  if (!dialog.open) dialog.showModal();
  let reply;
  let thread;
  try {
    [reply, thread] = await Promise.all([call({ op: "get", message_id: id }), call({ op: "thread", message_id: id })]);
  } catch (e) {
    content.replaceChildren(el("p", { class: "error" }, `#${id}: ${e.message}`));
    return;
  }
  const m = reply.message;
  const title = el("h2", {}, `#${m.id} `, statusBadge(m.status), m.priority === "urgent" ? el("span", { class: "badge urgent" }, "urgent") : null);
  const facts = el(
    "dl",
    { class: "facts" },
    field("From", m.sender ?? "—"),
    field("To", m.group ? `${m.to} (via ${m.group})` : m.to),
    field("Subject", m.subject),
    field("Kind", m.kind),
    field("Tags", (m.tags ?? []).join(", ")),
    field("Key", m.key),
    field("Created", dateTime(m.created)),
    field("Delivered", m.delivered != null ? `${dateTime(m.delivered)} (${latency(m.delivered - m.created)} after)` : null),
    field("Read", dateTime(m.read_at)),
    field("Acked", dateTime(m.acked_at)),
    field("Reply to", m.reply_to != null ? `#${m.reply_to}` : null),
    field("Resent from", m.resent_from != null ? `#${m.resent_from}` : null),
    field("Fetches", m.fetches || null),
    field("Error", m.error),
  );
  const actions = el("div", { class: "actions" });
  const say = el("span", { class: "result" });
  const act = async (op) => {
    try {
      const r = await call({ op, message_id: m.id });
      setText(say, op === "resend" ? `sent as #${r.id}` : `${r.status}`);
      refreshFailures();
    } catch (e) {
      setText(say, e.message);
    }
  };
  if (m.status === "failed") actions.append(el("button", { type: "button", class: "retry", onclick: () => act("retry") }, "Retry"));
  if (m.status === "queued") actions.append(el("button", { type: "button", class: "cancel", onclick: () => act("cancel") }, "Cancel"));
  actions.append(el("button", { type: "button", onclick: () => act("resend") }, "Resend"), say);

  const attempts = reply.attempts ?? [];
  const attemptTable = attempts.length
    ? el(
        "table",
        { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", { class: "num" }, "#"), el("th", {}, "Started"), el("th", { class: "num" }, "Took"), el("th", {}, "Outcome"))),
        el(
          "tbody",
          {},
          ...attempts.map((a) =>
            el(
              "tr",
              {},
              el("td", { class: "num" }, a.number),
              el("td", { class: "time" }, clock(a.started, true)),
              el("td", { class: "num" }, latency(a.finished - a.started)),
              el("td", { class: a.ok ? "ok" : "error" }, a.ok ? "delivered" : a.error ?? "failed"),
            ),
          ),
        ),
      )
    : el("p", { class: "muted" }, "No delivery attempt yet.");

  const threadList = el(
    "ol",
    { class: "thread" },
    ...thread.messages.map((t) =>
      el(
        "li",
        { class: t.id === m.id ? "current" : "" },
        el("button", { type: "button", class: "link", onclick: () => openMessage(t.id) }, `#${t.id}`),
        el("span", { class: "route" }, ` ${t.sender ?? "—"} → ${t.to} `),
        statusBadge(t.status),
        el("span", { class: "text" }, ` ${firstLine(t.body, 90)}`), // replies repeat the subject: the body tells them apart
      ),
    ),
  );
  const replyForm = el(
    "form",
    { class: "compose reply" },
    el("label", {}, "Reply as operator", el("textarea", { rows: 2, required: true, name: "body" })),
    el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Reply"), el("span", { class: "result" })),
  );
  replyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = replyForm.elements.body.value;
    const result = replyForm.querySelector(".result");
    try {
      const r = await call({ op: "reply", message_id: m.id, body, sender: OPERATOR });
      setText(result, `sent as #${r.id}`);
      replyForm.elements.body.value = "";
      openMessage(m.id);
    } catch (e) {
      setText(result, e.message);
    }
  });

  content.replaceChildren(
    title,
    facts,
    actions,
    el("h3", {}, "Body"),
    el("pre", { class: "body" }, m.body),
    el("h3", {}, `Attempts (${attempts.length})`),
    attemptTable,
    el("h3", {}, `Thread #${m.thread ?? m.id} (${thread.messages.length})`),
    threadList,
    replyForm,
  );
}

// --- compose -------------------------------------------------------------------------------------------

function setupCompose() {
  const form = document.getElementById("compose");
  const result = document.getElementById("compose-result");
  const send = async () => {
    const request = {
      op: "send",
      to: document.getElementById("compose-to").value.trim(),
      body: document.getElementById("compose-body").value,
      sender: OPERATOR,
    };
    const subject = document.getElementById("compose-subject").value.trim();
    if (subject) request.subject = subject;
    if (document.getElementById("compose-urgent").checked) request.priority = "urgent";
    result.dataset.kind = "";
    try {
      const r = await call(request);
      result.replaceChildren(
        "Sent ",
        el("button", { type: "button", class: "link", onclick: () => openMessage(r.id) }, `#${r.id}`),
        r.healthy === false ? ` (queued: ${r.reason ?? "agent down"})` : "",
      );
      document.getElementById("compose-body").value = "";
    } catch (e) {
      result.dataset.kind = "error";
      result.replaceChildren(e.message);
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  document.getElementById("compose-body").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
}

// --- start ---------------------------------------------------------------------------------------------

document.getElementById("feed-agent").addEventListener("change", applyFeedFilter);
document.getElementById("feed-type").addEventListener("change", applyFeedFilter);
for (const button of document.querySelectorAll(".range button")) {
  button.addEventListener("click", () => {
    chartWindow = Number(button.dataset.window);
    for (const b of document.querySelectorAll(".range button")) b.setAttribute("aria-pressed", String(b === button));
    for (const label of document.querySelectorAll(".window-label")) setText(label, `last ${button.textContent}`);
    drawCharts();
  });
}
document.getElementById("feed-pause").addEventListener("click", () => setPaused(!feedPaused));
document.getElementById("feed-clear").addEventListener("click", () => {
  feedPending = [];
  feedBody.replaceChildren();
});
document.getElementById("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  runSearch();
});
document.getElementById("search-more").addEventListener("click", () => runSearch(true));
setupCompose();

connectEvents();
seedLastDelivery().then(() => every(STATUS_EVERY_MS, refreshStatus));
every(SERIES_EVERY_MS, refreshSeries);
every(FAILURES_EVERY_MS, refreshFailures);
runSearch();
window.addEventListener("resize", drawCharts);

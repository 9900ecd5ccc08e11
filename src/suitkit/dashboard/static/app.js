// suitkit dashboard: one plain ES module, no framework, no build step, nothing from elsewhere.
//
// Safety rules of this file: every string that comes from the API reaches the page as a text
// node (h() below: no HTML parsing of data, ever), links are built only from
// encodeURIComponent'ed ids or checked server paths, and the token lives in sessionStorage
// (this tab only; no cookie, so no CSRF surface).

const TOKEN_KEY = "suitkit.dashboard.token";
const POLL_KEY = "suitkit.dashboard.poll-ms"; // optional override (tests): 250 ms or more
const POLL_MS = Math.max(250, Number(sessionStorage.getItem(POLL_KEY)) || 2000);
const MAX_ROWS = 500;
const ROLES = new Set(["admin", "operator"]);

// ------------------------------------------------------------------------------- DOM helpers

/** An element with attributes and children; strings become text nodes, never markup. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "data") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return add(el, ...children);
}

function add(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function fill(el, ...children) {
  el.replaceChildren();
  return add(el, ...children);
}

const byId = (id) => document.getElementById(id);

function table(headers, rows, empty = "none") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))));
}

function definitions(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", {}, k),
      h("dd", {}, v === null || v === "" ? "—" : v)]));
}

const deviceLink = (id, label) => h("a", { href: `#/devices/${encodeURIComponent(id)}` },
  label || id);
const campaignLink = (id, label) => h("a", { href: `#/campaigns/${encodeURIComponent(id)}` },
  label || String(id));

function short(hex, n = 12) {
  if (typeof hex !== "string") return hex === null || hex === undefined ? "—" : String(hex);
  return hex.length > n ? h("span", { title: hex, class: "mono" }, `${hex.slice(0, n)}…`)
    : h("span", { class: "mono" }, hex);
}

function when(iso) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = Math.round((Date.now() - t) / 1000);
  let ago;
  if (s < 5) ago = "just now";
  else if (s < 120) ago = `${s} s ago`;
  else if (s < 7200) ago = `${Math.round(s / 60)} min ago`;
  else if (s < 172800) ago = `${Math.round(s / 3600)} h ago`;
  else ago = `${Math.round(s / 86400)} days ago`;
  return h("time", { datetime: iso, title: iso }, ago);
}

const componentName = (parts) => (Array.isArray(parts) ? parts.join("/") : String(parts));
const stateBadge = (state) => h("span", { class: `state state-${String(state || "none")
  .replace(/[^a-z-]/g, "")}` }, state || "no state yet");

// ------------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, token } = {}) {
  const secret = token ?? sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json" };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit", redirect: "error",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `cannot reach the server (${e.message})`);
  }
  let doc = null;
  if (response.status !== 204) {
    try { doc = await response.json(); } catch { doc = null; }
  }
  if (!response.ok) {
    const message = doc && typeof doc.error === "string" ? doc.error
      : `HTTP ${response.status} ${response.statusText}`;
    if (response.status === 401 && token === undefined) signedOut(`Signed out: ${message}`);
    throw new ApiError(response.status, message);
  }
  return doc;
}

// Every item of a paged list (GET ?limit=&after=): follows `next` page after page and
// returns { [key]: items } like a single answer.
async function apiAll(path, key) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const cursor = after === null ? "" : `&after=${encodeURIComponent(after)}`;
    const doc = await api(`${path}${sep}limit=1000${cursor}`);
    if (Array.isArray(doc?.[key])) items.push(...doc[key]);
    after = typeof doc?.next === "string" ? doc.next : null;
    if (after === null) return { [key]: items };
  }
}

// ------------------------------------------------------------------------------- session

let me = null;

function signedOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

function showLogin(message) {
  me = null;
  stopLive();
  byId("top").hidden = true;
  byId("view").hidden = true;
  fill(byId("view"));
  byId("login").hidden = false;
  byId("login-message").textContent = message || "";
  byId("token").value = "";
  byId("token").focus();
}

async function whoami(token) {
  const doc = await api("/api/v1/whoami", { token });
  const role = doc && typeof doc.role === "string" ? doc.role : "unknown";
  if (!ROLES.has(role)) {
    throw new ApiError(403, `A token with the role ${role} cannot use the dashboard; it needs `
      + "an admin or operator token");
  }
  return { role, name: typeof doc.name === "string" ? doc.name : "" };
}

function loginError(e) {
  if (e.status === 401) return `The token was refused: ${e.message}`;
  if (e.status === 404) {
    return "This server has no /api/v1/whoami: is the status tracker enabled "
      + "(suitkit serve --admin-token-file)?";
  }
  return e.message;
}

async function signIn(event) {
  event.preventDefault();
  const token = byId("token").value.trim();
  const message = byId("login-message");
  if (!token || /\s/.test(token)) {
    message.textContent = "Paste one API token (no spaces).";
    return;
  }
  message.textContent = "Checking…";
  try {
    me = await whoami(token);
  } catch (e) {
    message.textContent = loginError(e);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  byId("token").value = "";
  message.textContent = "";
  showApp();
}

function showApp() {
  byId("login").hidden = true;
  byId("top").hidden = false;
  byId("view").hidden = false;
  fill(byId("whoami"), me.name ? `${me.name} ` : "", h("span", { class: "role" }, me.role));
  route();
}

async function resume() {
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    signedOut("");
    return;
  }
  try {
    me = await whoami(undefined);
  } catch (e) {
    if (e.status === 0 || e.status >= 500) showLogin(`${loginError(e)}; reload to try again.`);
    else if (e.status !== 401) signedOut(loginError(e));
    return;
  }
  showApp();
}

// ------------------------------------------------------------------------------- live updates

let live = null;
let timer = null;

function stopLive() {
  live = null;
  clearTimeout(timer);
  timer = null;
  byId("live").textContent = "";
}

let busy = false; // one update at a time: a tick asked for meanwhile runs right after
let again = false;

async function tick() {
  if (busy) {
    again = true;
    return;
  }
  clearTimeout(timer);
  timer = null;
  const mine = live;
  if (!mine || document.hidden) return;
  busy = true;
  try {
    await mine.update();
    if (live === mine) {
      byId("live").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (!mine.error.dataset.sticky) mine.error.textContent = ""; // action errors stay
    }
  } catch (e) {
    if (e.status !== 401 && live === mine) mine.error.textContent = e.message;
  } finally {
    busy = false;
  }
  if (again || live !== mine) {
    again = false;
    tick();
  } else if (!document.hidden) {
    timer = setTimeout(tick, POLL_MS);
  }
}

/** Run ``update`` now and every POLL_MS while the view is shown and the tab visible. */
function goLive(update, error) {
  stopLive();
  live = { update, error };
  return tick();
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    clearTimeout(timer);
    timer = null;
    if (live) byId("live").textContent = "paused (tab hidden)";
  } else if (live) {
    tick();
  }
});

// ------------------------------------------------------------------------------- routing

function route() {
  if (!me) return;
  stopLive();
  const hash = location.hash || "#/";
  const view = byId("view");
  const param = (m) => {
    try { return decodeURIComponent(m[1]); } catch { return m[1]; }
  };
  let name = "overview";
  let run;
  let m;
  if ((m = /^#\/devices\/([^/]+)$/.exec(hash))) {
    name = "device";
    run = () => deviceView(view, param(m));
  } else if ((m = /^#\/campaigns\/([^/]+)$/.exec(hash))) {
    name = "campaign";
    run = () => campaignView(view, param(m));
  } else if (hash === "#/campaigns") {
    name = "campaigns";
    run = () => campaignsView(view);
  } else if (hash === "#/firmware") {
    name = "firmware";
    run = () => firmwareView(view);
  } else {
    run = () => overviewView(view);
  }
  view.dataset.view = name;
  const section = { device: "overview", campaign: "campaigns" }[name] || name;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  fill(view);
  run().catch((e) => {
    if (e.status !== 401) add(view, h("p", { class: "error", role: "alert" }, e.message));
  });
}

window.addEventListener("hashchange", route);

function errorLine() {
  return h("p", { class: "error", role: "alert" });
}

// ------------------------------------------------------------------------------- fleet

function countBy(items, key) {
  const counts = new Map();
  for (const item of items) {
    const k = key(item);
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(b[0]));
}

function countTable(title, label, entries, testid) {
  return h("section", { class: "card", data: { count: testid } },
    h("h2", {}, title),
    table([label, "devices"], entries.map(([k, n]) => [k, h("span", { class: "num" }, n)])));
}

function deviceMatches(d, query) {
  return [d.name, d.id, d.class_id, d.vendor_id, d.state || "no state yet"]
    .some((x) => String(x ?? "").toLowerCase().includes(query));
}

async function overviewView(view) {
  const error = errorLine();
  const counts = h("div", { class: "cards" });
  const filter = h("input", { type: "search", class: "filter", "aria-label": "filter devices",
    placeholder: "filter by name, id, class or state" });
  const rows = h("div");
  let latest = [];
  function drawRows() {
    const query = filter.value.trim().toLowerCase();
    const shown = query ? latest.filter((d) => deviceMatches(d, query)) : latest;
    fill(rows, table(
      ["name", "id", "class", "state", "changed", "last seen"],
      shown.slice(0, MAX_ROWS).map((d) => [deviceLink(d.id, d.name || d.id), short(d.id, 8),
        short(d.class_id, 8), stateBadge(d.state), when(d.state_changed), when(d.last_seen)]),
      query ? "No device matches." : "No devices registered yet."),
    shown.length > MAX_ROWS ? h("p", { class: "hint" },
      `Showing ${MAX_ROWS} of ${shown.length} devices; filter to narrow.`) : null);
  }
  filter.addEventListener("input", drawRows);
  add(view, h("h1", {}, "Fleet"), error, counts,
    h("section", { class: "devices" }, h("h2", {}, "Devices"), filter, rows));
  await goLive(async () => {
    const doc = await apiAll("/api/v1/devices?components=true", "devices");
    const devices = Array.isArray(doc?.devices) ? doc.devices : [];
    const versions = new Map();
    for (const d of devices) {
      for (const c of Array.isArray(d.components) ? d.components : []) {
        const key = componentName(c.id);
        if (!versions.has(key)) versions.set(key, []);
        versions.get(key).push(c.sequence === null ? "unknown" : `sequence ${c.sequence}`);
      }
    }
    fill(counts,
      h("section", { class: "card total" }, h("h2", {}, "Devices"),
        h("p", { class: "big", data: { testid: "device-total" } }, devices.length)),
      countTable("By state", "state", countBy(devices, (d) => d.state || "no state yet"), "state"),
      countTable("By class", "class id", countBy(devices, (d) => d.class_id || "unknown"),
        "class"),
      [...versions.entries()].sort().map(([name, seqs]) => countTable(
        `Component ${name}`, "installed", countBy(seqs, (x) => x), `component-${name}`)));
    latest = devices;
    drawRows();
  }, error);
}

// ------------------------------------------------------------------------------- firmware

const BLOB_PATH = /^\/(envelopes|firmware)\/[0-9a-f]{64}$/;

function blobLink(url, label) {
  return typeof url === "string" && BLOB_PATH.test(url) ? h("a", { href: url }, label) : "—";
}

function manifestFacts(m) {
  if (!m || typeof m !== "object") {
    return h("p", { class: "hint" }, "Manifest details unavailable: the stored envelope does not "
      + "verify against the server's current author trust anchors.");
  }
  const list = (xs) => (Array.isArray(xs) && xs.length ? xs.join(", ") : "—");
  const signers = (Array.isArray(m.signers) ? m.signers : []).map((x) => `${x.role} (`
    + `${list(x.algorithms)}${x.key_id ? `, key id ${x.key_id}` : ""})`);
  const text = Object.entries(m.text && typeof m.text === "object" ? m.text : {});
  return [
    definitions([
      ["vendor ids", h("span", { class: "mono" }, list(m.vendor_ids))],
      ["class ids", h("span", { class: "mono" }, list(m.class_ids))],
      ["signed by", signers.length ? signers.join("; ") : "—"],
      ["reference uri", m.reference_uri ?? undefined],
      ["severed members", Array.isArray(m.severed) && m.severed.length ? list(m.severed)
        : undefined],
    ]),
    text.map(([language, fields]) => [h("h3", {}, `Text (${language})`), definitions(
      Object.entries(fields || {}).map(([k, v]) => [v && typeof v === "object" ? `component ${k}`
        : k, v && typeof v === "object"
        ? definitions(Object.entries(v).map(([ck, cv]) => [ck, String(cv)])) : String(v)]))]),
  ];
}

async function firmwareView(view) {
  const error = errorLine();
  add(view, h("h1", {}, "Firmware"), error);
  const doc = await api("/api/v1/releases");
  const releases = (Array.isArray(doc?.releases) ? doc.releases : [])
    .slice().sort((a, b) => (b.sequence_number ?? 0) - (a.sequence_number ?? 0));
  if (!releases.length) {
    add(view, h("p", { class: "empty" }, "No releases uploaded yet (suitkit upload)."));
    return;
  }
  for (const r of releases) {
    const integrated = Object.entries(r.integrated || {});
    add(view, h("section", { class: "card release", data: { release: r.id } },
      h("h2", {}, `Sequence number ${r.sequence_number}`),
      definitions([
        ["release (manifest digest)", h("span", { class: "mono wrap" }, r.id)],
        ["envelope", blobLink(r.envelope?.url, r.envelope?.sha256 || "envelope")],
        ["components", String((r.components || []).length)],
      ]),
      manifestFacts(r.manifest),
      h("h3", {}, "Components"),
      table(["#", "identifier", "image size", "image digest", "stored image"],
        (r.components || []).map((c) => [String(c.index), h("span", { class: "mono" },
          componentName(c.identifier)), c.size === null ? "—" : `${c.size} bytes`,
          short(c.digest, 16), c.url ? blobLink(c.url, "download") : "not stored"])),
      integrated.length ? [h("h3", {}, "Integrated payloads"), table(["key", "blob"],
        integrated.map(([k, v]) => [k, blobLink(v?.url, short(v?.sha256, 16))]))] : null));
  }
}

// ------------------------------------------------------------------------------- campaigns

/** Which actions a campaign offers in its status (the API has the last word). */
function actionsFor(c) {
  const trigger = c.mode === "install-on-trigger" && !c.triggered ? ["trigger"] : [];
  switch (c.status) {
    case "draft": return ["approve", "cancel"];
    case "approved": return ["start", "cancel"];
    case "running": return ["pause", ...trigger, "cancel"];
    case "paused": return ["resume", ...trigger, "cancel"];
    default: return [];
  }
}

/** Whether the campaign is in its download phase (success means "downloaded"). */
const downloadPhase = (c) => c.mode === "download-only"
  || (c.mode === "install-on-trigger" && !c.triggered);

function progressOf(c, counts, total) {
  const n = (k) => (typeof counts?.[k] === "number" ? counts[k] : 0);
  const done = n("succeeded") + (downloadPhase(c) ? n("downloaded") : 0);
  const failed = n("failed") + n("rolled-back");
  return { done, failed, total: typeof total === "number" ? total : 0 };
}

function progressBar(p) {
  const bar = h("div", { class: "bar", role: "img",
    "aria-label": `${p.done} done, ${p.failed} failed of ${p.total}` });
  for (const [cls, n] of [["ok", p.done], ["bad", p.failed]]) {
    const part = h("span", { class: `part ${cls}` });
    part.style.width = p.total ? `${(100 * n) / p.total}%` : "0%"; // CSSOM: allowed by the CSP
    bar.append(part);
  }
  return bar;
}

function targetText(t) {
  if (!t || typeof t !== "object") return "—";
  const parts = [];
  if (t.vendor_id) parts.push(`vendor ${t.vendor_id}`);
  if (t.class_id) parts.push(`class ${t.class_id}`);
  if (Array.isArray(t.tags) && t.tags.length) parts.push(`tags ${t.tags.join(", ")}`);
  if (Array.isArray(t.devices)) parts.push(`${t.devices.length} listed device(s)`);
  return parts.join(" · ") || "every device";
}

const wavesText = (w) => (Array.isArray(w) ? w.map((x) => `${x} %`).join(" → ") : "—");

async function campaignsView(view) {
  const error = errorLine();
  const body = h("div");
  add(view, h("h1", {}, "Campaigns"), error, body);
  await goLive(async () => {
    const doc = await apiAll("/api/v1/campaigns", "campaigns");
    const items = Array.isArray(doc?.campaigns) ? doc.campaigns : [];
    fill(body, table(
      ["campaign", "status", "mode", "release", "wave", "devices", "created by", "approved by",
        "created"],
      items.map((c) => [campaignLink(c.id, c.name || c.id),
        h("span", { class: `status status-${String(c.status).replace(/[^a-z]/g, "")}` },
          c.status),
        c.mode, short(c.release, 12),
        c.status === "draft" || c.status === "approved" ? "—"
          : `${c.current_wave} of ${Array.isArray(c.waves) ? c.waves.length : "?"}`,
        String(c.devices ?? 0), c.created_by ?? "—", c.approved_by ?? "—", when(c.created)]),
      "No campaigns yet (POST /api/v1/campaigns)."));
  }, error);
}

async function campaignView(view, id) {
  const path = `/api/v1/campaigns/${encodeURIComponent(id)}`;
  const error = errorLine();
  const head = h("div");
  const buttons = h("div", { class: "actions" });
  const summary = h("div", { class: "cards" });
  const waves = h("section");
  const members = h("section");
  const log = h("section");
  add(view, h("p", {}, h("a", { href: "#/campaigns" }, "← campaigns")), head, buttons, error,
    summary, waves, members, log);
  const names = new Map();
  apiAll("/api/v1/devices", "devices").then((doc) => {
    for (const d of doc?.devices || []) names.set(d.id, d.name);
  }).catch(() => {});
  let shown = null;

  async function act(action) {
    if (action === "cancel" && !window.confirm("Cancel this campaign? This cannot be undone; "
      + "devices that have not started lose their assignment.")) return;
    for (const b of buttons.querySelectorAll("button")) b.disabled = true;
    try {
      await api(`${path}/${action}`, { method: "POST", body: {} });
      error.textContent = "";
      delete error.dataset.sticky;
    } catch (e) {
      if (e.status === 401) return;
      error.textContent = `${action} refused: ${e.message}`;
      error.dataset.sticky = "yes";
    }
    shown = null;
    await tick();
  }

  function render(c) {
    const p = progressOf(c, c.counts, c.devices);
    fill(head, h("h1", {}, `Campaign ${c.name || c.id}`), definitions([
      ["status", h("span", { class: "status", data: { testid: "status" } }, c.status)],
      ["paused because", c.status === "paused" && c.pause_reason ? c.pause_reason : undefined],
      ["mode", c.mode],
      ["release", h("span", { class: "mono wrap" }, c.release)],
      ["envelope", h("span", { class: "mono wrap" }, c.envelope_url)],
      ["target", targetText(c.target)],
      ["waves", `${wavesText(c.waves)} (now wave ${c.current_wave})`],
      ["thresholds", `success ≥ ${Math.round((c.success_threshold ?? 0) * 100)} % per wave, `
        + `pause at ≥ ${Math.round((c.failure_threshold ?? 0) * 100)} % failed`],
      ["health gate", c.health_window ? h("span", { data: { testid: "health-gate" } },
        `window ${c.health_window} s after confirming`
        + (c.unhealthy_threshold !== null && c.unhealthy_threshold !== undefined
          ? `, pause above ${Math.round(c.unhealthy_threshold * 1000) / 10} % unhealthy` : "")
        + (c.health ? ` · now ${c.health.unhealthy} unhealthy of ${c.health.confirmed} `
          + "confirmed" : "")) : undefined],
      ["schedule", c.start_after || c.window ? `${c.start_after ? `after ${c.start_after}` : ""}`
        + `${c.window ? ` window ${c.window} UTC` : ""}` : undefined],
      ["created", [c.created_by ?? "—", " · ", when(c.created)]],
      ["approved", c.approved_by ? [c.approved_by, " · ", when(c.approved)] : "not yet"],
      ["started", c.started ? when(c.started) : undefined],
      ["finished", c.finished ? when(c.finished) : undefined],
    ]));
    const actions = actionsFor(c).join();
    if (actions !== shown) {
      shown = actions;
      fill(buttons, actionsFor(c).map((a) => h("button", {
        type: "button", class: a === "cancel" ? "danger" : null, data: { action: a },
        onclick: () => act(a) }, a[0].toUpperCase() + a.slice(1))));
    }
    const states = Object.entries(c.counts || {}).sort((a, b) => b[1] - a[1]);
    fill(summary,
      h("section", { class: "card" }, h("h2", {}, "Progress"), progressBar(p),
        h("p", { class: "big" }, h("span", { data: { testid: "done" } }, p.done), " / ",
          h("span", { data: { testid: "total" } }, p.total)),
        h("p", {}, `${downloadPhase(c) ? "downloaded" : "succeeded"} ${p.done} · failed `,
          h("span", { data: { testid: "failed" } }, p.failed), ` · devices ${p.total}`)),
      h("section", { class: "card", data: { count: "campaign-state" } },
        h("h2", {}, "Devices by state"),
        table(["state", "devices"], states.map(([k, n]) => [stateBadge(k),
          h("span", { class: "num", data: { state: k } }, n)]), "No members yet.")));
    const detail = Array.isArray(c.waves_detail) ? c.waves_detail : [];
    fill(waves, detail.length ? [h("h2", {}, "Waves"), table(
      ["wave", "share", "open", "devices", "done", "failed", "progress"],
      detail.map((w) => {
        const wp = progressOf(c, w.states, w.devices);
        return [String(w.wave), `${w.percent} %`, w.open ? "open" : "waiting",
          String(w.devices), String(wp.done), String(wp.failed), progressBar(wp)];
      }))] : null);
    const list = Array.isArray(c.members) ? c.members : [];
    fill(members, list.length ? [h("h2", {}, "Devices"),
      list.length < (c.devices ?? 0) ? h("p", { class: "hint" },
        `First ${list.length} of ${c.devices} devices.`) : null,
      table(["device", "wave", "state", "health", "detail"], list.map((m) => [
        deviceLink(m.device_id, names.get(m.device_id) || m.device_id), String(m.wave),
        stateBadge(m.state), healthBadge(m.health), m.detail || ""]))] : null);
    const entries = Array.isArray(c.log) ? c.log.slice(-30).reverse() : [];
    fill(log, entries.length ? [h("h2", {}, "Log (newest first)"), table(
      ["when", "who", "action", "detail"],
      entries.map((e) => [when(e.timestamp), e.actor, e.action, e.detail || ""]))] : null);
  }

  await goLive(async () => render(await api(path)), error);
}

// ------------------------------------------------------------------------------- device

function reportItem(r) {
  const s = r.summary || {};
  const f = s.failure;
  const body = [
    h("p", {}, h("strong", {}, s.succeeded ? "SUIT report: succeeded" : "SUIT report: failed"),
      ` · ${r.size ?? "?"} bytes · ${s.records ?? 0} record(s)`),
    definitions([
      ["manifest", s.manifest_uri || "—"],
      ["manifest digest", s.manifest_digest ? short(s.manifest_digest.value, 16) : "—"],
    ]),
  ];
  if (f) {
    body.push(h("div", { class: "failure", data: { testid: "failure" } },
      h("p", {}, h("strong", {}, "Failure: "),
        h("span", { class: "reason" }, `${f.reason_name ?? "?"} (reason ${f.reason ?? "?"})`)),
      definitions([
        ["section", `${f.section_name ?? "?"} (${f.section ?? "?"})`],
        ["offset", String(f.offset ?? "—")],
        ["component index", f.component_index === null || f.component_index === undefined
          ? "—" : String(f.component_index)],
        ["result code", String(f.code ?? "—")],
        ["manifest id", Array.isArray(f.manifest_id) ? `[${f.manifest_id.join(", ")}]` : "—"],
      ])));
  }
  return h("li", { class: `report ${s.succeeded ? "ok" : "bad"}` },
    h("span", { class: "when" }, `#${r.seq} `, when(r.received)), body);
}

function healthBadge(status) {
  if (!status) return "—";
  const bad = status === "unhealthy" || status === "rolled-back";
  return h("span", { class: `health ${bad ? "bad" : "ok"}`, data: { health: status } },
    status);
}

function healthRows(list) {
  return (list || []).map((x) => [
    h("span", { class: "mono", title: x.release }, short(x.release, 16)),
    healthBadge(x.status), when(x.confirmed), `${x.window ?? 0} s`,
    `${x.checks ?? 0} / ${x.failures ?? 0} / ${x.crashes ?? 0}`,
    (x.records || []).filter((r) => !r.ok).slice(-3).map((r) => `${r.check}: ${r.detail}`)
      .join("; ") || x.detail || ""]);
}

function eventItem(e) {
  return h("li", { class: "event" },
    h("span", { class: "when" }, `#${e.seq} `, when(e.timestamp)),
    " ", e.previous ? [stateBadge(e.previous), " → "] : null, stateBadge(e.state),
    e.detail ? h("span", { class: "detail" }, ` ${e.detail}`) : null);
}

async function deviceView(view, id) {
  const base = `/api/v1/devices/${encodeURIComponent(id)}`;
  const error = errorLine();
  const facts = h("div");
  const timeline = h("section");
  add(view, h("p", {}, h("a", { href: "#/" }, "← fleet")), error, facts, timeline);
  await goLive(async () => {
    const [d, hist] = await Promise.all([api(base), apiAll(`${base}/history`, "history")]);
    const hw = Object.entries(d.hardware || {});
    fill(facts,
      h("h1", {}, d.name || d.id),
      definitions([
        ["id", h("span", { class: "mono" }, d.id)],
        ["state", stateBadge(d.state)],
        ["state changed", when(d.state_changed)],
        ["last seen", when(d.last_seen)],
        ["registered", when(d.created)],
        ["vendor id", d.vendor_id ? h("span", { class: "mono" }, d.vendor_id) : null],
        ["class id", d.class_id ? h("span", { class: "mono" }, d.class_id) : null],
        ["inventory updated", when(d.inventory_updated)],
      ]),
      h("h2", {}, "Installed components"),
      table(["component", "sequence number", "digest"], (d.components || []).map((c) => [
        h("span", { class: "mono" }, componentName(c.id)),
        c.sequence === null ? "—" : String(c.sequence), short(c.digest, 16)]),
      "No inventory reported yet."),
      hw.length ? [h("h2", {}, "Hardware"), table(["fact", "value"],
        hw.map(([k, v]) => [k, String(v)]))] : null,
      (d.health || []).length ? [h("h2", {}, "Health after updates"), h("div",
        { data: { testid: "health" } }, table(["release", "health", "confirmed", "window",
        "checks / failed / crashes", "failed checks"], healthRows(d.health)))] : null);
    const items = (hist?.history || []).slice().reverse();
    fill(timeline, h("h2", {}, "History (newest first)"),
      items.length ? h("ol", { class: "timeline" },
        items.map((x) => (x.kind === "report" ? reportItem(x) : eventItem(x))))
        : h("p", { class: "empty" }, "Nothing reported yet."));
  }, error);
}

// ------------------------------------------------------------------------------- start

byId("login-form").addEventListener("submit", signIn);
byId("logout").addEventListener("click", () => signedOut("Signed out."));
resume();

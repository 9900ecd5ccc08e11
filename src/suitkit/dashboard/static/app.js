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
  // the wrapper scrolls sideways on its own: a wide table never widens the page (phones)
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c)))))));
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element: attributes as given (presentation attributes, never style), text as text. */
function sv(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") el.setAttribute("class", value);
    else el.setAttribute(key, String(value));
  }
  return add(el, ...children);
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

/** A release as an operator names it: its version (and sequence number), else its sequence
 * number, with the start of its manifest digest. */
function releaseLabel(r) {
  if (!r) return "—";
  const seq = r.sequence_number ?? r.sequence;
  const id = typeof r.id === "string" ? ` · ${r.id.slice(0, 12)}…` : "";
  if (typeof r.version === "string" && r.version) {
    return `version ${r.version}${seq !== undefined && seq !== null ? ` (sequence ${seq})` : ""}${id}`;
  }
  return `sequence ${seq ?? "?"}${id}`;
}

/** Class names from GET /api/v1/classes when the server has it (else ids are shown). */
let classNames = null;
async function loadClassNames() {
  if (classNames) return classNames;
  const names = new Map();
  try {
    // asked only of a server that has the route (a 404 would be a console error)
    const doc = (await apiPaths()).has("/api/v1/classes") ? await api("/api/v1/classes") : null;
    for (const c of Array.isArray(doc?.classes) ? doc.classes : []) {
      if (c && c.class_id && c.class_name) names.set(c.class_id, String(c.class_name));
    }
  } catch (e) {
    if (e.status === 401) throw e; // 404: a server without names; ids it is
  }
  classNames = names;
  return names;
}

function classLabel(d) {
  if (!d) return "—";
  const name = d.class_name || classNames?.get(d.class_id);
  if (name) return h("span", { title: d.class_id || "" }, name);
  return d.class_id ? short(d.class_id, 8) : "unknown";
}

/** A component id for people: parts that are printable ASCII shown as text, others as hex. */
function componentLabel(parts) {
  if (!Array.isArray(parts)) return String(parts);
  return parts.map((p) => {
    const text = typeof p === "string" && /^([0-9a-f]{2})+$/.test(p)
      ? p.match(/../g).map((x) => String.fromCharCode(parseInt(x, 16))).join("") : "";
    return /^[\x21-\x7e]+$/.test(text) ? text : p;
  }).join("/");
}

/** The trust anchors' component (docs/keys.md): a key set, not a firmware version. */
const ANCHORS = "737569746b6974/616e63686f7273";

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

async function api(path, { method = "GET", body, token, form } = {}) {
  const secret = token ?? sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json, application/problem+json" };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit", redirect: "error",
      // a FormData body (an upload) sets its own multipart Content-Type
      body: form !== undefined ? form : body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `cannot reach the server (${e.message})`);
  }
  let doc = null;
  if (response.status !== 204) {
    try { doc = await response.json(); } catch { doc = null; }
  }
  if (!response.ok) {
    // the API's one line: ``error`` (problem details keep it; else their detail or title)
    const message = doc && typeof doc.error === "string" ? doc.error
      : doc && typeof doc.detail === "string" ? doc.detail
        : doc && typeof doc.title === "string" ? doc.title
          : `HTTP ${response.status} ${response.statusText}`;
    // only the session's own token being refused signs it out: a request still on its way
    // when the operator signed out (no token) or signed in as someone else must not sign
    // out the session that followed
    if (response.status === 401 && token === undefined && secret
        && sessionStorage.getItem(TOKEN_KEY) === secret) signedOut(`Signed out: ${message}`);
    throw new ApiError(response.status, message);
  }
  return doc;
}

/** The API's paths, from its OpenAPI document (read once): what this server can do. */
let paths = null;
async function apiPaths() {
  if (paths) return paths;
  try {
    const response = await fetch("/openapi.json", { cache: "no-store", credentials: "omit" });
    const doc = response.ok ? await response.json() : null;
    paths = new Set(Object.keys(doc?.paths || {}));
  } catch {
    paths = new Set();
  }
  return paths;
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
  const kept = sessionStorage.getItem(TOKEN_KEY);
  if (!kept) {
    signedOut("");
    return;
  }
  try {
    const who = await whoami(undefined);
    // signed out or in as someone else meanwhile: that session is the one on screen
    if (sessionStorage.getItem(TOKEN_KEY) !== kept) return;
    me = who;
  } catch (e) {
    if (sessionStorage.getItem(TOKEN_KEY) !== kept) return;
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
  // a view that awaited something while the operator went elsewhere is no longer shown (its
  // error line left the page with it): it must not take the live updates from the new one
  if (!error.isConnected) return Promise.resolve();
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
  if (hash === "#/new-campaign" || (m = /^#\/new-campaign\/([^/]+)$/.exec(hash))) {
    name = "new-campaign";
    const release = m ? param(m) : null;
    run = () => newCampaignView(view, release);
  } else if (hash === "#/audit") {
    name = "audit";
    run = () => auditView(view);
  } else if ((m = /^#\/devices\/([^/]+)$/.exec(hash))) {
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
  const section = { device: "overview", campaign: "campaigns", "new-campaign": "campaigns" }[name]
    || name;
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
  const charts = h("div", { class: "cards charts" });
  const states = h("select", { class: "filter narrow", "aria-label": "devices in state" },
    h("option", { value: "" }, "every state"));
  const filter = h("input", { type: "search", class: "filter", "aria-label": "filter devices",
    placeholder: "filter by name, id, class or state" });
  const rows = h("div");
  const selected = new Set();
  const tagInput = h("input", { type: "text", class: "input narrow", "aria-label": "tag",
    placeholder: "tag, e.g. lab", data: { testid: "bulk-tag" } });
  const tagButton = h("button", { type: "button", data: { action: "tag-selected" } },
    "Tag selected");
  const tagLine = h("p", { class: "hint", role: "status" });
  let latest = [];
  let total = null;
  let releases = [];
  releaseList().then((r) => { releases = r; }).catch(() => {});

  function drawRows() {
    const query = filter.value.trim().toLowerCase();
    const state = states.value;
    const shown = latest.filter((d) => (!state || (d.state || "no state yet") === state)
      && (!query || deviceMatches(d, query)));
    fill(rows, table(
      ["", "name", "id", "class", "state", "tags", "changed", "last seen"],
      shown.slice(0, MAX_ROWS).map((d) => [
        h("input", { type: "checkbox", "aria-label": `select ${d.name || d.id}`,
          checked: selected.has(d.id), data: { select: d.id },
          onchange: (e) => { if (e.target.checked) selected.add(d.id); else selected.delete(d.id); } }),
        deviceLink(d.id, d.name || d.id), short(d.id, 8), classLabel(d), stateBadge(d.state),
        (d.tags || []).join(", "), when(d.state_changed), when(d.last_seen)]),
      query || state ? "No device matches." : "No devices registered yet."),
    total !== null && total > shown.length && !query ? h("p", { class: "hint" },
      `Showing ${Math.min(shown.length, MAX_ROWS)} of ${total} devices; pick a state or `
      + "filter to narrow.") : null);
  }
  filter.addEventListener("input", drawRows);
  states.addEventListener("change", () => tick());
  tagButton.addEventListener("click", async () => {
    const tag = tagInput.value.trim();
    if (!tag || !selected.size) {
      tagLine.textContent = "Select devices and give a tag.";
      return;
    }
    tagButton.disabled = true;
    try {
      for (const d of latest.filter((x) => selected.has(x.id))) {
        const tags = [...new Set([...(d.tags || []), tag])];
        await api(`/api/v1/devices/${encodeURIComponent(d.id)}/tags`,
          { method: "PUT", body: { tags } });
      }
      tagLine.textContent = `Tagged ${selected.size} device(s) ${tag}.`;
      selected.clear();
      tagInput.value = "";
    } catch (e) {
      if (e.status !== 401) tagLine.textContent = `tag refused: ${e.message}`;
    } finally {
      tagButton.disabled = false;
    }
    tick();
  });
  add(view, h("h1", {}, "Fleet"), error, counts, charts, registerForm(),
    h("section", { class: "devices" }, h("h2", {}, "Devices"),
      h("div", { class: "toolbar" }, states, filter),
      h("div", { class: "toolbar" }, tagInput, tagButton), tagLine, rows));
  await loadClassNames();
  await goLive(async () => {
    const summary = await api("/api/v1/fleet");
    const page = await devicePage(states.value);
    latest = page.devices;
    total = page.total;
    const wanted = states.value;
    fill(states, h("option", { value: "" }, "every state"),
      Object.entries(summary?.states || {}).map(([k, n]) => h("option",
        { value: k, selected: k === wanted }, `${k} (${n})`)));
    const classes = (summary?.classes || []).map((c) => [
      c.class_name || classNames?.get(c.class_id) || c.class_id || "unknown", c.devices]);
    fill(counts,
      h("section", { class: "card total" }, h("h2", {}, "Devices"),
        h("p", { class: "big", data: { testid: "device-total" } }, summary?.devices ?? 0)),
      countTable("By state", "state", Object.entries(summary?.states || {}), "state"),
      countTable("By class", "class", classes, "class"),
      versionTables(summary?.versions || [], releases));
    fill(charts, h("section", { class: "card chart", data: { chart: "versions" } },
      h("h2", {}, "Versions across the fleet"),
      barChart(versionBars(summary?.versions || [], releases), "devices")));
    drawRows();
  }, error);
}

/** One page of devices: the server filters by state when it can (``state=``, ``total=true``:
 * the lists API), else this page filters the devices it reads. */
let listFeatures = null; // null: not known yet; true: the server filters and counts
async function devicePage(state) {
  const base = "/api/v1/devices?components=true";
  if (listFeatures !== false) {
    const wanted = state && state !== "no state yet" ? `&state=${encodeURIComponent(state)}` : "";
    try {
      const doc = await api(`${base}&limit=${MAX_ROWS}&total=true${wanted}`);
      if (typeof doc?.total === "number") {
        listFeatures = true;
        return { devices: Array.isArray(doc.devices) ? doc.devices : [], total: doc.total };
      }
      listFeatures = false;
      if (!state) return { devices: doc?.devices || [], total: null };
    } catch (e) {
      if (e.status !== 400) throw e;
      listFeatures = false; // a server without the parameters
    }
  }
  if (!state) {
    const doc = await api(`${base}&limit=${MAX_ROWS}`);
    return { devices: Array.isArray(doc?.devices) ? doc.devices : [], total: null };
  }
  const doc = await apiAll(base, "devices");
  return { devices: doc.devices.filter((d) => (d.state || "no state yet") === state),
    total: null };
}

let releaseCache = null;
async function releaseList(fresh = false) {
  if (releaseCache && !fresh) return releaseCache;
  const doc = await api("/api/v1/releases");
  releaseCache = Array.isArray(doc?.releases) ? doc.releases : [];
  return releaseCache;
}

function versionName(v, releases) {
  const seq = v.sequence === null || v.sequence === undefined ? null : v.sequence;
  const r = seq === null ? null : releases.find((x) => x.sequence_number === seq && x.version);
  const version = Array.isArray(v.version) && v.version.length ? v.version.join(".")
    : r ? r.version : null;
  if (seq === null) return version ? `version ${version}` : "unknown";
  return version ? `version ${version} (sequence ${seq})` : `sequence ${seq}`;
}

function versionTables(versions, releases) {
  const by = new Map();
  for (const v of versions) {
    const key = componentName(v.component);
    if (!by.has(key)) by.set(key, []);
    by.get(key).push([versionName(v, releases), v.devices]);
  }
  return [...by.entries()].sort().map(([name, entries]) => countTable(
    name === ANCHORS ? "Trust anchors" : `Component ${componentLabel(name.split("/"))}`,
    "installed", entries.sort((a, b) => b[1] - a[1]), `component-${name}`));
}

function versionBars(all, releases) {
  const versions = all.filter((v) => componentName(v.component) !== ANCHORS);
  const many = new Set(versions.map((v) => componentName(v.component))).size > 1;
  return versions.map((v) => [`${many ? `${componentLabel(v.component)}: ` : ""}`
    + versionName(v, releases), v.devices]).sort((a, b) => b[1] - a[1]).slice(0, 12);
}

function registerForm() {
  const name = h("input", { type: "text", name: "name", required: true, maxlength: 128,
    class: "input narrow", "aria-label": "device name", placeholder: "device name" });
  const out = h("div", { class: "credential", role: "status" });
  const form = h("form", { class: "toolbar", data: { form: "register" } }, name,
    h("button", { type: "submit" }, "Register"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(out);
    try {
      const doc = await api("/api/v1/devices", { method: "POST",
        body: { name: name.value.trim() } });
      fill(out, h("p", {}, `Registered ${name.value.trim()} (`, deviceLink(doc.id, doc.id),
        "). Its credential, shown this once: give it to the device (suitkit device register "
        + "or --credential-file); the server keeps only its hash."),
      h("p", {}, h("code", { class: "wrap", data: { testid: "credential" } }, doc.token)),
      h("button", { type: "button", onclick: () => fill(out) }, "Done, hide it"));
      name.value = "";
      tick();
    } catch (e) {
      if (e.status !== 401) fill(out, h("p", { class: "error" }, `register refused: ${e.message}`));
    }
  });
  return h("details", { class: "card register" }, h("summary", {}, "Register a device"),
    form, out);
}

// ------------------------------------------------------------------------------- charts

/** Horizontal bars of ``[label, count]`` as inline SVG (no library; CSP-safe: attributes). */
function barChart(entries, unit) {
  if (!entries.length) return h("p", { class: "empty" }, "Nothing reported yet.");
  const most = Math.max(1, ...entries.map(([, n]) => n));
  const row = 26;
  const chart = sv("svg", { viewBox: `0 0 320 ${entries.length * row}`, class: "chart-svg",
    role: "img", "aria-label": entries.map(([k, n]) => `${k}: ${n} ${unit}`).join("; ") });
  entries.forEach(([label, n], i) => {
    const y = i * row;
    add(chart, sv("g", {},
      sv("text", { x: 0, y: y + 11, class: "chart-label" }, String(label)),
      sv("rect", { x: 0, y: y + 14, height: 8, rx: 2, class: "chart-bar",
        width: Math.max(2, Math.round((260 * n) / most)) }),
      sv("text", { x: Math.max(2, Math.round((260 * n) / most)) + 6, y: y + 22,
        class: "chart-value" }, String(n))));
  });
  return chart;
}

/** Succeeded and failed devices over time (``GET .../progress``) as two step lines. */
function progressChart(doc) {
  const series = Array.isArray(doc?.series) ? doc.series : [];
  if (series.length < 2) return h("p", { class: "empty" }, "Not started yet.");
  const total = Math.max(1, doc.devices || 0, ...series.map((p) => p.done + p.failed));
  const w = 320;
  const top = 8;
  const ht = 110;
  const x = (i) => 30 + ((w - 40) * i) / (series.length - 1);
  const y = (n) => top + ht - (ht * n) / total;
  const line = (key) => series.map((p, i) => `${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`)
    .join(" ");
  const last = series[series.length - 1];
  const time = (iso) => new Date(iso).toLocaleTimeString();
  return sv("svg", { viewBox: `0 0 ${w} 150`, class: "chart-svg", role: "img",
    "aria-label": `${last.done} succeeded and ${last.failed} failed of ${doc.devices} `
      + `devices between ${time(series[0].time)} and ${time(last.time)}` },
  sv("line", { x1: 30, y1: y(0), x2: w - 10, y2: y(0), class: "chart-axis" }),
  sv("line", { x1: 30, y1: y(total), x2: w - 10, y2: y(total), class: "chart-grid" }),
  sv("text", { x: 26, y: y(total) + 4, class: "chart-value", "text-anchor": "end" },
    String(total)),
  sv("text", { x: 26, y: y(0) + 4, class: "chart-value", "text-anchor": "end" }, "0"),
  sv("polyline", { points: line("done"), class: "chart-line ok" }),
  sv("polyline", { points: line("failed"), class: "chart-line bad" }),
  sv("text", { x: 30, y: 145, class: "chart-value" }, time(series[0].time)),
  sv("text", { x: w - 10, y: 145, class: "chart-value", "text-anchor": "end" },
    time(last.time)));
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

function uploadForm(done) {
  const envelope = h("input", { type: "file", name: "envelope", required: true,
    accept: ".suit,.cbor,.cose,application/cbor", "aria-label": "signed envelope" });
  const images = h("input", { type: "file", name: "images", multiple: true,
    "aria-label": "detached images" });
  const out = h("p", { role: "status", data: { testid: "upload-result" } });
  const button = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "upload", data: { form: "upload" } },
    h("label", {}, "Signed envelope ", envelope),
    h("label", {}, "Detached images (if the manifest has any) ", images), button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!envelope.files.length) {
      out.textContent = "Pick the signed envelope (suitkit sign … --out FILE).";
      return;
    }
    const body = new FormData();
    body.append("envelope", envelope.files[0]);
    for (const f of images.files) body.append("image", f);
    button.disabled = true;
    out.className = "";
    out.textContent = "Uploading…";
    try {
      const r = await api("/api/v1/releases", { method: "POST", form: body });
      out.textContent = `Uploaded ${releaseLabel(r)}: the server verified its signatures`
        + (images.files.length ? ` and ${images.files.length} image(s)` : "") + ".";
      form.reset();
      await done(r);
    } catch (e) {
      if (e.status !== 401) {
        out.className = "error";
        out.textContent = `upload refused: ${e.message}`;
      }
    } finally {
      button.disabled = false;
    }
  });
  return h("details", { class: "card", open: true }, h("summary", {}, "Upload a release"),
    h("p", { class: "hint" }, "An admin or author token uploads; the server keeps the release "
      + "only if its signatures verify against its author trust anchors."), form, out);
}

async function firmwareView(view) {
  const error = errorLine();
  const list = h("div");
  add(view, h("h1", {}, "Firmware"), error,
    uploadForm(async () => draw(await releaseList(true))), list);
  draw(await releaseList(true));

  function draw(all) {
    const releases = all.slice()
      .sort((a, b) => (b.sequence_number ?? 0) - (a.sequence_number ?? 0));
    fill(list, releases.length ? releases.map(releaseCard)
      : h("p", { class: "empty" }, "No releases uploaded yet."));
  }
}

function releaseCard(r) {
  {
    const integrated = Object.entries(r.integrated || {});
    return h("section", { class: "card release", data: { release: r.id } },
      h("h2", {}, typeof r.version === "string" && r.version
        ? `Version ${r.version} (sequence number ${r.sequence_number})`
        : `Sequence number ${r.sequence_number}`),
      typeof r.notes === "string" && r.notes ? h("p", { class: "notes" }, r.notes) : null,
      h("p", {}, h("a", { href: `#/new-campaign/${encodeURIComponent(r.id)}`,
        data: { action: "new-campaign" } }, "New campaign with this release")),
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
        integrated.map(([k, v]) => [k, blobLink(v?.url, short(v?.sha256, 16))]))] : null);
  }
}

// ------------------------------------------------------------------------------- campaigns

/** Which actions a campaign offers in its status (the API has the last word). */
function actionsFor(c) {
  const trigger = c.mode === "install-on-trigger" && !c.triggered ? ["trigger"] : [];
  const failed = (c.counts?.failed || 0) + (c.counts?.["rolled-back"] || 0);
  const retry = failed > 0 ? ["retry"] : [];
  switch (c.status) {
    case "draft": return ["approve", "cancel"];
    case "approved": return ["start", "cancel"];
    case "running": return ["pause", ...trigger, ...retry, "cancel"];
    case "paused": return ["resume", ...trigger, ...retry, "cancel"];
    default: return [];
  }
}

const ACTION_LABELS = { retry: "Retry failed devices" };

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
  if (t.class_id) parts.push(`class ${classNames?.get(t.class_id) || t.class_id}`);
  if (Array.isArray(t.tags) && t.tags.length) parts.push(`tags ${t.tags.join(", ")}`);
  if (Array.isArray(t.devices)) parts.push(`${t.devices.length} listed device(s)`);
  return parts.join(" · ") || "every device";
}

const wavesText = (w) => (Array.isArray(w) ? w.map((x) => `${x} %`).join(" → ") : "—");

async function campaignsView(view) {
  const error = errorLine();
  const body = h("div");
  add(view, h("h1", {}, "Campaigns"),
    h("p", {}, h("a", { href: "#/new-campaign", class: "button",
      data: { action: "new-campaign" } }, "New campaign")), error, body);
  const releases = new Map();
  releaseList().then((list) => { for (const r of list) releases.set(r.id, r); })
    .catch(() => {});
  await goLive(async () => {
    const doc = await api("/api/v1/campaigns?limit=200");
    const items = Array.isArray(doc?.campaigns) ? doc.campaigns : [];
    fill(body, table(
      ["campaign", "status", "mode", "release", "wave", "devices", "created by", "approved by",
        "created"],
      items.map((c) => [campaignLink(c.id, c.name || c.id),
        h("span", { class: `status status-${String(c.status).replace(/[^a-z]/g, "")}` },
          c.status),
        c.mode, releases.has(c.release) ? releaseLabel(releases.get(c.release))
          : short(c.release, 12),
        c.status === "draft" || c.status === "approved" ? "—"
          : `${c.current_wave} of ${Array.isArray(c.waves) ? c.waves.length : "?"}`,
        String(c.devices ?? 0), c.created_by ?? "—", c.approved_by ?? "—", when(c.created)]),
      "No campaigns yet."),
    doc?.next ? h("p", { class: "hint" }, `The ${items.length} newest campaigns.`) : null);
  }, error);
}

async function campaignView(view, id) {
  const path = `/api/v1/campaigns/${encodeURIComponent(id)}`;
  const error = errorLine();
  const head = h("div");
  const buttons = h("div", { class: "actions" });
  const summary = h("div", { class: "cards" });
  const chart = h("section", { class: "card chart", data: { chart: "progress" } });
  const waves = h("section");
  const members = h("section");
  const log = h("section");
  add(view, h("p", {}, h("a", { href: "#/campaigns" }, "← campaigns")), head, buttons, error,
    summary, chart, waves, members, log);
  const releases = new Map();
  releaseList().then((list) => { for (const r of list) releases.set(r.id, r); })
    .catch(() => {});
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
      ["release", releases.has(c.release) ? [releaseLabel(releases.get(c.release)), " ",
        h("span", { class: "mono wrap hint" }, c.release)]
        : h("span", { class: "mono wrap" }, c.release)],
      ["envelope", h("span", { class: "mono wrap" }, c.envelope_url)],
      ["target", targetText(c.target)],
      ["waves", `${wavesText(c.waves)} (now wave ${c.current_wave})`],
      // the engine's rules: a wave needs at least this share of successes; the campaign
      // pauses when more than this share of its finished devices failed
      ["thresholds", h("span", { data: { testid: "thresholds" } },
        `success ≥ ${percent(c.success_threshold)} per wave, `
        + `pause at > ${percent(c.failure_threshold)} failed`)],
      ["health gate", c.health_window ? h("span", { data: { testid: "health-gate" } },
        `window ${c.health_window} s after confirming`
        + (c.unhealthy_threshold !== null && c.unhealthy_threshold !== undefined
          ? `, pause at > ${percent(c.unhealthy_threshold)} unhealthy` : "")
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
        onclick: () => act(a) }, ACTION_LABELS[a] || a[0].toUpperCase() + a.slice(1))));
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

  await goLive(async () => {
    const c = await api(path);
    render(c);
    if (c.started) {
      const doc = await api(`${path}/progress?points=60`);
      fill(chart, h("h2", {}, "Progress over time"), progressChart(doc),
        h("p", { class: "hint legend" }, h("span", { class: "key ok" }), " succeeded ",
          h("span", { class: "key bad" }), " failed"));
    } else {
      fill(chart, h("h2", {}, "Progress over time"), h("p", { class: "empty" },
        "Not started yet."));
    }
  }, error);
}

/** A fraction as the engine's percentage (0.2 → "20 %", 0.025 → "2.5 %"). */
function percent(x) {
  return `${Math.round((typeof x === "number" ? x : 0) * 1000) / 10} %`;
}

// ------------------------------------------------------------------------------- new campaign

function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", {}, label), control,
    hint ? h("small", { class: "hint" }, hint) : null);
}

async function newCampaignView(view, releaseId) {
  const error = errorLine();
  add(view, h("p", {}, h("a", { href: "#/campaigns" }, "← campaigns")),
    h("h1", {}, "New campaign"), error);
  const [releases, summary, devices] = await Promise.all([
    releaseList(true), api("/api/v1/fleet"),
    api(`/api/v1/devices?limit=${MAX_ROWS}`), loadClassNames()]);
  if (!error.isConnected) return; // the operator went elsewhere meanwhile
  if (!releases.length) {
    add(view, h("p", { class: "empty" }, "Upload a release first (",
      h("a", { href: "#/firmware" }, "Firmware"), ")."));
    return;
  }
  const sorted = releases.slice()
    .sort((a, b) => (b.sequence_number ?? 0) - (a.sequence_number ?? 0));
  const name = h("input", { type: "text", name: "name", maxlength: 128, required: true });
  const release = h("select", { name: "release" }, sorted.map((r) => h("option",
    { value: r.id, selected: r.id === releaseId }, releaseLabel(r))));
  const kind = h("select", { name: "target-kind" },
    h("option", { value: "class" }, "a device class"),
    h("option", { value: "tags" }, "devices with tags"),
    h("option", { value: "devices" }, "chosen devices"));
  const klass = h("select", { name: "class" }, (summary?.classes || [])
    .filter((c) => c.class_id).map((c) => h("option", { value: `${c.vendor_id}|${c.class_id}` },
      `${c.class_name || classNames?.get(c.class_id) || c.class_id} (${c.devices} devices)`)));
  const tags = h("select", { name: "tags", multiple: true, size: 4 },
    Object.entries(summary?.tags || {}).map(([t, n]) => h("option", { value: t },
      `${t} (${n} devices)`)));
  const chosen = h("select", { name: "devices", multiple: true, size: 6 },
    (devices?.devices || []).map((d) => h("option", { value: d.id }, d.name || d.id)));
  const waves = h("input", { type: "text", name: "waves", value: "100", inputmode: "decimal" });
  const success = h("input", { type: "number", name: "success", min: 0, max: 100, step: "any",
    value: 100 });
  const failure = h("input", { type: "number", name: "failure", min: 0, max: 100, step: "any",
    value: 20 });
  const mode = h("select", { name: "mode" }, ["install-now", "download-only",
    "install-on-trigger"].map((m) => h("option", { value: m }, m)));
  const preview = h("p", { class: "preview", role: "status", data: { testid: "preview" } });
  const targets = {
    class: field("Class", klass), tags: field("Tags (all of them)", tags),
    devices: field("Devices", chosen, `the first ${MAX_ROWS} devices; Ctrl/⌘-click for more`),
  };
  const button = h("button", { type: "submit" }, "Create (as a draft)");
  const form = h("form", { class: "campaign-form", data: { form: "campaign" } },
    field("Name", name), field("Release", release), field("Target", kind),
    Object.values(targets),
    field("Waves (% of the devices, cumulative)", waves, "e.g. 10, 50, 100: the last is 100"),
    field("Success needed per wave (%)", success, "a wave opens the next one when at least "
      + "this share of its devices succeeded"),
    field("Pause when more than this share failed (%)", failure,
      "of the finished devices; the engine pauses at >, not at ="),
    field("Mode", mode), preview, button);
  add(view, form);

  function body() {
    const doc = {
      name: name.value.trim(), release: release.value,
      waves: waves.value.split(/[\s,]+/).filter(Boolean).map(Number),
      success_threshold: Number(success.value) / 100,
      failure_threshold: Number(failure.value) / 100, mode: mode.value,
    };
    if (kind.value === "class") {
      const [vendor, cls] = (klass.value || "|").split("|");
      doc.target = { ...(vendor && vendor !== "null" ? { vendor_id: vendor } : {}),
        ...(cls ? { class_id: cls } : {}) };
    } else if (kind.value === "tags") {
      doc.target = { tags: [...tags.selectedOptions].map((o) => o.value) };
    } else {
      doc.target = { devices: [...chosen.selectedOptions].map((o) => o.value) };
    }
    return doc;
  }

  let asked = 0;
  async function showPreview() {
    for (const [k, el] of Object.entries(targets)) el.hidden = k !== kind.value;
    const mine = ++asked;
    const doc = body();
    delete doc.name;
    const missing = !Object.keys(doc.target).length ? "Pick a class."
      : doc.target.tags && !doc.target.tags.length ? "Pick at least one tag."
        : doc.target.devices && !doc.target.devices.length ? "Pick at least one device."
          : !doc.waves.length || doc.waves.some((w) => !Number.isFinite(w))
            ? "Give the waves as percentages, e.g. 10, 50, 100." : null;
    if (missing) { // said here: the server would only refuse it
      preview.className = "preview hint";
      preview.textContent = missing;
      return;
    }
    try {
      const p = await api("/api/v1/campaigns/preview", { method: "POST", body: doc });
      if (mine !== asked) return;
      preview.className = "preview";
      fill(preview, `${p.devices} device${p.devices === 1 ? "" : "s"} match now`,
        p.waves.length ? `: ${p.waves.map((n, i) => `wave ${i + 1} (${doc.waves[i]} %) gets `
          + `${n}`).join(", ")}` : "", ".");
    } catch (e) {
      if (mine !== asked || e.status === 401) return;
      preview.className = "preview error";
      preview.textContent = `preview: ${e.message}`;
    }
  }
  let pending = null;
  form.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(showPreview, 250);
  });
  form.addEventListener("change", () => {
    clearTimeout(pending);
    pending = setTimeout(showPreview, 50);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const made = await api("/api/v1/campaigns", { method: "POST", body: body() });
      location.hash = `#/campaigns/${encodeURIComponent(made.id)}`;
    } catch (e) {
      if (e.status !== 401) error.textContent = `create refused: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
  await showPreview();
}

// ------------------------------------------------------------------------------- audit

async function auditView(view) {
  const error = errorLine();
  const body = h("div");
  let limit = 100;
  const more = h("button", { type: "button", data: { action: "more" } }, "Show older entries");
  const filter = h("input", { type: "search", class: "filter", "aria-label": "filter the log",
    placeholder: "filter by who, action, target or detail" });
  let latest = [];
  function draw() {
    const query = filter.value.trim().toLowerCase();
    const shown = query ? latest.filter((e) => [e.actor, e.role, e.action, e.target, e.detail]
      .some((x) => String(x ?? "").toLowerCase().includes(query))) : latest;
    fill(body, table(["when", "who", "action", "target", "detail"], shown.map((e) => [
      when(e.timestamp), [e.actor, " ", h("span", { class: "role" }, e.role)],
      h("span", { data: { audit: e.action } }, e.action), e.target, e.detail || ""]),
    query ? "No entry matches." : "Nothing audited yet."));
    more.hidden = latest.length < limit || limit >= 1000;
  }
  filter.addEventListener("input", draw);
  more.addEventListener("click", () => {
    limit = Math.min(1000, limit + 100);
    tick();
  });
  add(view, h("h1", {}, "Audit log"), h("p", { class: "hint" }, "Every change made through "
    + "the API, newest first: who (token name and role), what and on what."), filter, error,
  body, h("div", { class: "actions" }, more));
  await goLive(async () => {
    const doc = await api(`/api/v1/audit?limit=${limit}`);
    latest = Array.isArray(doc?.entries) ? doc.entries : [];
    draw();
  }, error);
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
      ["signed", s.signed ? `${s.signed}${s.nonce_checked ? ", nonce checked" : ""}` : "no"],
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

function capabilityView(cap) {
  // the device's SUIT capability report (draft-ietf-suit-report §6), as the API gives it
  if (!cap) return [h("h2", {}, "Capabilities"), h("p", { class: "empty" },
    "No capability report yet.")];
  if (cap.error) return [h("h2", {}, "Capabilities"), h("p", {}, String(cap.error))];
  const list = (xs) => (Array.isArray(xs) ? xs.join(", ") : "—");
  const components = (cap.components || []).map((c) =>
    `${componentName(c.id)}${c.wildcard ? "/*" : ""}`).join(" ");
  return [h("h2", {}, "Capabilities"), h("div", { data: { testid: "capabilities" } },
    definitions([
      ["components", h("span", { class: "mono" }, components || "—")],
      ["commands", list(cap.commands)],
      ["parameters", list(cap.parameters)],
      ["algorithms", list(cap.algorithms)],
      ["envelope elements", list(cap.envelope)],
      ["manifest elements", list(cap.manifest)],
    ]))];
}

/** The device states from which an operator may end the update (``POST .../reset``). */
const IN_PROGRESS = new Set(["notified", "downloading", "downloaded", "installing", "waiting",
  "rebooting"]);

async function deviceView(view, id) {
  const base = `/api/v1/devices/${encodeURIComponent(id)}`;
  const error = errorLine();
  const facts = h("div");
  const timeline = h("section");
  // the controls are made once (a redraw every poll would take the focus away)
  const tags = h("input", { type: "text", class: "input narrow", "aria-label": "tags",
    data: { testid: "tags" }, placeholder: "tags, comma-separated" });
  const tagLine = h("span", { class: "hint", role: "status" });
  const saveTags = h("button", { type: "button", data: { action: "save-tags" } }, "Save tags");
  const reason = h("input", { type: "text", class: "input narrow", maxlength: 200,
    "aria-label": "reason for the reset", placeholder: "why (e.g. device lost)" });
  const reset = h("button", { type: "button", class: "danger", data: { action: "reset" } },
    "Reset stuck update");
  const resetBox = h("div", { class: "toolbar", hidden: true }, reason, reset);
  add(view, h("p", {}, h("a", { href: "#/" }, "← fleet")), error, facts,
    h("section", { class: "card controls" }, h("h2", {}, "Operate"),
      h("div", { class: "toolbar" }, tags, saveTags, tagLine),
      h("p", { class: "hint", data: { testid: "reset-hint" } }, "A device that stopped in "
        + "the middle of an update holds its campaign's wave: end that update as failed (the "
        + "campaign can then retry it)."), resetBox),
    timeline);
  await loadClassNames();
  saveTags.addEventListener("click", async () => {
    const wanted = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    try {
      const doc = await api(`${base}/tags`, { method: "PUT", body: { tags: wanted } });
      tagLine.textContent = `saved: ${doc.tags.join(", ") || "no tags"}`;
      delete tags.dataset.edited;
    } catch (e) {
      if (e.status !== 401) tagLine.textContent = `tags refused: ${e.message}`;
    }
  });
  tags.addEventListener("input", () => { tags.dataset.edited = "yes"; });
  reset.addEventListener("click", async () => {
    if (!window.confirm("End this device's update as failed? Its next report of this update "
      + "is refused; it starts over at its next assignment.")) return;
    reset.disabled = true;
    try {
      await api(`${base}/reset`, { method: "POST", body: { reason: reason.value.trim() } });
      reason.value = "";
      error.textContent = "";
      delete error.dataset.sticky;
    } catch (e) {
      if (e.status !== 401) {
        error.textContent = `reset refused: ${e.message}`;
        error.dataset.sticky = "yes";
      }
    } finally {
      reset.disabled = false;
    }
    tick();
  });
  await goLive(async () => {
    const [d, hist] = await Promise.all([api(base), apiAll(`${base}/history`, "history")]);
    if (!tags.dataset.edited && document.activeElement !== tags) {
      tags.value = (d.tags || []).join(", ");
    }
    resetBox.hidden = !IN_PROGRESS.has(d.state);
    const hw = Object.entries(d.hardware || {});
    fill(facts,
      h("h1", {}, d.name || d.id),
      definitions([
        ["id", h("span", { class: "mono" }, d.id)],
        ["state", stateBadge(d.state)],
        ["state changed", when(d.state_changed)],
        ["last seen", when(d.last_seen)],
        ["registered", when(d.created)],
        ["vendor", d.vendor_name ? [d.vendor_name, " ", h("span", { class: "mono hint" },
          d.vendor_id)] : d.vendor_id ? h("span", { class: "mono" }, d.vendor_id) : null],
        ["class", d.class_name || classNames?.get(d.class_id)
          ? [d.class_name || classNames.get(d.class_id), " ",
            h("span", { class: "mono hint" }, d.class_id)]
          : d.class_id ? h("span", { class: "mono" }, d.class_id) : null],
        ["tags", (d.tags || []).join(", ") || "none"],
        ["inventory updated", when(d.inventory_updated)],
      ]),
      h("h2", {}, "Installed components"),
      table(["component", "sequence number", "version", "digest"],
        (d.components || []).map((c) => [
          h("span", { class: "mono" }, componentName(c.id)),
          c.sequence === null ? "—" : String(c.sequence),
          h("span", { data: { testid: "version" } },
            Array.isArray(c.version) ? c.version.join(".") : "—"),
          short(c.digest, 16)]),
      "No inventory reported yet."),
      hw.length ? [h("h2", {}, "Hardware"), table(["fact", "value"],
        hw.map(([k, v]) => [k, String(v)]))] : null,
      (d.health || []).length ? [h("h2", {}, "Health after updates"), h("div",
        { data: { testid: "health" } }, table(["release", "health", "confirmed", "window",
        "checks / failed / crashes", "failed checks"], healthRows(d.health)))] : null,
      capabilityView(d.capabilities),
      h("h2", {}, "Keys"),
      definitions([
        ["recipient keys", `${(d.recipient_keys || []).length} published`],
        ["report key", d.report_key ? "registered (signed reports checked)" : "none"],
      ]));
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

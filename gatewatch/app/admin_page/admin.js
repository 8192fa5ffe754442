// The Gatewatch admin page: polls the admin listener's JSON endpoints and renders them. No framework, no build.
// Every value from the server goes into the DOM as text (textContent, attributes set one by one): never as HTML.
// The admin token stays in sessionStorage (this tab only) and is sent as `Authorization: Bearer` (RFC 6750 §2.1).
"use strict";

const POLL_MS = 1500;
const TOKEN_KEY = "gatewatch.admin.token";
let lastSeq = 0;
let events = [];  // newest first, at most the server's ring size
let ringSize = 200;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else if (k === "title" || k === "type" || k === "href" || k === "target" || k === "rel") node.setAttribute(k, String(v));
    else throw new Error("attribute not allowed: " + k);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function replace(id, ...children) {
  const box = document.getElementById(id);
  box.replaceChildren(...children);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function call(method, path) {
  const headers = {"Accept": "application/json"};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const resp = await fetch(path, {method, headers, cache: "no-store", credentials: "omit"});
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  return {status: resp.status, ok: resp.ok, body};
}

function notice(text, kind) {
  const p = document.getElementById("notice");
  p.textContent = text;
  p.className = kind || "";
}

function describeError(r) {
  const why = r.body && r.body.error ? r.body.error : "";
  if (r.status === 401) return "401 Unauthorized: " + (why || "the admin token is needed") + (token() ? " (the token given was refused)" : " (enter the admin token above)");
  if (r.status === 403) return "403 Forbidden: " + why;
  return r.status + ": " + (why || (r.body && r.body.problems ? r.body.problems.join("; ") : "failed"));
}

// ---- rendering ---------------------------------------------------------------------------------------------

function fmtSeconds(s) {
  return s === null || s === undefined ? "" : s + " s";
}

function renderStatus(st) {
  document.getElementById("version").textContent = st.version;
  document.getElementById("loaded-at").textContent = st.loaded_at + (st.path ? " from " + st.path : "");
  const p = st.process || {};
  document.getElementById("process").textContent = (p.service_name || "") + " pid " + p.pid +
    (p.worker !== null && p.worker !== undefined ? " worker " + p.worker : "") + (st.ready ? "" : " (not ready)") +
    (st.build ? " · hot path " + st.build.mode : "");
  const auth = st.auth || {};
  let state = auth.writes ? "writes need the token" : "no token configured: writes are open (loopback only)";
  if (auth.reads) state = "reads and writes need the token";
  if (token()) state += "; a token is set in this tab";
  document.getElementById("token-state").textContent = state;
  const rows = (st.reloads || []).map(r => el("tr", {"data-result": r.result},
    el("td", {}, r.at), el("td", {class: "result-" + r.result}, r.result),
    el("td", {}, r.from === r.to ? r.to : r.from + " → " + r.to),
    el("td", {}, (r.problems || []).join("; "))));
  replace("reloads", rows.length ? table(["when", "result", "version", "problems"], rows)
    : el("p", {class: "empty"}, "no reload since start"));
}

function table(headings, rows, attrs) {
  return el("table", attrs || {}, el("thead", {}, el("tr", {}, ...headings.map(h => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

function actionButton(pool, inst) {
  const action = inst.draining ? "undrain" : "drain";
  const b = el("button", {type: "button", "data-action": action, "data-pool": pool, "data-instance": inst.id}, action);
  b.addEventListener("click", () => drain(pool, inst.id, action));
  return b;
}

function renderUpstreams(data) {
  const sections = [];
  for (const [name, pool] of Object.entries(data.pools || {})) {
    const rows = pool.instances.map(i => el("tr", {"data-pool": name, "data-instance": i.id, "data-state": i.state},
      el("td", {}, i.id), el("td", {}, i.host + ":" + i.port), el("td", {}, i.zone || ""),
      el("td", {}, i.priority), el("td", {class: "state state-" + i.state}, i.state), el("td", {}, i.weight),
      el("td", {}, i.slow_start_ratio === 1 ? "" : Math.round(i.slow_start_ratio * 100) + " %"),
      el("td", {}, i.in_flight), el("td", {}, i.ejections || ""), el("td", {}, i.ejected_until || ""),
      el("td", {}, i.draining ? "yes" : ""), el("td", {}, i.source === undefined ? "" : String(i.source)),
      el("td", {}, actionButton(name, i))));
    const head = el("h3", {"data-pool": name}, name + " ",
      el("small", {}, pool.algorithm + ", active priority " + pool.active_priority),
      pool.panic ? el("span", {class: "panic"}, "PANIC") : null);
    sections.push(el("div", {class: "pool"}, head, table(["instance", "address", "zone", "priority", "state",
      "weight", "slow start", "in flight", "ejections", "ejected until", "draining", "source", ""], rows)));
  }
  const remotes = Object.entries(data.remotes || {});
  if (remotes.length) {
    sections.push(el("div", {class: "pool"}, el("h3", {}, "URL upstreams"), table(["name", "url"],
      remotes.map(([n, u]) => el("tr", {}, el("td", {}, n), el("td", {}, u.url))))));
  }
  replace("pools", ...(sections.length ? sections : [el("p", {class: "empty"}, "no pools in this process")]));
}

function matchText(m) {
  const parts = [];
  const path = m.path || {};
  for (const k of ["exact", "prefix", "template"]) if (path[k]) parts.push(k + " " + path[k]);
  if (m.hosts && m.hosts.length) parts.push("host " + m.hosts.join("|"));
  if (m.methods && m.methods.length) parts.push(m.methods.join("|"));
  for (const h of m.headers || []) parts.push("header " + h.name + (h.value !== null ? "=" + h.value : h.present ? " present" : " absent"));
  for (const q of m.query || []) parts.push("query " + q.name + (q.value !== null ? "=" + q.value : q.present ? " present" : " absent"));
  return parts.join(", ");
}

function upstreamText(r) {
  let text = r.upstream || (r.upstreams || []).map(u => u.name + " " + u.weight).join(" / ");
  if (r.mirror && r.mirror.upstream) text += " (mirror to " + r.mirror.upstream + ")";
  return text;
}

function renderRoutes(data) {
  const rows = [];
  for (const [layer, routes] of Object.entries(data)) {
    for (const r of routes) {
      const policies = el("ul", {class: "policies"}, ...r.policies.map(p =>
        el("li", {}, el("span", {class: "ptype"}, p.type), " " + p.name + (p.shadow ? " (shadow)" : ""))));
      const t = r.timeouts || {};
      const re = r.retries || {};
      rows.push(el("tr", {"data-route": r.name}, el("td", {}, layer), el("td", {}, r.name), el("td", {}, matchText(r.match)),
        el("td", {}, upstreamText(r)), el("td", {}, policies),
        el("td", {}, "connect " + fmtSeconds(t.connect_s) + ", response " + fmtSeconds(t.response_s) + ", idle " + fmtSeconds(t.idle_s)),
        el("td", {}, re.attempts === undefined ? "" : re.attempts + " attempt(s)" + (re.retry_on ? " on " + [].concat(re.retry_on).join(", ") : ""))));
    }
  }
  replace("routes", rows.length ? table(["layer", "route", "match", "upstream", "policies", "timeouts", "retries"], rows)
    : el("p", {class: "empty"}, "no routes"));
}

function eventSummary(e) {
  if (e.kind === "event") return [e.event.replace(/^gatewatch\./, ""), e.body];
  const what = (e.method || "") + " " + (e.path || "") + " → " + (e.status === null ? "no status" : e.status) + " " + (e.outcome || "");
  const ds = e.decisions.map(d => d.kind + " " + d.rule + ": " + d.result + " (" + d.reason + ")").join("; ");
  return ["request " + (e.route || "no route"), what + (ds ? " — " + ds : "")];
}

function renderEvents() {
  document.getElementById("events-count").textContent = events.length + " of the last " + ringSize;
  const rows = events.map(e => {
    const [kind, text] = eventSummary(e);
    let trace = e.trace_id ? e.trace_id : "";
    if (e.trace_url && /^https?:\/\//.test(e.trace_url)) {
      trace = el("a", {href: e.trace_url, target: "_blank", rel: "noopener noreferrer"}, e.trace_id);
    }
    return el("tr", {"data-seq": e.seq, "data-kind": e.kind, class: e.severity === "WARN" ? "warn" : ""},
      el("td", {}, e.time), el("td", {}, kind), el("td", {}, text), el("td", {class: "trace"}, trace));
  });
  replace("events", rows.length ? table(["time", "what", "detail", "trace"], rows)
    : el("p", {class: "empty"}, "nothing yet: denials, retries, failovers and state changes appear here"));
}

// ---- polling and actions -----------------------------------------------------------------------------------

async function refresh() {
  try {
    const [st, up, routes, ev] = await Promise.all([call("GET", "status"), call("GET", "upstreams"),
      call("GET", "routes"), call("GET", "events?after=" + lastSeq)]);
    for (const r of [st, up, routes, ev]) {
      if (!r.ok) {
        notice("reading the admin API: " + describeError(r), "error");
        return;
      }
    }
    renderStatus(st.body);
    renderUpstreams(up.body);
    renderRoutes(routes.body);
    ringSize = ev.body.size;
    if (ev.body.entries.length) {
      if (ev.body.total - lastSeq > ringSize) events = [];  // missed some: start over from what the ring holds
      events = ev.body.entries.concat(events).slice(0, ringSize);
      lastSeq = ev.body.total;
    }
    renderEvents();
    document.getElementById("updated").textContent = new Date().toISOString().slice(11, 19) + " UTC";
    const n = document.getElementById("notice");
    if (n.className === "error" && n.textContent.startsWith("reading")) notice("", "");
  } catch (e) {
    notice("the admin listener does not answer: " + e, "error");
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

async function drain(pool, instance, action) {
  const r = await call("POST", "upstreams/" + encodeURIComponent(pool) + "/instances/" + encodeURIComponent(instance) + "/" + action);
  if (r.ok) notice(action + " " + pool + "/" + instance + ": done", "ok");
  else notice(action + " " + pool + "/" + instance + ": " + describeError(r), "error");
}

async function reload() {
  const r = await call("POST", "reload");
  if (r.ok) notice("reload: done, config " + (r.body && r.body.version), "ok");
  else notice("reload: " + describeError(r), "error");
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const input = document.getElementById("token");
    const value = input.value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    notice(value ? "token set for this tab" : "", "ok");
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    notice("token forgotten", "ok");
  });
  document.getElementById("reload").addEventListener("click", reload);
  refresh();
});

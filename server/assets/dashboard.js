// lumie dashboard: live updates (SSE), inline name checks and the buttons, all through the
// JSON API with the session cookie (same origin). Server-rendered HTML stays the source of
// every row and panel: an update fetches the fresh fragment and swaps it in.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

async function api(method, path, body) {
  const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.reload(); throw new Error("signed out"); }
  let data = null;
  const text = await r.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const e = new Error((data && data.message) || `${method} ${path}: ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return data;
}

async function fragment(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401) { location.reload(); return null; }
  if (!r.ok) return { gone: r.status === 404 };
  return { html: await r.text() };
}

function parseRow(html) {
  const t = document.createElement("template");
  t.innerHTML = `<table><tbody>${html}</tbody></table>`;
  return t.content.querySelector("tr");
}

// Swapping HTML under a focused control would drop keyboard focus: note which control had it
// (by its data-action/data-app and workspace id) and focus its replacement.
function keepFocus(swap) {
  const a = document.activeElement;
  const key = a && (a.dataset?.action || a.dataset?.app)
    ? `[data-${a.dataset.action ? "action" : "app"}="${a.dataset.action || a.dataset.app}"]${a.dataset.id ? `[data-id="${a.dataset.id}"]` : ""}`
    : null;
  swap();
  if (key) { const next = document.querySelector(key); if (next && !next.disabled) next.focus(); }
}

function say(text) {
  const el = $("#live-state");
  if (el) el.textContent = text;
}

function watch(url, onEvent) {
  const es = new EventSource(url);
  es.addEventListener("open", () => say("Live"));
  es.addEventListener("error", () => say("Reconnecting…"));
  es.addEventListener("workspace", (ev) => {
    try { onEvent(JSON.parse(ev.data)); } catch (e) { console.error(e); }
  });
  return es;
}

// ----- the list -----

function applySearch() {
  const input = $("#search");
  if (!input) return;
  const q = input.value.trim().toLowerCase();
  for (const tr of $$("#rows tr")) {
    const hay = `${tr.dataset.name} ${tr.dataset.owner}`.toLowerCase();
    tr.hidden = q !== "" && !hay.includes(q);
  }
}

function syncEmpty() {
  const rows = $$("#rows tr").length;
  const empty = $("#empty");
  const table = $("#workspaces");
  if (empty) empty.hidden = rows > 0;
  if (table) table.hidden = rows === 0;
  const filters = $(".filters[data-hide-when-empty]");
  if (filters && !$("#search").value) filters.hidden = rows === 0;
}

async function refreshRow(id) {
  const f = await fragment(`/_dashboard/rows/${encodeURIComponent(id)}`);
  if (!f) return;
  const old = document.getElementById(`ws-${id}`);
  if (f.gone) { if (old) old.remove(); syncEmpty(); return; }
  if (!f.html) return;
  const tr = parseRow(f.html);
  if (!tr) return;
  keepFocus(() => { if (old) old.replaceWith(tr); else $("#rows").prepend(tr); });
  syncEmpty();
  applySearch();
}

function initList() {
  const list = $("#list");
  if (!list) return;
  watch(list.dataset.watch, (ws) => {
    const known = document.getElementById(`ws-${ws.id}`);
    if (ws.status === "deleted") { if (known) known.remove(); syncEmpty(); return; }
    if (known) refreshRow(ws.id);
  });
  const search = $("#search");
  if (search) { search.addEventListener("input", applySearch); applySearch(); }

  const form = $("#create-form");
  const name = $("#ws-name");
  const hint = $("#ws-name-hint");
  let timer = null;
  let seq = 0;
  const setHint = (text, kind) => {
    hint.textContent = text;
    hint.classList.toggle("bad", kind === "bad");
    hint.classList.toggle("good", kind === "good");
    name.setAttribute("aria-invalid", kind === "bad" ? "true" : "false");
  };
  const check = async () => {
    const value = name.value;
    const mine = ++seq;
    if (value === "") { setHint("Lowercase letters, digits and '-', starting and ending with a letter or digit.", ""); return false; }
    const owner = form.dataset.owner;
    const r = await api("GET", `/api/v2/workspacenames?owner=${encodeURIComponent(owner)}&name=${encodeURIComponent(value)}`);
    if (mine !== seq) return r.valid;
    if (r.valid) setHint(`Pod ${r.pod}, home volume ${r.home_volume}.`, "good");
    else setHint(r.error, "bad");
    return r.valid;
  };
  name.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => check().catch(() => {}), 120); });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    const button = $("#create-submit");
    button.disabled = true;
    try {
      if (!(await check())) { name.focus(); return; }
      const ws = await api("POST", "/api/v2/users/me/workspaces", { name: name.value });
      setHint(`Created ${ws.name}: pod ${ws.pod_name}.`, "good");
      name.value = "";
      await refreshRow(ws.id);
    } catch (e) {
      setHint(e.message, "bad");
      name.focus();
    } finally {
      button.disabled = false;
    }
  });
}

// ----- one workspace -----

function initWorkspace() {
  const live = $("#live");
  if (!live) return;
  let last = null;
  const refresh = async () => {
    const f = await fragment(live.dataset.fragment);
    if (f && f.html && f.html !== last) { last = f.html; keepFocus(() => { live.innerHTML = f.html; }); }
    else if (f && f.gone) say("This workspace is gone.");
  };
  const panels = $$("[data-refresh]").map((el) => {
    let html = null;
    const again = async () => {
      const f = await fragment(el.dataset.refresh);
      if (f && f.html && f.html !== html) { html = f.html; el.innerHTML = f.html; }
    };
    setInterval(() => { if (!document.hidden) again(); }, Number(el.dataset.every) || 30_000);
    return again;
  });
  watch(live.dataset.watch, (ws) => {
    refresh();
    for (const again of panels) again();
    if (ws.status === "deleted") say("Deleted");
  });
  // Status changes arrive by SSE; the agent's connection and app health change without a
  // status change, so the panel is also refreshed every 10 s while the tab is visible. The
  // graphs and events ([data-refresh]) refresh on their own period and on each status change.
  setInterval(() => { if (!document.hidden) refresh(); }, 10_000);
}

// ----- buttons (both pages) -----

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  const action = b.dataset.action;
  if (action === "delete" && !confirm(`Delete workspace ${b.dataset.name}? Its home volume is deleted too; this cannot be undone.`)) return;
  b.disabled = true;
  try {
    await api("POST", `/api/v2/workspaces/${encodeURIComponent(b.dataset.id)}/builds`, { transition: action });
    say(`${action} requested`);
    if (document.getElementById(`ws-${b.dataset.id}`)) refreshRow(b.dataset.id);
  } catch (e) {
    say(e.message);
    b.disabled = false;
  }
});

// ----- tokens -----

function initTokens() {
  const form = $("#token-form");
  if (!form) return;
  const err = $("#token-error");
  const fmt = (iso) => iso ? iso.replace("T", " ").slice(0, 16) + " UTC" : "never";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const name = $("#token-name").value.trim();
    if (!name) { err.textContent = "A token needs a name."; err.hidden = false; $("#token-name").focus(); return; }
    const days = Number($("#token-lifetime").value);
    try {
      const k = await api("POST", "/api/v2/users/me/keys", { token_name: name, lifetime_seconds: days * 86400 });
      $("#new-token-value").value = k.key;
      $("#new-token").hidden = false;
      $("#new-token-value").select();
      const tr = document.createElement("tr");
      tr.id = `token-${k.id}`;
      tr.dataset.id = k.id;
      const cells = [["Name", k.name], ["Created", fmt(new Date().toISOString())], ["Last used", "never"], ["Expires", fmt(k.expires_at)]];
      for (const [label, text] of cells) {
        const td = document.createElement("td");
        td.dataset.label = label;
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      td.dataset.label = "Actions";
      const rb = document.createElement("button");
      rb.type = "button"; rb.className = "danger"; rb.textContent = "Revoke";
      rb.dataset.revoke = k.id; rb.dataset.name = k.name;
      rb.setAttribute("aria-label", `Revoke ${k.name}`);
      td.append(rb); tr.append(td);
      $("#tokens tbody").prepend(tr);
      $("#tokens").hidden = false;
      $("#tokens-empty").hidden = true;
      $("#token-name").value = "";
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
  });
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-revoke]");
    if (!b) return;
    if (!confirm(`Revoke token ${b.dataset.name}? Anything using it stops working.`)) return;
    try {
      await api("DELETE", `/api/v2/users/me/keys/${encodeURIComponent(b.dataset.revoke)}`);
      b.closest("tr").remove();
      const left = $$("#tokens tbody tr").length;
      $("#tokens").hidden = left === 0;
      $("#tokens-empty").hidden = left > 0;
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
  });
}

// ----- the startup log (workspace page) -----

// Follows the workspace's startup log: lines after the server-rendered ones (data-after) are
// appended as they arrive, as text (never HTML); `start` means a new agent lifetime began.
function initStartupLog() {
  const pre = $("#startup-log");
  if (!pre || !window.EventSource) return;
  let after = Number(pre.dataset.after || 0);
  const es = new EventSource(pre.dataset.follow);
  const append = (line) => {
    const row = document.createElement("span");
    row.className = `log-line log-${line.stream}`;
    const at = document.createElement("span");
    at.className = "log-at";
    at.textContent = (line.at || "").slice(11, 23);
    row.append(at, document.createTextNode(` ${line.text}\n`));
    pre.hidden = false;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(row);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    const empty = $("#startup-log-empty");
    if (empty) empty.hidden = true;
  };
  es.addEventListener("line", (ev) => {
    try {
      const line = JSON.parse(ev.data);
      if (line.id === 0 && pre.childElementCount > 0) return; // the dropped-lines marker, shown
      if (line.id !== 0 && line.id <= after) return;
      if (line.id !== 0) after = line.id;
      append(line);
    } catch (e) { console.error(e); }
  });
  es.addEventListener("start", () => { pre.textContent = ""; after = 0; });
  es.addEventListener("end", () => es.close());
}

document.addEventListener("DOMContentLoaded", initStartupLog);
// ----- the policy editor (admins) -----

function initPolicy() {
  const form = $("#policy-form");
  if (!form) return;
  const text = $("#policy-yaml");
  const err = $("#policy-error");
  const saved = $("#policy-saved");
  const reload = $("#policy-reload");
  const show = (message) => {
    err.textContent = message;
    err.hidden = !message;
    text.setAttribute("aria-invalid", message ? "true" : "false");
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    show("");
    saved.textContent = "";
    const button = $("#policy-save");
    button.disabled = true;
    // The API's own document in YAML: the editor's text is the spec, indented under `spec:`
    // (one line down, two columns in: positions in the messages are moved back to the editor's).
    const rv = form.dataset.resourceVersion;
    const body = "spec:\n" + text.value.split("\n").map((l) => "  " + l).join("\n") + "\n"
      + (rv ? `resourceVersion: ${JSON.stringify(rv)}\n` : "");
    try {
      const r = await fetch("/api/v2/policy", {
        method: "PUT", credentials: "same-origin", body,
        headers: { "Content-Type": "application/yaml", Accept: "application/json" },
      });
      const data = await r.json().catch(() => null);
      if (r.status === 409) {
        show("The policy changed since you opened it — reload to see the current version, then make your change again.");
        reload.hidden = false;
      } else if (!r.ok) {
        const msg = (data && data.message) || `saving failed: ${r.status}`;
        show(msg.replace(/line (\d+) column (\d+)/g, (_, l, c) => `line ${Math.max(1, l - 1)} column ${Math.max(1, c - 2)}`));
        text.focus();
      } else {
        form.dataset.resourceVersion = data.resourceVersion || "";
        const v = $("#policy-version");
        if (v) v.textContent = data.resourceVersion || "?";
        saved.textContent = `Saved: resourceVersion ${data.resourceVersion}.`;
      }
    } catch (e) {
      show(e.message);
    } finally {
      button.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => { initList(); initWorkspace(); initTokens(); initPolicy(); });

// The dashboard in Debian's chromium, driven by playwright-core (never a downloaded browser).
// Started by tests/tests/dashboard.rs with LUMIE_URL, LUMIE_ADMIN_TOKEN, LUMIE_MEMBER_TOKEN,
// LUMIE_CONTROL (cordon the workers, record an event), LUMIE_SCREENSHOTS and LUMIE_PROFILE_DIR.
// One stack for every test, in file order; waits are on the page's own changes (selectors,
// a MutationObserver, responses), never fixed sleeps.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import { chromium } from "playwright-core";

const URL = process.env.LUMIE_URL;
const SHOTS = process.env.LUMIE_SCREENSHOTS;
const ADMIN = process.env.LUMIE_ADMIN_TOKEN;
const MEMBER = process.env.LUMIE_MEMBER_TOKEN;
const CONTROL = process.env.LUMIE_CONTROL;
const WIDE = 1920;
const NARROW = 360;

let ctx;
before(async () => {
  ctx = await chromium.launchPersistentContext(process.env.LUMIE_PROFILE_DIR, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: WIDE, height: 1000 },
  });
  ctx.setDefaultTimeout(60_000);
});
after(async () => { await ctx?.close(); });

async function shot(page, name) {
  for (const width of [WIDE, NARROW]) {
    await page.setViewportSize({ width, height: width === NARROW ? 780 : 1000 });
    await page.screenshot({ path: path.join(SHOTS, `${name}-${width}.png`), fullPage: true });
    if (width === NARROW) await page.screenshot({ path: path.join(SHOTS, `${name}-${width}-top.png`) });
  }
  await page.setViewportSize({ width: WIDE, height: 1000 });
}

// A signed-out visit: the page answers a redirect to the sign-in page. Chromium now and then
// reports such a first navigation of a fresh tab as net::ERR_ABORTED although the sign-in page
// then loads; only that is retried, once, and said.
async function visitSignedOut(page, where) {
  try {
    await page.goto(URL + where);
  } catch (e) {
    if (!/ERR_ABORTED/.test(e.message)) throw e;
    console.log(`retrying ${where} after ${e.message.split("\n")[0]}`);
    await page.goto(URL + where);
  }
  assert.match(page.url(), /\/login/, "signed out: the sign-in page");
}

async function openTokenForm(page) {
  const details = page.locator("details:has(#token-login)");
  if ((await details.getAttribute("open")) === null) await details.locator("summary").click();
}

async function signIn(page, token, where = "/") {
  await ctx.clearCookies();
  await visitSignedOut(page, where);
  await openTokenForm(page);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.waitForURL((u) => !u.pathname.startsWith("/login"));
}

// Through the test OpenID provider's own login form, as a person would.
async function keycloak(page, user, where = "/") {
  await ctx.clearCookies();
  await visitSignedOut(page, where);
  await page.getByRole("link", { name: "Sign in with Keycloak" }).click();
  await page.locator("input[name=username]").fill(user);
  await page.locator("input[name=password]").fill(`${user}-password`);
  await page.getByRole("button", { name: "Sign in" }).click();
  const origin = new globalThis.URL(URL).origin;
  await page.waitForURL((u) => u.origin === origin && !u.pathname.startsWith("/login") && !u.pathname.startsWith("/api/"));
  assert.equal(await page.locator(".who .user").innerText(), user);
}

async function api(method, p, token, body) {
  const r = await fetch(URL + p, {
    method,
    headers: { "Coder-Session-Token": token, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function control(p) {
  const r = await fetch(CONTROL + p, { method: "POST" });
  assert.equal(r.status, 200, await r.text());
}

// Records every status the list shows for workspace `name` (a MutationObserver: each live
// change, however brief), and marks the page so a reload would be noticed.
async function recordStatuses(page, name) {
  await page.evaluate((name) => {
    window.__noReload = true;
    window.__seen = [];
    const note = () => {
      const tr = document.querySelector(`#rows tr[data-name="${name}"]`);
      if (tr && window.__seen.at(-1) !== tr.dataset.status) window.__seen.push(tr.dataset.status);
    };
    new MutationObserver(note).observe(document.querySelector("#rows"), { subtree: true, childList: true, attributes: true });
  }, name);
}

async function createFromList(page, name) {
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.locator("#ws-name-hint.good").waitFor();
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator(`#rows tr[data-name="${name}"]`).waitFor();
}

async function watchUntilRunning(page, name) {
  await recordStatuses(page, name);
  await createFromList(page, name);
  await page.locator(`#rows tr[data-name="${name}"][data-status=running]`).waitFor({ timeout: 120_000 });
  const seen = await page.evaluate(() => window.__seen);
  assert.ok(seen.length >= 2 && seen.at(-1) === "running", `moved through statuses live: ${seen}`);
  assert.ok(seen.includes("pending") || seen.includes("starting"), `was not running at first: ${seen}`);
  assert.equal(await page.evaluate(() => window.__noReload), true, "no reload happened");
  return seen;
}

test("a member: empty state, create live, duplicate refused, workspace page, tokens", async () => {
  const page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  // Signed out: the sign-in page; a wrong token is named as such, and the return path kept.
  await page.goto(URL + "/settings/tokens");
  assert.match(page.url(), /\/login\?redirect=%2Fsettings%2Ftokens$/);
  await shot(page, "login");
  await openTokenForm(page);
  await page.getByLabel("API token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.locator("#login-error").waitFor();
  assert.match(await page.locator("#login-error").innerText(), /not valid/);
  await signIn(page, MEMBER, "/settings/tokens");
  assert.equal(new globalThis.URL(page.url()).pathname, "/settings/tokens", "returns to the page asked for");
  await page.goto(URL + "/");
  await page.locator("#empty").waitFor({ state: "visible" });
  assert.match(await page.locator("#empty").innerText(), /No workspaces yet/);
  await shot(page, "member-empty");

  // The name is checked as it is typed, with the contract's rules.
  const name = page.getByLabel("Name", { exact: true });
  await name.fill("Bad_Name");
  await page.locator("#ws-name-hint.bad").waitFor();
  await name.fill("web");
  await page.locator("#ws-name-hint.good").waitFor();
  assert.match(await page.locator("#ws-name-hint").innerText(), /coder-mia-web-home/);

  // Create; the row then moves through statuses with no reload.
  const seen = await watchUntilRunning(page, "web");
  console.log("statuses seen live:", seen.join(" → "));

  // A duplicate name is refused inline (the API's 409).
  await name.fill("web");
  await page.locator("#ws-name-hint.good").waitFor();
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("#ws-name-hint.bad").waitFor();
  const dup = await page.locator("#ws-name-hint").innerText();
  assert.match(dup, /exists|already|taken/i, dup);

  // Its page: status, agent, apps opening through the app proxy.
  const row = page.locator("#rows tr[data-name=web]");
  await row.getByRole("link", { name: "web" }).click();
  await page.waitForURL(/\/@mia\/web$/);
  await page.locator("#live .status-running").waitFor();
  const tilt = page.locator("a[data-app=tilt]");
  assert.match(await tilt.getAttribute("href"), /\/@mia\/web\/apps\/tilt\/$/);
  assert.equal(await tilt.getAttribute("target"), "_blank");
  await page.locator("#agent-connection", { hasText: "connected" }).waitFor();

  // Tokens: create one, see it once, revoke it.
  await page.goto(URL + "/settings/tokens");
  await page.getByLabel("Name").fill("laptop <cli>");
  await page.getByLabel("Expires after").selectOption("7");
  await page.getByRole("button", { name: "Create token" }).click();
  await page.locator("#new-token").waitFor({ state: "visible" });
  const key = await page.locator("#new-token-value").inputValue();
  assert.ok(key.length > 20);
  assert.equal((await api("GET", "/api/v2/users/me", key)).status, 200, "the new token works");
  await shot(page, "member-tokens");
  await page.reload();
  const tokenRow = page.locator("#tokens tr", { hasText: "laptop <cli>" });
  await tokenRow.waitFor();
  await tokenRow.getByRole("button", { name: /Revoke/ }).click();
  await tokenRow.waitFor({ state: "detached" });
  assert.equal((await api("GET", "/api/v2/users/me", key)).status, 401, "revoked");
  await page.close();
});

test("an admin sees everyone's; a member does not see the admin's", async () => {
  for (let i = 1; i <= 9; i++) {
    const r = await api("POST", "/api/v2/users/me/workspaces", ADMIN, { name: `admin-box-${i}` });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
  const page = await ctx.newPage();
  await signIn(page, ADMIN);
  await page.locator("#rows tr[data-name=admin-box-9]").waitFor();
  await page.locator("#rows tr[data-name=web]").waitFor();
  assert.match(await page.locator("h1").innerText(), /All workspaces/);
  await shot(page, "admin-list");
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(SHOTS, `admin-list-dark-${WIDE}.png`) });
  await page.emulateMedia({ colorScheme: "light" });
  // The search box filters as one types; the owner filter narrows server-side.
  for (const width of [WIDE, NARROW]) {
    await page.setViewportSize({ width, height: 900 });
    await page.getByLabel("Search").fill("web");
    assert.equal(await page.locator("#rows tr:visible").count(), 1, `search at ${width} px`);
    await page.getByLabel("Search").fill("");
    assert.equal(await page.locator("#rows tr:visible").count(), 10, `all back at ${width} px`);
  }
  await page.setViewportSize({ width: WIDE, height: 1000 });
  await page.getByLabel("Owner").selectOption("mia");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/owner=mia/);
  assert.equal(await page.locator("#rows tr").count(), 1);

  await signIn(page, MEMBER);
  await page.locator("#rows tr[data-name=web]").waitFor();
  assert.equal(await page.locator("#rows tr[data-name^=admin-box]").count(), 0, "members see only their own");
  const other = await page.goto(URL + "/@admin/admin-box-1");
  assert.equal(other.status(), 404);
  await shot(page, "member-not-found");

  // Stop, then delete (confirmed), each seen live in the list.
  let confirmed = "";
  page.on("dialog", (d) => { confirmed = d.message(); d.accept(); });
  await page.goto(URL + "/");
  const row = page.locator("#rows tr[data-name=web]");
  await row.getByRole("button", { name: "Stop web" }).click();
  await page.locator("#rows tr[data-name=web][data-status=stopped]").waitFor({ timeout: 60_000 });
  await row.getByRole("button", { name: "Delete web" }).click();
  await row.waitFor({ state: "detached", timeout: 60_000 });
  assert.match(confirmed, /Delete workspace web\?/);
  await page.locator("#empty").waitFor({ state: "visible" });
  await page.close();
});

test("bob through Keycloak: create, live to running, code-server through the proxy, graphs, stop, start, delete", async () => {
  const page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  await keycloak(page, "bob");
  assert.match(await page.locator("h1").innerText(), /Your workspaces/);
  const seen = await watchUntilRunning(page, "web");
  console.log("bob's statuses seen live:", seen.join(" → "));
  await shot(page, "member-list");

  // An hour of earlier samples, as if it had been running that long.
  await control(`/history?workspace_id=${await page.locator("#rows tr[data-name=web]").getAttribute("data-id")}`);
  await page.locator("#rows tr[data-name=web]").getByRole("link", { name: "web" }).click();
  await page.waitForURL(/\/@bob\/web$/);
  await page.locator("#live .status-running").waitFor();
  // The heartbeats' stats as graphs (the newest from the live heartbeat), and the scheduler's
  // event about the pod.
  await page.locator("#graph-cpu .graph-now", { hasText: "0.35 cores" }).waitFor();
  assert.match(await page.locator("#graph-memory .graph-now").innerText(), /1\.5 GiB of 8\.0 GiB/);
  assert.match(await page.locator("#graph-cpu svg").getAttribute("aria-label"), /^CPU over the last hour: now 0\.35 cores, peak 1\.\d\d cores$/);
  const line = await page.locator("#graph-cpu svg.spark path.line").getAttribute("d");
  assert.ok(line.split("L").length > 100, `an hour of points: ${line.slice(0, 80)}…`);
  // 118 earlier samples, and one or two live ones (one per 30 s bucket since the pod started).
  const count = Number((await page.locator("#resources .hint").innerText()).match(/^(\d+) samples/)[1]);
  assert.ok(count >= 119 && count <= 121, `${count} samples`);
  await page.locator("#pod-events tr[data-reason=Scheduled]").waitFor();
  await shot(page, "member-workspace");

  // code-server's tab: the stand-in app's page, through the path-based app proxy.
  const [tab] = await Promise.all([ctx.waitForEvent("page"), page.locator("a[data-app=code-server]").click()]);
  await tab.waitForLoadState();
  assert.match(tab.url(), /\/@bob\/web\/apps\/code-server\/$/);
  assert.match(await tab.locator("body").innerText(), /^code-server stand-in: \//);
  await tab.close();

  // Stop, start, delete, each seen on the page without a reload.
  await page.evaluate(() => { window.__noReload = true; });
  await page.locator("#live button[data-action=stop]").click();
  await page.locator("#live .status-card[data-status=stopped]").waitFor({ timeout: 90_000 });
  await page.locator("#live button[data-action=start]").click();
  await page.locator("#live .status-card[data-status=running]").waitFor({ timeout: 120_000 });
  await page.locator("#live button[data-action=delete]").click();
  await page.locator("#live-state", { hasText: /Deleted|gone/ }).waitFor({ timeout: 90_000 });
  assert.equal(await page.evaluate(() => window.__noReload), true, "no reload happened");
  await page.goto(URL + "/");
  await page.locator("#empty").waitFor({ state: "visible" });
  await page.close();
});

test("cordoned workers: the scheduler's reason on the page; HTML in an event is text", async () => {
  const page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  await keycloak(page, "bob");
  await control("/cordon?on=true");
  try {
    await createFromList(page, "stuck");
    const hostile = '<img src=x onerror="window.__xss=1"><b>not bold</b> & <script>window.__xss=2</script>';
    await control(`/event?pod=coder-bob-stuck&message=${encodeURIComponent(hostile)}`);
    await page.goto(URL + "/@bob/stuck");
    await page.locator("#status-reason", { hasText: /unschedulable|nodes are available/ }).waitFor({ timeout: 90_000 });
    const reason = await page.locator("#status-reason").innerText();
    console.log("scheduler's reason:", reason);
    await page.locator("#pod-events tr[data-reason=FailedScheduling]").first().waitFor({ timeout: 60_000 });
    const hostileRow = page.locator("#pod-events tr[data-reason=BackOff]");
    await hostileRow.waitFor();
    assert.equal(await hostileRow.locator("td.reason").innerText(), hostile, "the message, as text");
    assert.equal(await page.locator("#pod-events b, #pod-events img, #pod-events script").count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    await shot(page, "member-workspace-unschedulable");
    await page.locator("#live button[data-action=delete]").click();
    await page.locator("#live-state", { hasText: /Deleted|gone/ }).waitFor({ timeout: 90_000 });
  } finally {
    await control("/cordon?on=false");
  }
  await page.close();
});

test("who sees what: bob not alice's workspace nor the admin pages; alice both", async () => {
  const page = await ctx.newPage();
  await keycloak(page, "alice");
  await createFromList(page, "alice-box");
  await keycloak(page, "bob");
  await createFromList(page, "bob-box");
  assert.equal(await page.locator("#rows tr[data-owner=alice]").count(), 0, "not in bob's list");
  assert.equal(await page.locator("header nav a", { hasText: "Admin" }).count(), 0, "no admin link for bob");
  for (const p of ["/@alice/alice-box", "/admin/users", "/admin/policy", "/admin/audit", "/admin/health"]) {
    const r = await page.goto(URL + p);
    assert.equal(r.status(), 404, p);
    assert.match(await page.locator("h1").innerText(), /Not found/, p);
  }
  // Nor act on it: the API answers not found too.
  const id = (await api("GET", "/api/v2/workspaces?owner=alice", ADMIN)).body.workspaces
    .find((w) => w.name === "alice-box").id;
  const stop = await page.evaluate(async (id) => (await fetch(`/api/v2/workspaces/${id}/builds`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ transition: "stop" }),
  })).status, id);
  assert.equal(stop, 404, "bob cannot stop alice's workspace");

  await keycloak(page, "alice");
  await page.locator("#rows tr[data-owner=bob][data-name=bob-box]").waitFor();
  assert.match(await page.locator("h1").innerText(), /All workspaces/);
  await page.locator("#rows tr[data-name=admin-box-9][data-status=running]").waitFor({ timeout: 120_000 });
  await shot(page, "admin-list-everyone");
  assert.equal((await page.goto(URL + "/@bob/bob-box")).status(), 200);
  await page.locator("#live .status-card").waitFor();
  await shot(page, "admin-workspace");
  await page.locator("header nav a", { hasText: "Admin" }).click();
  await page.waitForURL(/\/admin\/users$/);
  assert.match(await page.locator("#users tr[data-user=alice]").innerText(), /admin/);
  assert.match(await page.locator("#users tr[data-user=bob]").innerText(), /member/);
  await shot(page, "admin-users");
  await page.getByRole("link", { name: "Health" }).click();
  await page.waitForURL(/\/admin\/health$/);
  assert.ok((await page.locator("#checks tbody tr").count()) > 3, "the doctor's checks ran");
  await page.locator("#checks tr[data-check=workspace-service]").waitFor();
  await shot(page, "admin-health");
  await page.close();
});

test("alice edits the policy: a bad glob is named, a concurrent edit says reload, a good one is audited", async () => {
  // The object exists (the editor then sends the version it was opened at).
  const current = await api("GET", "/api/v2/policy", ADMIN);
  assert.equal(current.status, 200, JSON.stringify(current.body));
  const created = await api("PUT", "/api/v2/policy", ADMIN, { spec: current.body.spec, resourceVersion: current.body.resourceVersion });
  assert.equal(created.status, 200, JSON.stringify(created.body));

  const page = await ctx.newPage();
  await keycloak(page, "alice", "/admin/policy");
  const editor = page.getByLabel("Spec (YAML)");
  const original = await editor.inputValue();
  assert.match(original, /docker:\*dind\*/);

  // A bad image glob: the server's validation message, next to the editor.
  await editor.fill(original.replace("- docker:*dind*", "- docker:[dind"));
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator("#policy-error").waitFor({ state: "visible" });
  const invalid = await page.locator("#policy-error").innerText();
  assert.match(invalid, /\[dind/, invalid);
  assert.equal(await editor.getAttribute("aria-invalid"), "true");
  await shot(page, "admin-policy-invalid");

  // Someone else saves meanwhile: this editor's version is stale.
  const now = await api("GET", "/api/v2/policy", ADMIN);
  const theirs = { ...now.body.spec, exemptUsers: [...(now.body.spec.exemptUsers || []), "concurrent-editor"] };
  const concurrent = await api("PUT", "/api/v2/policy", ADMIN, { spec: theirs, resourceVersion: now.body.resourceVersion });
  assert.equal(concurrent.status, 200, JSON.stringify(concurrent.body));
  const good = (text) => text.replace(/^(\s*)- docker\.io\/library\/docker:\*dind\*$/m,
    "$1- docker.io/library/docker:*dind*\n$1- registry.example/docker:*dind*");
  await editor.fill(good(original));
  assert.notEqual(await editor.inputValue(), original, "the edit applies");
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator("#policy-error", { hasText: "changed since you opened it — reload" }).waitFor();
  await page.locator("#policy-reload").waitFor({ state: "visible" });

  // Reload: the other edit is there; the good edit now saves.
  await page.locator("#policy-reload").click();
  await page.waitForLoadState();
  assert.match(await editor.inputValue(), /concurrent-editor/);
  await editor.fill(good(await editor.inputValue()));
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator("#policy-saved", { hasText: "Saved" }).waitFor();
  await shot(page, "admin-policy");

  // The audit log shows alice's change, newest first, with the value after.
  await page.getByRole("link", { name: "Audit log", exact: true }).click();
  await page.getByLabel("Action").fill("policy.update");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/action=policy.update/);
  const newest = page.locator("#audit tbody tr").first();
  assert.match(await newest.locator("td[data-label=Who]").innerText(), /^alice$/);
  await newest.getByText("What changed").click();
  assert.match(await newest.locator("pre.diff").innerText(), /^\+ +"registry\.example\/docker:\*dind\*"$/m, "the added line, alone");
  assert.doesNotMatch(await newest.locator("pre.diff").innerText(), /serviceAccountName/, "only what changed");
  await shot(page, "admin-audit");
  await page.close();
});

test("a cross-site form cannot change state with bob's session", async () => {
  const page = await ctx.newPage();
  await keycloak(page, "bob");
  // Another origin (same host, another port: the browser sends bob's SameSite=Lax cookie).
  const evil = http.createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><form id="ws" method="post" action="${URL}/api/v2/users/me/workspaces">
      <input name="name" value="evil"></form>
      <form id="out" method="post" action="${URL}/logout"></form>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  try {
    const evilUrl = `http://127.0.0.1:${evil.address().port}/`;
    for (const [form, target, refusal] of [
      ["ws", "/api/v2/users/me/workspaces", /cross-site request refused/],
      ["out", "/logout", /This form was sent from http:\/\/127\.0\.0\.1:\d+, not from/],
    ]) {
      await page.goto(evilUrl);
      const [answer] = await Promise.all([
        page.waitForResponse((r) => r.url() === URL + target),
        page.evaluate((id) => document.getElementById(id).submit(), form),
      ]);
      assert.equal(answer.status(), 403, target);
      assert.match(await answer.text(), refusal, target);
    }
  } finally {
    evil.close();
  }
  // Still signed in, and nothing was created.
  await page.goto(URL + "/");
  assert.equal(new globalThis.URL(page.url()).pathname, "/");
  await page.locator("#rows tr[data-name=bob-box]").waitFor();
  assert.equal(await page.locator("#rows tr[data-name=evil]").count(), 0);
  const all = (await api("GET", "/api/v2/workspaces", ADMIN)).body.workspaces;
  assert.equal(all.filter((w) => w.name === "evil").length, 0);
  await page.close();
});

test("an app reached signed out: sign in, and back to the app", async () => {
  const page = await ctx.newPage();
  await keycloak(page, "bob");
  await page.locator("#rows tr[data-name=bob-box][data-status=running]").waitFor({ timeout: 120_000 });
  await ctx.clearCookies();
  const app = `${URL}/@bob/bob-box/apps/code-server/some/file?line=3`;
  const r = await page.goto(app);
  assert.equal(r.status(), 401);
  assert.match(await page.locator("h1").innerText(), /Sign in required/);
  await shot(page, "app-signed-out");
  await page.getByRole("link", { name: "Sign in with Keycloak" }).click();
  await page.locator("input[name=username]").fill("bob");
  await page.locator("input[name=password]").fill("bob-password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(app);
  assert.equal(await page.locator("body").innerText(), "code-server stand-in: /some/file");
  await page.close();
});

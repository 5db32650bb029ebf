// The dashboard in Debian's chromium, driven by playwright-core (never a downloaded browser).
// Started by tests/tests/dashboard.rs with LUMIE_URL, LUMIE_ADMIN_TOKEN, LUMIE_MEMBER_TOKEN,
// LUMIE_SCREENSHOTS and LUMIE_PROFILE_DIR.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { chromium } from "playwright-core";

const URL = process.env.LUMIE_URL;
const SHOTS = process.env.LUMIE_SCREENSHOTS;
const ADMIN = process.env.LUMIE_ADMIN_TOKEN;
const MEMBER = process.env.LUMIE_MEMBER_TOKEN;

let ctx;
before(async () => {
  ctx = await chromium.launchPersistentContext(process.env.LUMIE_PROFILE_DIR, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
  });
});
after(async () => { await ctx?.close(); });

async function shot(page, name) {
  for (const width of [1280, 360]) {
    await page.setViewportSize({ width, height: width === 360 ? 780 : 900 });
    await page.screenshot({ path: path.join(SHOTS, `${name}-${width}.png`), fullPage: true });
    if (width === 360) await page.screenshot({ path: path.join(SHOTS, `${name}-${width}-top.png`) });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function signIn(page, token, where = "/") {
  await ctx.clearCookies();
  await page.goto(URL + where);
  assert.match(page.url(), /\/login/, "signed out: the sign-in page");
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.waitForURL((u) => !u.pathname.startsWith("/login"));
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

test("a member: empty state, create live, duplicate refused, workspace page, tokens", async () => {
  const page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  // Signed out: the sign-in page; a wrong token is named as such, and the return path kept.
  await page.goto(URL + "/settings/tokens");
  assert.match(page.url(), /\/login\?redirect=%2Fsettings%2Ftokens$/);
  await shot(page, "login");
  await page.getByLabel("API token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.locator("#login-error").waitFor();
  assert.match(await page.locator("#login-error").innerText(), /not valid/);
  await shot(page, "login-error");
  await signIn(page, MEMBER, "/settings/tokens");
  assert.equal(new globalThis.URL(page.url()).pathname, "/settings/tokens", "returns to the page asked for");
  await page.goto(URL + "/");
  await page.locator("#empty").waitFor({ state: "visible" });
  assert.match(await page.locator("#empty").innerText(), /No workspaces yet/);
  await shot(page, "member-empty");

  // The name is checked as it is typed, with the contract's rules.
  const name = page.getByLabel("Name");
  await name.fill("Bad_Name");
  await page.locator("#ws-name-hint.bad").waitFor();
  await name.fill("web");
  await page.locator("#ws-name-hint.good").waitFor();
  assert.match(await page.locator("#ws-name-hint").innerText(), /coder-mia-web-home/);

  // Create; the row then moves through statuses with no reload.
  await page.evaluate(() => { window.__noReload = true; });
  await page.getByRole("button", { name: "Create" }).click();
  const row = page.locator("#rows tr[data-name=web]");
  await row.waitFor();
  const seen = new Set([await row.getAttribute("data-status")]);
  const deadline = Date.now() + 120_000;
  while ((await row.getAttribute("data-status")) !== "running") {
    assert.ok(Date.now() < deadline, `never reached running; saw ${[...seen]}`);
    seen.add(await row.getAttribute("data-status"));
    await page.waitForTimeout(100);
  }
  seen.add("running");
  assert.ok(seen.size >= 2, `moved through statuses live: ${[...seen]}`);
  assert.equal(await page.evaluate(() => window.__noReload), true, "no reload happened");
  console.log("statuses seen live:", [...seen].join(" → "));

  // A duplicate name is refused inline (the API's 409).
  await name.fill("web");
  await page.locator("#ws-name-hint.good").waitFor();
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("#ws-name-hint.bad").waitFor();
  const dup = await page.locator("#ws-name-hint").innerText();
  assert.match(dup, /exists|already|taken/i, dup);
  await shot(page, "member-duplicate-error");

  // Its page: status, agent, apps opening through the app proxy.
  await row.getByRole("link", { name: "web" }).click();
  await page.waitForURL(/\/@mia\/web$/);
  await page.locator("#live .status-running").waitFor();
  const tilt = page.locator("a[data-app=tilt]");
  assert.match(await tilt.getAttribute("href"), /\/@mia\/web\/apps\/tilt\/$/);
  assert.equal(await tilt.getAttribute("target"), "_blank");
  await page.locator("#agent-connection", { hasText: "connected" }).waitFor();
  await shot(page, "member-workspace");

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
  await shot(page, "admin-long-list");
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(SHOTS, "admin-long-list-dark-1280.png") });
  await page.emulateMedia({ colorScheme: "light" });
  // The search box filters as one types; the owner filter narrows server-side.
  for (const width of [1280, 360]) {
    await page.setViewportSize({ width, height: 900 });
    await page.getByLabel("Search").fill("web");
    assert.equal(await page.locator("#rows tr:visible").count(), 1, `search at ${width} px`);
    await page.getByLabel("Search").fill("");
    assert.equal(await page.locator("#rows tr:visible").count(), 10, `all back at ${width} px`);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.getByLabel("Owner").selectOption("mia");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/owner=mia/);
  assert.equal(await page.locator("#rows tr").count(), 1);

  await signIn(page, MEMBER);
  await page.locator("#rows tr[data-name=web]").waitFor();
  assert.equal(await page.locator("#rows tr[data-name^=admin-box]").count(), 0, "members see only their own");
  const other = await page.goto(URL + "/@admin/admin-box-1");
  assert.equal(other.status(), 404);
  await shot(page, "member-not-found-error");

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

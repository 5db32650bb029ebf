// The workspace page's terminal tab in Debian's chromium (playwright-core): xterm.js over the
// terminal session route to the real agent. Started by tests/tests/sessions.rs with LUMIE_URL,
// LUMIE_TOKEN (the owner's API token), LUMIE_WORKSPACE_PATH (`/@owner/name`),
// LUMIE_SCREENSHOTS and LUMIE_PROFILE_DIR.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { chromium } from "playwright-core";

const URL = process.env.LUMIE_URL;
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

const screen = (page) => page.locator("#terminal .xterm-rows").innerText();

async function until(page, what, check) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const text = await screen(page).catch(() => "");
    if (check(text)) return text;
    if (Date.now() > deadline) assert.fail(`${what}: the terminal shows ${JSON.stringify(text)}`);
    await page.waitForTimeout(100);
  }
}

test("the terminal tab: a prompt, a command, the exit code", async () => {
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) errors.push(m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !r.url().endsWith("/favicon.ico")) errors.push(`${r.status()} ${r.url()}`);
  });
  await page.goto(URL + process.env.LUMIE_WORKSPACE_PATH);
  assert.match(page.url(), /\/login/);
  await page.getByLabel("API token").fill(process.env.LUMIE_TOKEN);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.waitForURL((u) => u.pathname === process.env.LUMIE_WORKSPACE_PATH);

  await page.getByRole("heading", { name: "Terminal", exact: true }).waitFor();
  await page.getByRole("button", { name: "Open a terminal" }).click();
  await page.locator('#terminal[data-connected="true"]').waitFor({ timeout: 20000 });
  await until(page, "a prompt", (t) => /[#$] *$/m.test(t.trimEnd()));
  await page.keyboard.type("echo $((6*7))");
  await page.keyboard.press("Enter");
  await until(page, "the command's output", (t) => /^42\s*$/m.test(t));
  await page.screenshot({ path: path.join(process.env.LUMIE_SCREENSHOTS, "terminal-1280.png"), fullPage: true });
  await page.keyboard.type("exit 4");
  await page.keyboard.press("Enter");
  await page.locator('#terminal[data-exit="4"]').waitFor({ timeout: 20000 });
  assert.match(await page.locator("#terminal-state").innerText(), /exited with code 4/);
  assert.deepEqual(errors, [], "no script or CSP errors, no failed requests");
  await page.close();
});

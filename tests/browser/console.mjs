// The console in Chromium: each screen in English and Chinese, at 1280 px and 360 px,
// checked by axe (no serious or critical violation), with a screenshot of each.
// Usage: node console.mjs BASE_URL APP_ID SNAPSHOT_ID HELD_APP_ID GO_FILE
// (screenshots to $APPSNAP_SCREENSHOTS). HELD_APP_ID's pre-backup hook waits until
// GO_FILE exists: its backup runs long enough to be cancelled from its page.
import { writeFileSync } from "node:fs";
import { start } from "./lib.mjs";

const [base, appId, snapId, heldApp, goFile] = process.argv.slice(2);
const { browser, shots, fail, axe, finish } = await start();
const screens = [
  { name: "apps", path: "/", heading: { "en-US": "Apps", "zh-CN": "应用" }, text: appId },
  { name: "app", path: `/apps/${appId}`, heading: { "en-US": appId, "zh-CN": appId }, text: "snapshot_" },
  { name: "snapshot", path: `/snapshots/${snapId}`, heading: { "en-US": "Snapshot", "zh-CN": "快照" }, text: "/data" },
  { name: "files", path: `/snapshots/${snapId}?path=project`, heading: { "en-US": "Snapshot", "zh-CN": "快照" }, text: "docker-compose.yml" },
  { name: "restore", path: `/snapshots/${snapId}/restore`, heading: { "en-US": "Restore this snapshot?", "zh-CN": "恢复此快照？" }, text: "data-must-be" },
  { name: "policies", path: "/policies", heading: { "en-US": "Policies", "zh-CN": "策略" }, text: "keep-last" },
  { name: "repositories", path: "/repositories", heading: { "en-US": "Offsite repositories", "zh-CN": "异地存储库" }, text: 'id="alerts"' },
  { name: "repository", path: `/repositories/nas?app=${appId}`, heading: { "en-US": "nas", "zh-CN": "nas" }, text: snapId },
  { name: "copy", path: `/repositories/nas/snapshots/${snapId}?path=project`, heading: { "en-US": "Copy", "zh-CN": "副本" }, text: "docker-compose.yml" },
  { name: "copy-restore", path: `/repositories/nas/snapshots/${snapId}/restore`, heading: { "en-US": "Restore this snapshot?", "zh-CN": "恢复此快照？" }, text: "data-must-be" },
  { name: "jobs", path: "/jobs", heading: { "en-US": "Jobs", "zh-CN": "任务" }, text: "/jobs/job_" },
];
for (const locale of ["en-US", "zh-CN"]) {
  for (const width of [1280, 360]) {
    const context = await browser.newContext({
      locale,
      viewport: { width, height: 900 },
      extraHTTPHeaders: { "Accept-Language": locale },
    });
    const page = await context.newPage();
    const problems = [];
    page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    page.on("pageerror", (e) => problems.push(String(e)));
    for (const s of screens) {
      const where = `${s.name} ${locale} ${width}px`;
      const resp = await page.goto(base + s.path);
      if (resp.status() !== 200) fail(`${where}: status ${resp.status()}`);
      const h1 = await page.locator("h1").innerText();
      if (!h1.includes(s.heading[locale])) fail(`${where}: heading "${h1}"`);
      if (!(await page.content()).includes(s.text)) fail(`${where}: "${s.text}" missing`);
      // The script ran (no CSP refusal): times are in the browser's locale, the UTC text
      // kept as their title.
      const times = page.locator("time[datetime][title]");
      if ((await page.locator("time[datetime]").count()) !== (await times.count())) {
        fail(`${where}: times not localised`);
      }
      // Nothing wider than the screen but the tables' own scroll boxes.
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      if (wide > width) fail(`${where}: the page is ${wide}px wide`);
      await page.screenshot({ path: `${shots}/${s.name}-${locale}-${width}.png`, fullPage: true });
      // The first Tab reaches the skip link.
      await page.keyboard.press("Tab");
      const focused = await page.evaluate(() => document.activeElement?.className);
      if (focused !== "skip") fail(`${where}: the first Tab focuses "${focused}"`);
      await axe(page, where);
    }
    for (const p of problems) fail(`${locale} ${width}px: browser console: ${p}`);
    await context.close();
  }
}
// Back up now, from the app's page, with the keyboard: the job's page follows it to done.
{
  const context = await browser.newContext({ locale: "en-US", viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/apps/${appId}`);
  const before = await page.locator("code").count();
  await page.getByRole("button", { name: "Back up now" }).focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/jobs\/job_/);
  await page
    .getByText("Done", { exact: true })
    .waitFor({ timeout: 60000 })
    .catch(() => fail("the job's page did not reach Done"));
  await axe(page, "job page");
  await page.screenshot({ path: `${shots}/job-en-US-1280.png`, fullPage: true });
  await page.getByRole("link", { name: "The app's snapshots" }).click();
  const after = await page.locator("code").count();
  if (after !== before + 1) fail(`snapshots before ${before}, after ${after}`);
  // Pin the newest from the keyboard; then delete it through its confirmation.
  await page.getByRole("button", { name: "Pin", exact: true }).first().focus();
  await page.keyboard.press("Enter");
  await page
    .getByRole("button", { name: "Unpin" })
    .waitFor({ timeout: 10000 })
    .catch(() => fail("pinning from the keyboard did not show Unpin"));
  await axe(page, "app page with actions");
  await page.getByRole("link", { name: "Delete" }).first().click();
  await page.getByText("It is pinned").waitFor({ timeout: 10000 }).catch(() => fail("the delete page does not say it is pinned"));
  await axe(page, "delete page");
  await page.screenshot({ path: `${shots}/delete-en-US-1280.png`, fullPage: true });
  await page.getByRole("button", { name: "Delete" }).click();
  await page.waitForURL(`${base}/apps/${appId}`);
  const left = await page.locator("code").count();
  if (left !== before) fail(`after the delete ${left} snapshots, not ${before}`);
  await context.close();
}
// Cancel, from the keyboard: a backup held by its hook is cancelled from its job's page,
// which says so at once; once the hook returns, the job ends cancelled, and the app has
// no snapshot.
{
  const context = await browser.newContext({ locale: "en-US", viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/apps/${heldApp}`);
  await page.getByRole("button", { name: "Back up now" }).focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/jobs\/job_/);
  const job = page.url();
  await page.getByRole("button", { name: "Cancel this job" }).focus();
  await page.keyboard.press("Enter");
  await page
    .getByText("Cancel asked for")
    .waitFor({ timeout: 10000 })
    .catch(() => fail("the job's page does not say the cancel was asked for"));
  if (page.url() !== job) fail(`the cancel left the job's page for ${page.url()}`);
  await axe(page, "job page, cancel asked for");
  writeFileSync(goFile, "");
  await page
    .getByText("the backup was cancelled on request")
    .waitFor({ timeout: 60000 })
    .catch(() => fail("the cancelled job's page does not say it was cancelled"));
  if (await page.getByRole("button", { name: "Cancel this job" }).count()) fail("an ended job still offers Cancel");
  await page.screenshot({ path: `${shots}/job-cancelled-en-US-1280.png`, fullPage: true });
  await page.goto(`${base}/apps/${heldApp}`);
  if (await page.locator('a[href*="/snapshots/snapshot_"]').count()) fail("the cancelled backup left a snapshot");
  await context.close();
}
// A policy's dry run, from the keyboard: what keep-last would keep and delete.
{
  const context = await browser.newContext({ locale: "en-US", viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/policies`);
  // The dry run's own fields (the binding form below has fields of the same labels).
  await page.locator("#dry-policy").selectOption("keep-last");
  await page.locator("#dry-app").selectOption(appId);
  await page.locator("#dry-config").fill('{"n": 1}');
  await page.getByRole("button", { name: "Dry run" }).focus();
  await page.keyboard.press("Enter");
  await page
    .getByRole("heading", { name: /^Would keep \(\d+\)$/ })
    .waitFor({ timeout: 10000 })
    .catch(() => fail("the dry run did not show what it would keep"));
  await axe(page, "policies page with a dry run");
  await page.screenshot({ path: `${shots}/policies-dry-run-en-US-1280.png`, fullPage: true });
  await context.close();
}
await finish(`every screen passed; screenshots in ${shots}`);

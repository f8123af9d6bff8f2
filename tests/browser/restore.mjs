// The restore flow in Chromium, from the keyboard: the pre-checks, the typed app name
// (the button stays disabled until it matches, and disables at once when pressed), the
// job's live page (reloaded mid-job: the same job, the server's state), its ending
// "Restored"; then a restore made to fail ends in "Failed – rolled back". axe checks every
// screen; screenshots at 1280 px and 360 px.
// Usage: node restore.mjs BASE_URL APP_ID GOOD_SNAPSHOT BAD_SNAPSHOT
import { start } from "./lib.mjs";

const [base, appId, good, bad] = process.argv.slice(2);
const { browser, shots, fail, axe, finish } = await start();
const context = await browser.newContext({ locale: "en-US", viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(String(e)));

/** Opens the restore page of `snapshot` and confirms it from the keyboard. */
async function restore(snapshot, where) {
  await page.goto(`${base}/apps/${appId}`);
  await page.locator(`a[href$="/snapshots/${snapshot}/restore"]`).focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/restore$/);
  for (const text of ["Containers stopped, then started again", "Where the data goes", "Disk space", "Expected downtime", "If it fails"]) {
    if (!(await page.getByText(text).count())) fail(`${where}: the pre-checks lack "${text}"`);
  }
  const button = page.getByRole("button", { name: "Restore" });
  if (!(await button.isDisabled())) fail(`${where}: Restore is enabled before the name is typed`);
  await page.getByLabel("To confirm, type the app's name").focus();
  await page.keyboard.type(appId.slice(0, -1));
  if (!(await button.isDisabled())) fail(`${where}: Restore is enabled with a wrong name`);
  await page.keyboard.type(appId.slice(-1));
  if (await button.isDisabled()) fail(`${where}: Restore stays disabled with the right name`);
  await axe(page, `${where}: restore page`);
  await page.screenshot({ path: `${shots}/restore-en-US-1280.png`, fullPage: true });
  await page.setViewportSize({ width: 360, height: 900 });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  if (wide > 360) fail(`${where}: the restore page is ${wide}px wide at 360 px`);
  await page.screenshot({ path: `${shots}/restore-en-US-360.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await button.focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/jobs\/job_/);
  return page.url();
}

// A restore that works. Its wait for the containers to settle (3 s) leaves time to reload.
{
  const job = await restore(good, "good restore");
  if (await page.locator("#job[data-running]").count()) {
    await page.reload();
    if (page.url() !== job) fail(`a reload mid-job moved to ${page.url()}`);
  } else {
    fail("the restore had ended before its page was shown (nothing to reload mid-job)");
  }
  await page
    .getByRole("heading", { name: "Restored" })
    .waitFor({ timeout: 120000 })
    .catch(() => fail("the restore's page did not reach Restored"));
  if (page.url() !== job) fail(`the page left its job: ${page.url()}`);
  if (!(await page.getByText("swapping in the restored data").count())) fail("the job's log lacks its steps");
  await axe(page, "restored job page");
  await page.screenshot({ path: `${shots}/job-restored-en-US-1280.png`, fullPage: true });
}

// A restore onto which the app cannot start: rolled back.
{
  await restore(bad, "failing restore");
  await page
    .getByRole("heading", { name: "Failed – rolled back" })
    .waitFor({ timeout: 120000 })
    .catch(() => fail("the failing restore's page did not reach Failed – rolled back"));
  if (!(await page.getByText("exit code 3").count())) fail("the rolled-back page does not give the reason");
  await axe(page, "rolled-back job page");
  await page.screenshot({ path: `${shots}/job-rolled-back-en-US-1280.png`, fullPage: true });
}

// The jobs page lists both; the restore page in Chinese.
{
  await page.goto(`${base}/jobs`);
  const restores = await page.getByRole("cell", { name: "restore", exact: true }).count();
  if (restores !== 2) fail(`the jobs page shows ${restores} restores`);
  await axe(page, "jobs page");
  await page.screenshot({ path: `${shots}/jobs-en-US-1280.png`, fullPage: true });
  const zh = await browser.newContext({ locale: "zh-CN", extraHTTPHeaders: { "Accept-Language": "zh-CN" } });
  const p = await zh.newPage();
  await p.goto(`${base}/snapshots/${good}/restore`);
  const h1 = await p.locator("h1").innerText();
  if (h1 !== "恢复此快照？") fail(`the Chinese restore page's heading is "${h1}"`);
  await axe(p, "restore page zh-CN");
  await p.screenshot({ path: `${shots}/restore-zh-CN-1280.png`, fullPage: true });
  await zh.close();
}
for (const p of problems) fail(`browser: ${p}`);
await context.close();
await finish("the restore flow passed");

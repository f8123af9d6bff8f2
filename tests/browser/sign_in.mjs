// Signing in to a console protected by an API key, with the keyboard only, in Chromium:
// the sign-in screen passes axe in both languages, a wrong key is said so, the right one
// leads to the apps, and signing out leads back to the form.
// Usage: node sign_in.mjs BASE_URL KEY   (screenshots to $APPSNAP_SCREENSHOTS)
import { start } from "./lib.mjs";

const [base, key] = process.argv.slice(2);
const { browser, shots, fail, axe, finish } = await start();
for (const locale of ["en-US", "zh-CN"]) {
  const context = await browser.newContext({
    locale,
    viewport: { width: 360, height: 800 },
    extraHTTPHeaders: { "Accept-Language": locale },
  });
  const page = await context.newPage();
  await page.goto(base + "/");
  if (!page.url().endsWith("/sign-in")) fail(`${locale}: / did not lead to the sign-in form`);
  await axe(page, `sign-in ${locale}`);
  await page.screenshot({ path: `${shots}/sign-in-${locale}-360.png`, fullPage: true });
  // The key field has the focus; type, Enter.
  await page.keyboard.type("not the key");
  await page.keyboard.press("Enter");
  await page
    .locator("[role=alert]")
    .waitFor({ timeout: 10000 })
    .catch(() => fail(`${locale}: a wrong key is not said`));
  await page.locator("#key").focus();
  await page.keyboard.type(key);
  await page.keyboard.press("Enter");
  await page.waitForURL(base + "/");
  const h1 = await page.locator("h1").innerText();
  if (!h1.includes(locale === "en-US" ? "Apps" : "应用")) fail(`${locale}: after sign-in, "${h1}"`);
  await page.getByRole("button", { name: locale === "en-US" ? "Sign out" : "退出登录" }).click();
  await page.waitForURL(base + "/sign-in");
  await page.goto(base + "/");
  if (!page.url().endsWith("/sign-in")) fail(`${locale}: still signed in after signing out`);
  await context.close();
}
await finish("sign-in passed");

// What every browser test shares: Debian's Chromium launched by playwright-core, a list
// of failures, the screenshot folder, axe's serious and critical violations as failures.
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { AxeBuilder } from "@axe-core/playwright";

export async function start() {
  const shots = process.env.APPSNAP_SCREENSHOTS ?? "screenshots";
  mkdirSync(shots, { recursive: true });
  const failures = [];
  const fail = (what) => {
    failures.push(what);
    console.error(`FAIL ${what}`);
  };
  const browser = await chromium.launch({
    executablePath: process.env.APPSNAP_CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  /** Runs axe on `page`; each serious or critical violation is a failure of `where`. */
  const axe = async (page, where) => {
    const result = await new AxeBuilder({ page }).analyze();
    for (const v of result.violations.filter((v) => ["serious", "critical"].includes(v.impact))) {
      fail(`${where}: axe ${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target).join(", ")}`);
    }
  };
  /** Closes the browser; exits 1 if anything failed. */
  const finish = async (passed) => {
    await browser.close();
    if (failures.length) {
      console.error(`${failures.length} failure(s)`);
      process.exit(1);
    }
    console.log(passed);
  };
  return { browser, shots, fail, axe, finish };
}

// Shows each <time datetime> in the browser's own locale and time zone. The page reads
// the same without it (the server writes UTC).
"use strict";
function localTimes() {
  const lang = document.documentElement.lang || undefined;
  const format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  for (const t of document.querySelectorAll("time[datetime]")) {
    const when = new Date(t.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      t.title = t.textContent;
      t.textContent = format.format(when);
    }
  }
}

// A running job's page reloads its status section every second until the job ends (the
// server renders it; this only swaps it in, so the live region announces the change).
async function followJob() {
  let section = document.querySelector("#job[data-running]");
  while (section) {
    await new Promise((r) => setTimeout(r, 1000));
    const page = await fetch(location.href, { credentials: "same-origin" });
    if (!page.ok) return;
    const fresh = new DOMParser().parseFromString(await page.text(), "text/html");
    const next = fresh.querySelector("#job");
    if (!next) return;
    section.replaceWith(next);
    section = next.hasAttribute("data-running") ? next : null;
    if (!section) location.reload();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  followJob();
});

// Shows each <time datetime> in the browser's own locale and time zone. The page reads
// the same without it (the server writes UTC).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const lang = document.documentElement.lang || undefined;
  const format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  for (const t of document.querySelectorAll("time[datetime]")) {
    const when = new Date(t.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      t.title = t.textContent;
      t.textContent = format.format(when);
    }
  }
});

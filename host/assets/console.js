// The console's only script. Every page reads and works without it; it adds:
// - times in the browser's own locale and time zone (the server writes UTC);
// - a running job's page following the job's event stream, then showing its ending;
// - a form marked `data-once` whose submit button disables at once (no second click), and
//   whose typed confirmation (`data-must-be`) enables the button only when it matches.
"use strict";

function localTimes(root = document) {
  const lang = document.documentElement.lang || undefined;
  const format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" });
  for (const t of root.querySelectorAll("time[datetime]:not([title])")) {
    const when = new Date(t.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      t.title = t.textContent;
      t.textContent = format.format(when);
    }
  }
}

// The job's state comes from the server at every event; when it ends, the page is loaded
// again, so its ending is the server's (and a reload or a later visit shows the same).
function followJob() {
  const section = document.querySelector("#job[data-events]");
  if (!section || !window.EventSource) return;
  const events = new EventSource(section.dataset.events);
  const progress = section.querySelector("progress");
  const step = section.querySelector("[data-field=step]");
  events.addEventListener("progress", (e) => {
    const job = JSON.parse(e.data);
    if (step && step.textContent !== job.step) step.textContent = job.step;
    if (progress && job.bytes_total > 0) {
      progress.max = job.bytes_total;
      progress.value = job.bytes_done;
    }
  });
  events.addEventListener("finished", () => {
    events.close();
    location.reload();
  });
  // The stream ends after `finished`; an error before it (the server restarted, a proxy
  // cut it) falls back to reloading the page, which shows the server's state.
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) location.reload();
  };
}

function guardForms() {
  for (const form of document.querySelectorAll("form[data-once]")) {
    const button = form.querySelector("button[type=submit]");
    const typed = form.querySelector("input[data-must-be]");
    if (typed && button) {
      const check = () => { button.disabled = typed.value.trim() !== typed.dataset.mustBe; };
      typed.addEventListener("input", check);
      check();
    }
    form.addEventListener("submit", () => {
      // After the browser has taken the form's data: disabling first would drop nothing
      // (the button has no value) but keep the order obvious.
      setTimeout(() => { if (button) button.disabled = true; }, 0);
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  followJob();
  guardForms();
});

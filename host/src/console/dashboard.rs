//! The apps page (`/`): every app Docker runs and every app with snapshots, each with
//! its status (last backup ok, failed, stale, none yet), the age of its newest snapshot,
//! its next scheduled backup and its local usage against its quota; the jobs running
//! now above them. Everything comes from memory (the catalog, the jobs, the schedules)
//! but the one call asking Docker for its apps: the page stays fast at thousands of
//! snapshots (the bench's `--console` measures it).

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};

use super::session::Csrf;
use super::{Console, Frame, LangParam, When, bytes, jobs};
use crate::jobs::JobState;

/// An app's status, as the page shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Failed,
    Stale,
    None,
}

/// One row of the apps page.
struct AppRow {
    id: String,
    /// Whether Docker runs it (`None`: Docker could not be asked).
    in_docker: Option<bool>,
    snapshots: usize,
    last: Option<DateTime<Utc>>,
    bytes: u64,
    status: Status,
    /// Why its last backup failed.
    failure: Option<String>,
    next_run: Option<DateTime<Utc>>,
    /// What its copies added to each repository (after deduplication), by repository.
    offsite: BTreeMap<String, u64>,
    /// `max_bytes` of the app's quota binding (the built-in quota's setting), and the
    /// policy's name.
    quota: Option<(String, Option<u64>)>,
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct Dashboard {
    f: Frame,
    apps: Vec<AppRow>,
    docker_down: bool,
    /// The jobs running now, for the bar above the apps.
    running: Vec<jobs::JobRow>,
    now: DateTime<Utc>,
}

impl Dashboard {
    fn last_taken(&self, a: &AppRow) -> Option<When> {
        a.last.map(When::from)
    }

    fn next(&self, a: &AppRow) -> Option<When> {
        a.next_run.map(When::from)
    }

    /// `3 h ago`: the age of the newest snapshot.
    fn age(&self, a: &AppRow) -> String {
        let Some(last) = a.last else {
            return String::new();
        };
        let minutes = (self.now - last).num_minutes().max(0);
        let t = self.f.t;
        match minutes {
            0..120 => format!("{minutes} {}", t.ago_minutes),
            120..2880 => format!("{} {}", minutes / 60, t.ago_hours),
            _ => format!("{} {}", minutes / 1440, t.ago_days),
        }
    }

    fn status(&self, a: &AppRow) -> &'static str {
        let t = self.f.t;
        match a.status {
            Status::Ok => t.status_ok,
            Status::Failed => t.status_failed,
            Status::Stale => t.status_stale,
            Status::None => t.status_none,
        }
    }

    fn status_class(&self, a: &AppRow) -> &'static str {
        match a.status {
            Status::Ok => "ok",
            Status::Failed => "bad",
            Status::Stale => "bad",
            Status::None => "muted",
        }
    }

    fn usage(&self, a: &AppRow) -> String {
        let t = self.f.t;
        match &a.quota {
            None => format!("{} ({})", bytes(a.bytes), t.no_quota),
            Some((_, Some(max))) => format!("{} {} {}", bytes(a.bytes), t.usage_of, bytes(*max)),
            Some((policy, None)) => format!("{} ({policy})", bytes(a.bytes)),
        }
    }

    /// What its copies added to each repository: `offsite 120 MB`.
    fn offsite(&self, a: &AppRow) -> Vec<String> {
        (a.offsite.iter())
            .map(|(repo, n)| format!("{repo} {}", bytes(*n)))
            .collect()
    }
}

/// `GET /`: the apps, by name.
pub(super) async fn page(
    State(Console { manager, base, .. }): State<Console>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&base, &param, &headers, "/".into()).signed_in(csrf);
    let now = Utc::now();
    let snapshots = manager.list(None).unwrap_or_default();
    let docker = manager.apps_in_docker().await;
    if let Err(e) = &docker {
        tracing::warn!("the console cannot list Docker's apps: {e}");
    }
    let mut rows: BTreeMap<String, AppRow> = Default::default();
    let row = |id: &str| AppRow {
        id: id.to_string(),
        in_docker: docker.as_ref().ok().map(|_| false),
        snapshots: 0,
        last: None,
        bytes: 0,
        status: Status::None,
        failure: None,
        next_run: None,
        offsite: BTreeMap::new(),
        quota: None,
    };
    for id in docker.as_deref().unwrap_or_default() {
        rows.entry(id.clone()).or_insert_with(|| row(id)).in_docker = Some(true);
    }
    for s in &snapshots {
        let r = rows
            .entry(s.app_id.clone())
            .or_insert_with(|| row(&s.app_id));
        r.snapshots += 1;
        r.bytes += s.size_bytes;
        r.last = r.last.max(Some(s.facts.created_at));
        for (repo, copy) in &s.facts.copies {
            *r.offsite.entry(repo.clone()).or_default() += copy.bytes_uploaded.unwrap_or(0);
        }
    }

    // The newest backup job of each app (the jobs come newest first), and the running ones.
    let all_jobs = manager.jobs.list();
    let mut last_backup: HashMap<&str, &crate::jobs::JobInfo> = HashMap::new();
    for j in all_jobs.iter().filter(|j| j.kind == "backup") {
        last_backup.entry(j.app_id.as_str()).or_insert(j);
    }
    let schedules = manager.schedules();
    let config = manager.config();
    for r in rows.values_mut() {
        let schedule = schedules.get(&r.id);
        r.next_run = schedule.and_then(|s| s.next_run);
        r.quota = (manager
            .policies
            .effective(&r.id, crate::policy::Kind::Quota))
        .map(|b| (b.policy, b.config["max_bytes"].as_u64()));
        let stale_hours = config.stale_after_hours_for(&r.id);
        let failed = last_backup
            .get(r.id.as_str())
            .filter(|j| j.state == JobState::Failed)
            .map(|j| {
                let j = crate::api::error::job_view((*j).clone());
                let e = j.error.unwrap_or_default();
                format!(
                    "{}: {}",
                    e["message"].as_str().unwrap_or_default(),
                    e["details"].as_str().unwrap_or_default()
                )
            })
            .or_else(|| schedule.and_then(|s| s.last_error.clone()));
        r.status = match (failed, r.last) {
            (Some(why), _) => {
                r.failure = Some(why);
                Status::Failed
            }
            (None, None) => Status::None,
            (None, Some(last))
                if stale_hours > 0 && (now - last).num_hours() >= stale_hours as i64 =>
            {
                Status::Stale
            }
            (None, Some(_)) => Status::Ok,
        };
    }
    let page = Dashboard {
        running: all_jobs
            .into_iter()
            .filter(|j| j.state == JobState::Running)
            .map(jobs::JobRow::from)
            .collect(),
        apps: rows.into_values().collect(),
        docker_down: docker.is_err(),
        now,
        f,
    };
    page.f
        .respond(StatusCode::OK, page.render(), param.lang.is_some())
}

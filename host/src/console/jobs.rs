//! Jobs in the console: the list (`/jobs`), one job's page (`/jobs/{id}`) with its log
//! and, for a restore, its ending, and the job's event stream for that page's script
//! (`/jobs/{id}/events`: the API's stream, authenticated by the session cookie, which an
//! `EventSource` sends where it could not send a key header).

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::session::Csrf;
use super::{Console, Frame, LangParam, When, not_found};
use crate::jobs::{JobInfo, JobState};
use crate::manager::ManagerError;

/// How a restore ended, as its page says it: exactly one of three.
enum Ending {
    /// With the downtime and the mounts not restored.
    Restored {
        downtime_ms: u64,
        skipped: Vec<String>,
        /// A partial restore `beside` names the folders it made.
        restored_to: Vec<String>,
    },
    /// Failed, and the app's data and containers are as they were (rolled back, or
    /// refused before anything was touched).
    RolledBack,
    /// Failed, and the data could not all be put back: the app is left stopped.
    Incomplete,
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    f: Frame,
    job: JobInfo,
    /// The failure's message and cause, for a failed job.
    failure: Option<(String, String)>,
    /// A restore's ending, once it has one.
    ending: Option<Ending>,
}

impl JobPage {
    fn state(&self) -> &'static str {
        state(&self.f, self.job.state)
    }

    fn running(&self) -> bool {
        self.job.state == JobState::Running
    }

    /// A failed job's bar, its total unknown, stays empty rather than looking done.
    fn succeeded(&self) -> bool {
        self.job.state == JobState::Succeeded
    }

    fn started(&self) -> When {
        self.job.started_at.into()
    }

    fn seconds(&self, ms: &u64) -> String {
        format!("{:.1} {}", *ms as f64 / 1000.0, self.f.t.seconds)
    }

    fn time(&self, at: &chrono::DateTime<chrono::Utc>) -> When {
        (*at).into()
    }
}

pub(super) fn state(f: &Frame, state: JobState) -> &'static str {
    match state {
        JobState::Running => f.t.job_running,
        JobState::Succeeded => f.t.job_succeeded,
        JobState::Failed => f.t.job_failed,
    }
}

/// The ending of a restore job that has ended (`None` for any other job, or running).
fn ending(job: &JobInfo) -> Option<Ending> {
    if job.kind != "restore" {
        return None;
    }
    match job.state {
        JobState::Running => None,
        JobState::Succeeded => {
            let result = job.result.as_ref();
            let field = |k: &str| result.and_then(|r| r.get(k));
            let list = |k: &str| {
                field(k)
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default()
            };
            Some(Ending::Restored {
                downtime_ms: field("downtime_ms").and_then(|v| v.as_u64()).unwrap_or(0),
                skipped: list("skipped"),
                restored_to: list("restored_to"),
            })
        }
        JobState::Failed => {
            let incomplete = job
                .failure
                .as_ref()
                .and_then(|e| e.downcast_ref::<ManagerError>())
                .is_some_and(|e| matches!(e, ManagerError::RollbackFailed { .. }));
            Some(if incomplete {
                Ending::Incomplete
            } else {
                Ending::RolledBack
            })
        }
    }
}

/// `GET /jobs/{job_id}`: a job's state, step, progress and log; a restore's ending. While
/// it runs, the page's script follows its event stream; without the script, the Refresh
/// link does.
pub(super) async fn page(
    State(Console { manager, base, .. }): State<Console>,
    Path(job_id): Path<String>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&base, &param, &headers, format!("/jobs/{job_id}")).signed_in(csrf);
    let Some(job) = manager.jobs.get(&job_id) else {
        return not_found(f);
    };
    let job = crate::api::error::job_view(job.info());
    let failure = job.error.as_ref().map(|e| {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        (text("message"), text("details"))
    });
    let chosen = param.lang.is_some();
    let page = JobPage {
        f,
        ending: ending(&job),
        job,
        failure,
    };
    page.f.respond(StatusCode::OK, page.render(), chosen)
}

/// `POST /jobs/{job_id}/cancel`: asks the job to stop (see the API's), then shows it.
pub(super) async fn cancel(
    State(Console { manager, base, .. }): State<Console>,
    Path(job_id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    if let Some(forbidden) = super::csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&base, &headers, &format!("/jobs/{job_id}")).signed_in(csrf);
    super::job_or_refusal(&base, manager.cancel_job(&job_id), f)
}

/// `GET /jobs/{job_id}/events`: the job's server-sent events (see the API's).
pub(super) async fn events(
    State(Console { manager, .. }): State<Console>,
    Path(job_id): Path<String>,
) -> Response {
    match manager.jobs.get(&job_id) {
        Some(job) => crate::api::jobs::event_stream(&job).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(super) struct JobRow {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) app_id: String,
    pub(super) state: JobState,
    pub(super) step: String,
    pub(super) started: When,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct JobsPage {
    f: Frame,
    jobs: Vec<JobRow>,
}

impl JobsPage {
    fn state(&self, s: &JobState) -> &'static str {
        state(&self.f, *s)
    }
}

/// `GET /jobs`: the jobs this process remembers, newest first.
pub(super) async fn list(
    State(Console { manager, base, .. }): State<Console>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&base, &param, &headers, "/jobs".into()).signed_in(csrf);
    let page = JobsPage {
        f,
        jobs: manager.jobs.list().into_iter().map(JobRow::from).collect(),
    };
    page.f
        .respond(StatusCode::OK, page.render(), param.lang.is_some())
}

impl From<JobInfo> for JobRow {
    fn from(j: JobInfo) -> JobRow {
        JobRow {
            id: j.job_id,
            kind: j.kind,
            app_id: j.app_id,
            state: j.state,
            step: j.step,
            started: j.started_at.into(),
        }
    }
}

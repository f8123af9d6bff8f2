//! `/api/v1/jobs/…`: state and progress of long operations (backups, restores and their
//! cleanups, verifies, fetches, copies, prunes, checks), polled or streamed (SSE).
//!
//! Jobs live in memory only: after a restart the old ids answer 404, while the snapshots
//! they made are in the catalog.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorBody, job_view};
use crate::jobs::{Job, JobInfo, JobState};
use crate::manager::{BackupManager, ManagerError};

fn find(manager: &BackupManager, id: &str) -> Result<Job, ApiError> {
    manager
        .jobs
        .get(id)
        .ok_or_else(|| ManagerError::JobNotFound(id.to_string()).into())
}

/// Recent jobs, newest first.
///
/// Every running job, and the most recent finished ones: beyond 1000 jobs in all, the
/// oldest finished ones are forgotten.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", responses((status = 200, body = Vec<JobInfo>)))]
pub async fn list(State(manager): State<Arc<BackupManager>>) -> Json<Vec<JobInfo>> {
    Json(manager.jobs.list().into_iter().map(job_view).collect())
}

/// A job's state and progress.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 200, body = JobInfo), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(manager): State<Arc<BackupManager>>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    Ok(Json(job_view(find(&manager, &id)?.info())))
}

/// Asks a running job to stop at its next safe point.
///
/// Backups, restores, verifies, fetches and copies can be cancelled (`cancellable` in the
/// job); prunes, checks and a restore's cleanup run to their end. The answer is the job,
/// still running with `cancel_requested` set; it ends `failed` with the message `Job
/// cancelled` once what it did is undone: a backup starts the containers it stopped
/// again and keeps no partial archive, a restore rolls back (the app's data as it was),
/// a copy is recorded `failed`. 409 for a job that has ended or cannot be cancelled
/// (`cancellable` false: a prune, a check, a cleanup, or a restore from the moment it
/// stops the app, when finishing is shorter than undoing).
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/cancel", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 202, body = JobInfo), (status = 404, body = ErrorBody),
        (status = 409, description = "The job has ended, or cannot be cancelled", body = ErrorBody)))]
pub async fn cancel(
    State(manager): State<Arc<BackupManager>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let job = manager.cancel_job(&id)?;
    Ok((StatusCode::ACCEPTED, Json(job_view(job.info()))))
}

/// Server-sent events: `progress` with the job whenever it changes (coalesced), then one
/// `finished` event, then the stream ends.
///
/// The first event, sent at once, is the current state: a job that has ended already gets
/// its `finished` event only. Each event's data is the job as `GET /api/v1/jobs/{job_id}`
/// shows it. Intermediate states may be skipped, never the last. Closing the stream does
/// not affect the job. At most 64 streams are open at a time; beyond that 429 with
/// `Retry-After`, and polling still works.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/events", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 200, description = "text/event-stream of JobInfo"), (status = 404, body = ErrorBody),
        (status = 429, description = "Too many event streams open", body = ErrorBody)))]
pub async fn events(
    State(manager): State<Arc<BackupManager>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    event_stream(&find(&manager, &id)?)
}

/// The event stream of `job` (see [`events`]), for the API and the console's job page.
/// `X-Accel-Buffering: no` keeps nginx (Websoft9's proxy) from holding the events back,
/// and the keep-alive comments keep idle proxies from closing the stream.
pub(crate) fn event_stream(job: &Job) -> Result<Response, ApiError> {
    let rx = job.subscribe();
    let guard = StreamSlot::take()?;
    let stream = futures_util::stream::unfold(
        (rx, true, false, guard),
        |(mut rx, first, done, guard)| async move {
            if done {
                return None;
            }
            // The first event is the current state; later ones wait for a change.
            let gone = !first && rx.changed().await.is_err();
            let info = job_view(rx.borrow_and_update().clone());
            let finished = gone || info.state != JobState::Running;
            let event = Event::default()
                .event(if finished { "finished" } else { "progress" })
                .json_data(&info)
                .expect("job info serializes");
            Some((Ok::<_, Infallible>(event), (rx, false, finished, guard)))
        },
    );
    let sse = Sse::new(stream).keep_alive(KeepAlive::default());
    Ok(([("x-accel-buffering", "no")], sse).into_response())
}

/// Open event streams are bounded: each holds a connection and a subscription for as
/// long as its job runs.
const MAX_STREAMS: usize = 64;
static OPEN_STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the `MAX_STREAMS`, given back when its stream is dropped (ended or abandoned).
struct StreamSlot;

impl StreamSlot {
    fn take() -> Result<StreamSlot, ApiError> {
        use std::sync::atomic::Ordering;
        let taken = OPEN_STREAMS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        });
        taken.map(|_| StreamSlot).map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many event streams",
                format!(
                    "{MAX_STREAMS} event streams are open; poll /api/v1/jobs/{{id}} or retry later"
                ),
            )
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

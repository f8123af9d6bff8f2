//! `/api/v1/jobs/…`: state and progress of backups, polled or streamed (SSE).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::error::{ApiError, ErrorBody, job_view};
use crate::jobs::{Job, JobInfo, JobState};
use crate::manager::BackupManager;

fn find(manager: &BackupManager, id: &str) -> Result<Job, ApiError> {
    manager.jobs.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "Job not found",
            format!("no job `{id}` (jobs are kept in memory until restart)"),
        )
    })
}

/// Recent jobs, newest first.
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

/// Server-sent events: `progress` with the job whenever it changes (coalesced), then one
/// `finished` event, then the stream ends.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/events", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 200, description = "text/event-stream of JobInfo"), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(manager): State<Arc<BackupManager>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = find(&manager, &id)?.subscribe();
    let stream =
        futures_util::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
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
            Some((Ok(event), (rx, false, finished)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

//! `/api/v1/backup/…`: create, list, show and delete snapshots; stats.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::catalog::{Origin, Snapshot};
use crate::jobs::JobInfo;
use crate::manager::{BackupManager, Stats};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackupParams {
    /// `true` (default): answer when the backup is done. `false`: answer 202 with the job
    /// at once and follow it at `/api/v1/jobs/{job_id}`.
    pub wait: Option<bool>,
    /// A note stored with the snapshot.
    pub note: Option<String>,
}

/// Body of a finished backup (the seed's shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackupCreated {
    /// Always `Backup created successfully`.
    pub message: String,
    /// The same as `snapshot.snapshot_id`, kept at the top level for the seed's clients.
    pub snapshot_id: String,
    pub snapshot: Snapshot,
}

/// Snapshot an app's data.
///
/// The id, the app and its lock are checked before anything starts, so 400, 404 and 409
/// come back at once with either `wait`. What fails later (507 for a full disk or a quota
/// denial, a failed hook, Docker) is the answer with `wait=true`, or the job's `error`.
/// In stop mode (the default) the app's running containers are stopped while its data is
/// archived and started again afterwards, whatever happened. The backup runs on its own:
/// a client that disconnects does not stop it. The app's retention policy runs before
/// the answer; offsite copies start once the backup is done, so they never lengthen it.
#[utoipa::path(post, path = "/api/v1/backup/{app_id}", tag = "backup",
    params(("app_id" = String, Path, description = "Compose project name"), BackupParams),
    responses(
        (status = 200, description = "Backup created successfully", body = BackupCreated),
        (status = 202, description = "Backup started (wait=false)", body = JobInfo),
        (status = 400, body = ErrorBody), (status = 404, description = "Application not found", body = ErrorBody),
        (status = 409, description = "A backup or restore of this app is running", body = ErrorBody),
        (status = 507, description = "No space on the backup filesystem", body = ErrorBody),
    ))]
pub async fn create(
    State(manager): State<Arc<BackupManager>>,
    Path(app_id): Path<String>,
    ApiQuery(params): ApiQuery<BackupParams>,
) -> Result<Response, ApiError> {
    let started = manager
        .start_backup(&app_id, Origin::Manual, params.note)
        .await?;
    if params.wait == Some(false) {
        return Ok((StatusCode::ACCEPTED, Json(started.job.info())).into_response());
    }
    let snapshot = super::error::finished(started, "Backup").await?;
    Ok(Json(BackupCreated {
        message: "Backup created successfully".into(),
        snapshot_id: snapshot.snapshot_id.clone(),
        snapshot,
    })
    .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this app's snapshots.
    pub app_id: Option<String>,
}

/// List snapshots, newest first.
///
/// Only snapshots held on this server (a repository's are under `/api/v1/repositories`);
/// an app without snapshots, or unknown, gives an empty list.
#[utoipa::path(get, path = "/api/v1/backup/snapshots", tag = "backup", params(ListParams),
    responses((status = 200, body = Vec<Snapshot>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(manager): State<Arc<BackupManager>>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    Ok(Json(manager.list(params.app_id.as_deref())?))
}

/// One snapshot.
///
/// From this server's catalog: a snapshot held only in a repository is 404 here.
#[utoipa::path(get, path = "/api/v1/backup/snapshots/{snapshot_id}", tag = "backup",
    params(("snapshot_id" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(manager.get(&snapshot_id)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// `local` (default: this server's archive only), a repository's name (its copies
    /// there are forgotten; a prune frees their space), or `all`.
    pub location: Option<String>,
}

/// Delete a snapshot and free its space: by default only the local archive; offsite
/// copies stay unless `location` names their repository or is `all`, and then only this
/// server's copies go (another server sharing the repository keeps its own).
///
/// A pin protects from policies only: a pinned snapshot is deleted here all the same. A
/// repository's space comes back with the prune job each such delete starts. With `all`,
/// 404 means it was found nowhere.
#[utoipa::path(delete, path = "/api/v1/backup/snapshots/{snapshot_id}", tag = "backup",
    params(("snapshot_id" = String, Path), DeleteParams),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody),
        (status = 404, description = "Not at that location (nothing was deleted)", body = ErrorBody),
        (status = 409, description = "The repository's copies of it are another server's, or the repository is append-only (nothing was deleted)", body = ErrorBody),
        (status = 500, description = "The file could not be removed; still listed", body = ErrorBody),
        (status = 502, description = "The repository could not be reached", body = ErrorBody)))]
pub async fn delete(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    match params.location.as_deref() {
        None | Some("local") => manager.delete(&snapshot_id)?,
        Some(location) => manager.delete_at(&snapshot_id, location).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Space used per app and in total, and what is left on the backup filesystem.
///
/// Counts the archives on this server only, not copies in repositories.
#[utoipa::path(get, path = "/api/v1/backup/stats", tag = "backup",
    responses((status = 200, body = Stats), (status = 500, body = ErrorBody)))]
pub async fn stats(State(manager): State<Arc<BackupManager>>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(manager.stats()?))
}

//! `POST /api/v1/backup/restore/{app_id}/{snapshot_id}`: put a snapshot back.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::jobs::JobInfo;
use crate::manager::BackupManager;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestoreParams {
    /// `true` (default): answer when the restore is done. `false`: 202 with the job.
    pub wait: Option<bool>,
    /// Restore from this repository's copy (fetched and checked first), even when a
    /// local archive exists. Without it, a snapshot with no local archive is looked for
    /// in the configured repositories.
    pub from: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Restored {
    pub message: String,
    pub app_id: String,
    pub snapshot_id: String,
    /// Mounts of the snapshot that were not restored, with why: the app no longer mounts
    /// them, or they name a volume of another app or a path appsnap never writes to.
    pub skipped: Vec<String>,
    /// The job (kind `cleanup`) removing the data the restore replaced: it runs after
    /// this answer, and the next backup or restore of the app waits for it.
    pub cleanup_job: Option<String>,
}

/// Restore an app's data from one of its snapshots. Verified first; on any failure the
/// previous data is put back and the app started as it was (500 `Restore failed, rolled back`).
#[utoipa::path(post, path = "/api/v1/backup/restore/{app_id}/{snapshot_id}", tag = "backup",
    params(("app_id" = String, Path), ("snapshot_id" = String, Path), RestoreParams),
    responses(
        (status = 200, description = "Snapshot restored successfully", body = Restored),
        (status = 202, description = "Restore started (wait=false)", body = JobInfo),
        (status = 400, description = "Bad id, or Snapshot does not belong to this app", body = ErrorBody),
        (status = 404, description = "Application or snapshot not found", body = ErrorBody),
        (status = 409, description = "A backup or restore of this app is running", body = ErrorBody),
        (status = 422, description = "The snapshot failed verification; nothing was touched", body = ErrorBody),
        (status = 502, description = "The repository to fetch from could not be read", body = ErrorBody),
        (status = 500, description = "Restore failed, rolled back", body = ErrorBody),
    ))]
pub async fn restore(
    State(manager): State<Arc<BackupManager>>,
    Path((app_id, snapshot_id)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<RestoreParams>,
) -> Result<Response, ApiError> {
    let started = manager
        .start_restore_from(&app_id, &snapshot_id, params.from.as_deref())
        .await?;
    if params.wait == Some(false) {
        return Ok((StatusCode::ACCEPTED, Json(started.job.info())).into_response());
    }
    let restored = super::error::finished(started, "Restore").await?;
    Ok(Json(Restored {
        message: "Snapshot restored successfully".into(),
        app_id: restored.snapshot.app_id,
        snapshot_id: restored.snapshot.snapshot_id,
        skipped: restored.skipped,
        cleanup_job: restored.cleanup_job,
    })
    .into_response())
}

//! `POST /api/v1/backup/restore/{app_id}/{snapshot_id}`: put a snapshot back.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::jobs::JobInfo;
use crate::manager::{BackupManager, Restored};

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
    let restored: Restored = super::error::finished(started, "Restore").await?;
    Ok(Json(restored).into_response())
}

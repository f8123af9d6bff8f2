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
use crate::manager::{BackupManager, PreviewOf, RestorePreview, Restored, Selection};

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
///
/// With a JSON body `{"paths": [...], "target": "in_place" | "beside"}`, only those paths
/// (folders or files, as the file listing names them) come back, from the local archive:
/// `in_place` with the same guarantees for those paths and the app's other data untouched;
/// `beside` into new folders `<name>.restored-<snapshot id>` next to them, the app left
/// running (`restored_to` lists them). A path the app's current data cannot take (its
/// mount gone, a missing folder or a link on its way) is 409, before anything is touched.
#[utoipa::path(post, path = "/api/v1/backup/restore/{app_id}/{snapshot_id}", tag = "backup",
    params(("app_id" = String, Path), ("snapshot_id" = String, Path), RestoreParams),
    request_body(content = Option<Selection>, content_type = "application/json",
        description = "Only these paths (a partial restore); without a body, the whole app"),
    responses(
        (status = 200, description = "Snapshot restored successfully", body = Restored),
        (status = 202, description = "Restore started (wait=false)", body = JobInfo),
        (status = 400, description = "Bad id, or Snapshot does not belong to this app", body = ErrorBody),
        (status = 404, description = "Application or snapshot not found", body = ErrorBody),
        (status = 409, description = "A backup or restore of this app is running, or a chosen path cannot be restored as the app's data stands", body = ErrorBody),
        (status = 422, description = "The snapshot failed verification; nothing was touched", body = ErrorBody),
        (status = 502, description = "The repository to fetch from could not be read", body = ErrorBody),
        (status = 500, description = "Restore failed, rolled back", body = ErrorBody),
    ))]
pub async fn restore(
    State(manager): State<Arc<BackupManager>>,
    Path((app_id, snapshot_id)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<RestoreParams>,
    selection: Option<Json<Option<Selection>>>,
) -> Result<Response, ApiError> {
    // No body, or a JSON `null`: the whole app.
    let started = match selection.and_then(|Json(s)| s) {
        None => {
            manager
                .start_restore_from(&app_id, &snapshot_id, params.from.as_deref())
                .await?
        }
        Some(selection) => {
            manager
                .start_restore_paths(&app_id, &snapshot_id, &selection)
                .await?
        }
    };
    if params.wait == Some(false) {
        return Ok((StatusCode::ACCEPTED, Json(started.job.info())).into_response());
    }
    let restored: Restored = super::error::finished(started, "Restore").await?;
    Ok(Json(restored).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// The restore would be from this repository's copy (fetched and checked first).
    pub from: Option<String>,
}

/// What a whole restore would do, touching nothing: the containers it stops, where each
/// mount goes (replaced, created or skipped and why; staged while the app runs or
/// extracted while it is stopped), the space needed and free per filesystem, the app's
/// last restore downtime, and whether another operation holds the app now. With `from`,
/// for the copy in that repository: what is fetched first (the space is checked once the
/// archive is here).
#[utoipa::path(get, path = "/api/v1/backup/restore/{app_id}/{snapshot_id}/preview", tag = "backup",
    params(("app_id" = String, Path), ("snapshot_id" = String, Path), PreviewParams),
    responses(
        (status = 200, description = "What the restore would do", body = RestorePreview),
        (status = 400, description = "Bad id, or Snapshot does not belong to this app", body = ErrorBody),
        (status = 404, description = "Application, local snapshot, repository or copy not found", body = ErrorBody),
        (status = 422, description = "The snapshot's entry index does not read", body = ErrorBody),
        (status = 502, description = "The repository could not be read", body = ErrorBody),
    ))]
pub async fn preview(
    State(manager): State<Arc<BackupManager>>,
    Path((app_id, snapshot_id)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<PreviewParams>,
) -> Result<Json<RestorePreview>, ApiError> {
    let from = params
        .from
        .as_deref()
        .map_or(PreviewOf::Local, PreviewOf::Repository);
    Ok(Json(
        manager.restore_preview(&app_id, &snapshot_id, from).await?,
    ))
}

//! `GET /api/v1/backup/snapshots/{snapshot_id}/files`: browse a snapshot's folders.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::manager::{BackupManager, Listing};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesParams {
    /// The folder to list, as an archive path (`volumes/data/uploads`); empty or absent:
    /// the snapshot's mounts.
    pub path: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Entries per page (1 to 1000, default 200).
    pub limit: Option<usize>,
}

/// List one folder of a snapshot.
///
/// The top level lists the snapshot's mounts with the path each has in its containers;
/// below, one folder per call, in name order, paginated. Listed from the snapshot's entry
/// index: the first listing of a snapshot reads its archive once to make it (seconds per
/// GiB); later ones read only the index. The path is matched against the index, never
/// against the server's files: `..`, `.`, an absolute path or a NUL is 400.
#[utoipa::path(get, path = "/api/v1/backup/snapshots/{snapshot_id}/files", tag = "backup",
    params(("snapshot_id" = String, Path), FilesParams),
    responses(
        (status = 200, description = "One page of the folder", body = Listing),
        (status = 400, description = "Invalid id, path or cursor", body = ErrorBody),
        (status = 404, description = "Snapshot or folder not found", body = ErrorBody),
        (status = 422, description = "The archive cannot be read", body = ErrorBody),
    ))]
pub async fn list(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<FilesParams>,
) -> Result<Json<Listing>, ApiError> {
    let listing = manager
        .files(
            &snapshot_id,
            params.path.as_deref().unwrap_or(""),
            params.cursor.as_deref(),
            params.limit.unwrap_or(200),
        )
        .await?;
    Ok(Json(listing))
}

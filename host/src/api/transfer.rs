//! Verify, download and import: checking a snapshot and moving it between servers.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::backup::query;
use super::error::{ApiError, ErrorBody};
use crate::catalog::Snapshot;
use crate::manager::BackupManager;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub message: String,
    pub snapshot_id: String,
    /// Entries read and checked.
    pub entries: u64,
    /// Bytes of tar stream inflated.
    pub tar_bytes: u64,
}

/// Check a snapshot: its sha256 against the one recorded at backup time, then a full
/// read of every member and entry under the restore's safety rules.
#[utoipa::path(post, path = "/api/v1/backup/snapshots/{snapshot_id}/verify", tag = "backup",
    params(("snapshot_id" = String, Path)),
    responses((status = 200, body = VerifyReport), (status = 404, body = ErrorBody),
        (status = 422, description = "Snapshot is corrupt", body = ErrorBody)))]
pub async fn verify(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
) -> Result<Json<VerifyReport>, ApiError> {
    let (snapshot, verified) = manager.verify(&snapshot_id).await?;
    Ok(Json(VerifyReport {
        message: "Snapshot verified".into(),
        snapshot_id: snapshot.snapshot_id,
        entries: verified.entries,
        tar_bytes: verified.tar_bytes,
    }))
}

/// The archive itself, streamed (a standard .tar.gz).
#[utoipa::path(get, path = "/api/v1/backup/snapshots/{snapshot_id}/download", tag = "backup",
    params(("snapshot_id" = String, Path)),
    responses((status = 200, description = "application/gzip stream", content_type = "application/gzip"),
        (status = 404, body = ErrorBody)))]
pub async fn download(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = manager.get(&snapshot_id)?;
    let file = tokio::fs::File::open(&snapshot.file_path)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Storage error",
                format!("{}: {e}", snapshot.file_path),
            )
        })?;
    let len = file
        .metadata()
        .await
        .map(|m| m.len())
        .unwrap_or(snapshot.size_bytes);
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.tar.gz\"", snapshot.snapshot_id),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// File the snapshot under this app instead of the one it was taken of.
    pub app_id: Option<String>,
}

/// Upload a snapshot (the body is the .tar.gz, streamed). It is verified before it is
/// listed; its id is kept.
#[utoipa::path(post, path = "/api/v1/backup/snapshots/import", tag = "backup", params(ImportParams),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses((status = 201, description = "Snapshot imported", body = Snapshot),
        (status = 400, body = ErrorBody), (status = 409, description = "Snapshot exists already", body = ErrorBody),
        (status = 413, description = "Over max_import_bytes", body = ErrorBody),
        (status = 422, description = "Not a valid appsnap snapshot", body = ErrorBody)))]
pub async fn import(
    State(manager): State<Arc<BackupManager>>,
    params: Result<Query<ImportParams>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let params = query(params)?;
    let snapshot = manager
        .import(body.into_data_stream(), params.app_id.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"message": "Snapshot imported", "snapshot": snapshot})),
    ))
}

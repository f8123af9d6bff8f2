//! Verify, download and import: checking a snapshot and moving it between servers.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::catalog::Snapshot;
use crate::jobs::JobInfo;
use crate::manager::{BackupManager, ManagerError};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// Always `Snapshot verified`.
    pub message: String,
    pub snapshot_id: String,
    /// Entries read and checked.
    pub entries: u64,
    /// Bytes of tar stream inflated.
    pub tar_bytes: u64,
}

/// Check a snapshot: its sha256 against the one recorded at backup time, then a full
/// read of every member and entry under the restore's safety rules.
///
/// Runs within the request, as a job of kind `verify`, after waiting for a heavy-work
/// slot: a client that leaves stops the check, and the job fails as abandoned. Nothing is
/// written but the result: a later restore that finds the same checksum skips its own
/// full read before stopping the app.
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FetchParams {
    /// The repository to fetch from (default: the first that holds a copy, in the
    /// config's order).
    pub from: Option<String>,
}

/// The archive itself, streamed (a standard .tar.gz). A snapshot whose local archive is
/// gone is first fetched from a repository (`?from=NAME`, or the first holding a copy),
/// checked, and kept as a local snapshot; then it is served.
///
/// The answer has `Content-Length` and names the file `{snapshot_id}.tar.gz`; importing
/// it on another server keeps the id. With `from`, a local archive that checks out is
/// served as it is, and a damaged one is replaced only by a copy of the tar stream its
/// record names. A client that leaves during the fetch does not stop it: the snapshot
/// stays local. Without configured repositories, a snapshot not held here is 404.
#[utoipa::path(get, path = "/api/v1/backup/snapshots/{snapshot_id}/download", tag = "backup",
    params(("snapshot_id" = String, Path), FetchParams),
    responses((status = 200, description = "application/gzip stream", content_type = "application/gzip"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Another operation on the app runs", body = ErrorBody),
        (status = 422, description = "The repository's copy is not the snapshot", body = ErrorBody),
        (status = 502, description = "The repository could not be read", body = ErrorBody)))]
pub async fn download(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<FetchParams>,
) -> Result<Response, ApiError> {
    let snapshot = match manager.get(&snapshot_id) {
        Ok(s) if params.from.is_none() => s,
        Err(ManagerError::SnapshotNotFound(_))
            if params.from.is_some() || !manager.config().repositories.is_empty() =>
        {
            fetched(&manager, &snapshot_id, params.from.as_deref()).await?
        }
        Ok(_) => fetched(&manager, &snapshot_id, params.from.as_deref()).await?,
        Err(e) => return Err(e.into()),
    };
    archive_response(&snapshot).await
}

/// A local snapshot's archive as an attachment `{snapshot_id}.tar.gz`, streamed (this
/// route's answer and the console's).
pub(crate) async fn archive_response(snapshot: &Snapshot) -> Result<Response, ApiError> {
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

/// Body of a finished import.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Imported {
    /// Always `Snapshot imported`.
    pub message: String,
    /// The snapshot as listed now (origin `imported`, its id kept).
    pub snapshot: Snapshot,
}

/// Upload a snapshot (the body is the .tar.gz, streamed). It is verified before it is
/// listed; its id is kept.
///
/// The upload goes to a temporary file and is refused with 413 as soon as it passes
/// `max_import_bytes`; a client that leaves mid-upload leaves nothing behind. The check reads every entry under
/// the restore's rules, so an imported snapshot is one a restore accepts.
#[utoipa::path(post, path = "/api/v1/backup/snapshots/import", tag = "backup", params(ImportParams),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses((status = 201, description = "Snapshot imported", body = Imported),
        (status = 400, body = ErrorBody), (status = 409, description = "Snapshot exists already", body = ErrorBody),
        (status = 413, description = "Over max_import_bytes", body = ErrorBody),
        (status = 422, description = "Not a valid appsnap snapshot", body = ErrorBody)))]
pub async fn import(
    State(manager): State<Arc<BackupManager>>,
    ApiQuery(params): ApiQuery<ImportParams>,
    body: Body,
) -> Result<(StatusCode, Json<Imported>), ApiError> {
    let snapshot = manager
        .import(body.into_data_stream(), params.app_id.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Imported {
            message: "Snapshot imported".into(),
            snapshot,
        }),
    ))
}

/// Fetches a repository's copy and waits for it. The fetch runs in a task of its own,
/// so a client that leaves during it only stops the wait.
async fn fetched(
    manager: &Arc<BackupManager>,
    snapshot_id: &str,
    from: Option<&str>,
) -> Result<Snapshot, ApiError> {
    let started = manager.start_fetch(snapshot_id, from).await?;
    super::error::finished(started, "Fetch").await
}

/// Fetch a snapshot's copy from a repository into this server's backup root (checked,
/// then listed as a local snapshot), e.g. to download or restore it later without the
/// network. Answers 202 with the job.
///
/// A local archive of the same id that checks out is kept, and nothing is fetched; a
/// damaged one is replaced only by a copy of the data its record names, once that copy
/// is complete and checked.
#[utoipa::path(post, path = "/api/v1/backup/snapshots/{snapshot_id}/fetch", tag = "repositories",
    params(("snapshot_id" = String, Path), FetchParams),
    responses((status = 202, description = "Fetch started", body = JobInfo), (status = 400, body = ErrorBody),
        (status = 404, description = "No repository holds it", body = ErrorBody),
        (status = 409, description = "Another operation on the app runs", body = ErrorBody),
        (status = 502, description = "The repository could not be read", body = ErrorBody)))]
pub async fn fetch(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<FetchParams>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let started = manager
        .start_fetch(&snapshot_id, params.from.as_deref())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(started.job.info())))
}

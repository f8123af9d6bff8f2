//! Offsite repositories: what is configured, what each holds, and copying a snapshot to
//! one on demand (copies after each backup start by themselves, see `manager::offsite`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::jobs::JobInfo;
use crate::manager::BackupManager;
use crate::offsite::RemoteSnapshot;

/// A configured repository, without its password or backend options.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryInfo {
    /// What the other routes take as `{name}`, `repository` or `from`.
    pub name: String,
    /// `opendal:s3`, `rest:https://…` (a password in it masked), a path, …
    pub repository: String,
    /// `after_backup` or `manual`.
    pub copy: String,
    /// This server never deletes there: forgets, prunes and retention passes are 409.
    pub append_only: bool,
}

/// The configured offsite repositories.
///
/// Read from the config alone: a repository that is down is listed like the others.
#[utoipa::path(get, path = "/api/v1/repositories", tag = "repositories",
    responses((status = 200, body = Vec<RepositoryInfo>)))]
pub async fn list(State(manager): State<Arc<BackupManager>>) -> Json<Vec<RepositoryInfo>> {
    Json(
        manager
            .config()
            .repositories
            .iter()
            .map(|r| RepositoryInfo {
                name: r.name.clone(),
                repository: r.location(),
                append_only: r.append_only,
                copy: serde_json::to_value(r.copy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotsParams {
    /// Only this app's snapshots.
    pub app_id: Option<String>,
}

/// What a repository holds, oldest first — also snapshots copied there by other servers
/// (a new server with the same repository config sees every app's history).
#[utoipa::path(get, path = "/api/v1/repositories/{name}/snapshots", tag = "repositories",
    params(("name" = String, Path, description = "Repository name"), SnapshotsParams),
    responses((status = 200, body = Vec<RemoteSnapshot>), (status = 400, body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 502, description = "The repository could not be read (unreachable, credentials, password)", body = ErrorBody)))]
pub async fn snapshots(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<SnapshotsParams>,
) -> Result<Json<Vec<RemoteSnapshot>>, ApiError> {
    Ok(Json(
        manager
            .remote_snapshots(&name, params.app_id.as_deref())
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CopyParams {
    /// The repository to copy to.
    pub repository: String,
}

/// Copy a snapshot to a repository now (again, if an earlier copy failed). Answers 202
/// with the job; the snapshot's `copies` show its state.
///
/// The snapshot must be held on this server. Copies run one at a time; a failed attempt
/// is retried, with growing waits, until `offsite_attempts` were made, and the job ends
/// with the copy or the last failure. A refusal by the repository's quota policy is not
/// retried; after a copy, that repository's quota evictions and retention run.
#[utoipa::path(post, path = "/api/v1/backup/snapshots/{snapshot_id}/copy", tag = "repositories",
    params(("snapshot_id" = String, Path), CopyParams),
    responses((status = 202, description = "Copy started", body = JobInfo), (status = 400, body = ErrorBody),
        (status = 404, description = "No such snapshot or repository", body = ErrorBody),
        (status = 409, description = "A copy of it to that repository is running", body = ErrorBody)))]
pub async fn copy(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<CopyParams>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let job = manager.start_copy(&snapshot_id, &params.repository)?;
    Ok((StatusCode::ACCEPTED, Json(job.info())))
}

/// Prune the repository now: packs no snapshot uses any more are marked, and those marked
/// by an earlier prune at least `keep_delete_secs` ago are deleted (rustic's two-phase
/// delete keeps copies running elsewhere safe). Deleting a snapshot there starts one too.
/// Answers 202 with the job; its result says what was freed.
///
/// The prune waits for any copy this server is making, so that its plan sees every pack.
/// An `append_only` repository is 409: its admin prunes it (`appsnap repo prune`).
#[utoipa::path(post, path = "/api/v1/repositories/{name}/prune", tag = "repositories",
    params(("name" = String, Path, description = "Repository name")),
    responses((status = 202, description = "Prune started", body = JobInfo), (status = 400, body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 409, description = "The repository is append-only", body = ErrorBody)))]
pub async fn prune(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let job = manager.start_prune(&name)?;
    Ok((StatusCode::ACCEPTED, Json(job.info())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckParams {
    /// Also download every pack and check each blob's hash (reads the whole repository).
    pub read_data: Option<bool>,
}

/// Check the repository (rustic's check). Answers 202 with the job; its result lists the
/// errors and warnings found (none: the repository is sound).
///
/// With `read_data` it waits for a heavy-work slot, like a backup or a verify.
#[utoipa::path(post, path = "/api/v1/repositories/{name}/check", tag = "repositories",
    params(("name" = String, Path, description = "Repository name"), CheckParams),
    responses((status = 202, description = "Check started", body = JobInfo), (status = 400, body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody)))]
pub async fn check(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<CheckParams>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let job = manager.start_check(&name, params.read_data.unwrap_or(false))?;
    Ok((StatusCode::ACCEPTED, Json(job.info())))
}

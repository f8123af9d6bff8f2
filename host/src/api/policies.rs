//! `/api/v1/policies/…` and the per-app policy routes: upload, list, delete, bind,
//! dry-run, run retention, pin a snapshot, see schedules.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::catalog::Snapshot;
use crate::manager::{BackupManager, ManagerError, RetentionReport};
use crate::policy::{Bindings, PolicyError, PolicyInfo};

/// Runs a registry call on a blocking thread: it may compile or call a component and
/// writes files. Its error maps like any `PolicyError`; a panic is 500 `Policy failed`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Policy failed",
                e.to_string(),
            )
        })?
        .map_err(|e| ApiError::from(ManagerError::Policy(e)))
}

/// Upload a policy component (`application/wasm`) as a new version of `name`. Its kind
/// comes from the world it exports; the new version is used from the next evaluation on.
///
/// The component is compiled in a separate process under memory and time limits before
/// it is stored (422 if it is not a usable policy). 409 for a built-in's name, or when
/// `name` holds a policy of another kind. Uploading bytes that are already a version of
/// `name` adds none but makes that version current again: this is how to roll back.
/// Bodies over 16 MiB are 413.
#[utoipa::path(put, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PolicyInfo), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, description = "Not a usable policy component", body = ErrorBody)))]
pub async fn upload(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PolicyInfo>), ApiError> {
    crate::ids::validate("policy name", &name).map_err(ManagerError::from)?;
    let body = body.map_err(|e| {
        let message = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "Upload too large"
        } else {
            "Invalid upload"
        };
        ApiError::new(e.status(), message, e.body_text())
    })?;
    let registry = Arc::clone(&manager.policies);
    let info = blocking(move || registry.upload(&name, &body)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Built-in and uploaded policies, with their versions and failure counts.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", responses((status = 200, body = Vec<PolicyInfo>)))]
pub async fn list(
    State(manager): State<Arc<BackupManager>>,
) -> Result<Json<Vec<PolicyInfo>>, ApiError> {
    let registry = Arc::clone(&manager.policies);
    Ok(Json(blocking(move || Ok(registry.list())).await?))
}

/// One policy: its kind, its versions (`current` names the one in use) and its failures.
#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = PolicyInfo), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
) -> Result<Json<PolicyInfo>, ApiError> {
    crate::ids::validate("policy name", &name).map_err(ManagerError::from)?;
    let registry = Arc::clone(&manager.policies);
    Ok(Json(blocking(move || registry.info(&name)).await?))
}

/// Delete an uploaded policy (refused while bound, and for built-ins).
///
/// Every version goes. The 409 names the apps (or `default`) that bind it: bind another
/// policy there first.
#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::ids::validate("policy name", &name).map_err(ManagerError::from)?;
    manager
        .policies
        .delete(&name)
        .map_err(ManagerError::Policy)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    /// The app whose snapshots the policy is shown. It is not looked up in Docker: an
    /// app that is gone but has snapshots works.
    pub app_id: String,
    /// Configuration to try (default: the app's bound one, else `{}`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

/// What a policy would decide for an app, changing nothing.
///
/// The answer depends on the policy's kind: retention gives the report a run would
/// (`dry_run: true`); quota gives `result.decision` (`admit`, `admit-after-evicting` with
/// `evict`, or `deny` with `reason`) for a backup the size of the newest snapshot
/// (`incoming_estimate`); schedule gives `last_run`, the `next_run` it would plan and
/// `next_runs`, the five runs from it.
#[utoipa::path(post, path = "/api/v1/policies/{name}/dry-run", tag = "policies", params(("name" = String, Path)),
    request_body = DryRun, responses((status = 200, description = "The decision", body = Object),
        (status = 404, body = ErrorBody), (status = 422, description = "The config is refused", body = ErrorBody)))]
pub async fn dry_run(
    State(manager): State<Arc<BackupManager>>,
    Path(name): Path<String>,
    Json(req): Json<DryRun>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(manager.dry_run(&name, &req.app_id, req.config).await?))
}

/// Bind retention/quota/schedule policies (with their JSON config) to an app; each
/// config is checked by the policy's `validate-config` (422 when refused).
///
/// The body replaces all of the app's own bindings, and nothing is stored unless every
/// one is accepted. A slot left out falls back to the default's; an empty body removes
/// the app's own bindings. The app is not looked up: one not installed yet can be bound.
/// 404 when a named policy or repository does not exist; 422 also for a policy of the
/// wrong kind for its slot.
#[utoipa::path(put, path = "/api/v1/backup/apps/{app_id}/policies", tag = "policies", params(("app_id" = String, Path)),
    request_body = Bindings, responses((status = 200, body = Bindings), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn bind(
    State(manager): State<Arc<BackupManager>>,
    Path(app_id): Path<String>,
    Json(bindings): Json<Bindings>,
) -> Result<Json<Bindings>, ApiError> {
    manager.bind(Some(&app_id), bindings).await?;
    Ok(Json(manager.policies.bindings(Some(&app_id))))
}

/// The app's own bindings. Its empty slots use the default bindings, which are not
/// shown here.
#[utoipa::path(get, path = "/api/v1/backup/apps/{app_id}/policies", tag = "policies", params(("app_id" = String, Path)),
    responses((status = 200, body = Bindings)))]
pub async fn bindings(
    State(manager): State<Arc<BackupManager>>,
    Path(app_id): Path<String>,
) -> Result<Json<Bindings>, ApiError> {
    crate::ids::validate("app id", &app_id).map_err(ManagerError::from)?;
    Ok(Json(manager.policies.bindings(Some(&app_id))))
}

/// The default bindings, for apps without their own.
///
/// Replaces the default as a whole, checked like an app's bindings. It applies slot by
/// slot: an app's own binding in a slot wins over the default's.
#[utoipa::path(put, path = "/api/v1/backup/policies/default", tag = "policies",
    request_body = Bindings, responses((status = 200, body = Bindings),
        (status = 404, description = "No such policy", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn bind_default(
    State(manager): State<Arc<BackupManager>>,
    Json(bindings): Json<Bindings>,
) -> Result<Json<Bindings>, ApiError> {
    manager.bind(None, bindings).await?;
    Ok(Json(manager.policies.bindings(None)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetentionParams {
    /// `local` (default): the local snapshots; a repository's name: the app's copies
    /// there, by the retention bound for that repository.
    pub location: Option<String>,
    /// Only report what the pass would delete (or forget), changing nothing. The way to
    /// see a pass on an append-only repository, which this server never runs.
    #[serde(default)]
    pub dry_run: bool,
}

/// Run the app's retention policy now, on its local snapshots or (`?location=NAME`) on
/// its copies in a repository.
///
/// Pinned snapshots and the app's newest one are never deleted: when the policy says
/// delete, they are reported as `protected`. A policy that fails (trap, timeout,
/// nonsense) deletes nothing; the 200 report says why in `error`. Without a retention
/// policy bound, nothing is judged (`policy` is null). An app that was removed can still
/// be cleaned up while it has snapshots.
#[utoipa::path(post, path = "/api/v1/backup/apps/{app_id}/retention", tag = "policies",
    params(("app_id" = String, Path), RetentionParams),
    responses((status = 200, body = RetentionReport), (status = 400, body = ErrorBody),
        (status = 404, description = "No such app and no snapshots of it, or no such repository", body = ErrorBody),
        (status = 409, description = "The repository is append-only (a dry run is allowed)", body = ErrorBody),
        (status = 502, description = "The repository could not be read", body = ErrorBody)))]
pub async fn run_retention(
    State(manager): State<Arc<BackupManager>>,
    Path(app_id): Path<String>,
    ApiQuery(params): ApiQuery<RetentionParams>,
) -> Result<Json<RetentionReport>, ApiError> {
    if let Some(repository) = params.location.as_deref().filter(|l| *l != "local") {
        return Ok(Json(
            manager
                .retention_at(&app_id, repository, params.dry_run)
                .await?,
        ));
    }
    // An app that is gone may still have snapshots to clean up; one nobody knows is a typo.
    if manager.list(Some(&app_id))?.is_empty() {
        manager
            .docker()
            .find_app(&app_id)
            .await
            .map_err(crate::manager::ManagerError::from)?;
    }
    Ok(Json(
        manager.retention(&app_id, None, params.dry_run).await?,
    ))
}

/// Scheduled backups: last run, next run and last error per app.
///
/// An object keyed by app id, with an entry for each app whose schedule the scheduler
/// has seen; the state is kept across restarts.
#[utoipa::path(get, path = "/api/v1/backup/schedules", tag = "policies", responses((status = 200, body = Object)))]
pub async fn schedules(State(manager): State<Arc<BackupManager>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(manager.schedules()).expect("schedules"))
}

/// Fields left out are not changed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPatch {
    /// Pinned snapshots are never deleted by a policy.
    pub pinned: Option<bool>,
    /// An empty string removes the note.
    pub note: Option<String>,
}

/// Pin or annotate a snapshot.
///
/// The change is written to the snapshot's sidecar before the catalog, so it survives a
/// rebuild of the catalog.
#[utoipa::path(patch, path = "/api/v1/backup/snapshots/{snapshot_id}", tag = "backup", params(("snapshot_id" = String, Path)),
    request_body = SnapshotPatch, responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn patch_snapshot(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    Json(patch): Json<SnapshotPatch>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(manager.patch(
        &snapshot_id,
        patch.pinned,
        patch.note,
    )?))
}

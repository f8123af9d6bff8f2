//! The one mapping from errors to HTTP: every failure leaves the API as a status and the
//! body `{"message": "...", "details": "..."}` — `message` is short and stable (panels
//! match on it), `details` says what exactly went wrong.
//!
//! Handlers return `ApiError`, made from a `ManagerError` by `classify` or directly; the
//! `json_errors` layer rewrites whatever else leaves as an error (axum's rejections, the
//! docs' 404) into the same body; `document` lists those statuses in the OpenAPI document.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::docker::DockerError;
use crate::manager::ManagerError;
use crate::policy::PolicyError;

pub use crate::model::ErrorBody;

/// A route's query string, deserialized into `T`; a malformed one is our 400 `Invalid
/// query` with the JSON body, on every route alike (axum's own rejection is plain text).
/// Handlers take it instead of `Query`: `json_errors` would wrap axum's text too, but
/// under the generic message `Bad Request`, which a panel cannot tell from a bad body.
/// Unknown parameters are ignored unless `T` denies them.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| ApiQuery(t))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "Invalid query", e.body_text()))
    }
}

/// An error on its way out of a handler.
#[derive(Debug)]
pub struct ApiError {
    /// A 5xx is also logged, at error level, when the answer is made; a 4xx is not: it is
    /// the client's to fix.
    pub status: StatusCode,
    /// Sent as the JSON body as it is.
    pub body: ErrorBody,
}

/// Waits for a job the request started and answers with its outcome, mapped like any
/// error of the request. `what` names the operation if its task itself died.
///
/// The job runs in a task of its own: a client that leaves drops only this wait, and the
/// job still runs to its end and records its outcome (see `/api/v1/jobs`). A task that
/// died (panicked) answers 500 `{what} failed`, with the join error in `details`.
pub async fn finished<T>(started: crate::manager::Started<T>, what: &str) -> Result<T, ApiError> {
    let outcome = started.done.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{what} failed"),
            e.to_string(),
        )
    })?;
    outcome.map_err(|e| ApiError::from(e.as_ref()))
}

impl ApiError {
    /// `message` is the short, stable text panels match on (keep it the same for the same
    /// cause); `details` is for people and may name ids, paths and the underlying error.
    pub fn new(status: StatusCode, message: &str, details: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                message: message.into(),
                details: details.into(),
            },
        }
    }
}

/// Status and stable message of each manager error. The statuses follow one scheme, so a
/// client can act on the class without knowing every cause:
/// - 400: the request names something malformed, or a snapshot of another app;
/// - 404: the app, snapshot, policy or repository (or the copy in it), or a folder in a
///   snapshot, does not exist;
/// - 409: it conflicts with what runs or is stored (a lock, a pending repair, a policy in
///   use or built in, an existing snapshot, another server's copies): retry later, or
///   change the request;
/// - 413 and 507: too large for the configured limit, the disk, or the quota policy;
/// - 422: the content is refused (corrupt snapshot, unusable policy, config or kind,
///   data Docker shows but appsnap cannot read, a repository copy that is not the
///   snapshot);
/// - 502: Docker or a repository failed; a wrong repository password too: it is in the
///   server's config, and a 401 would blame the client's key;
/// - 503: not now (shutting down, backup root missing or used by another process, or,
///   in a job only, its request abandoned);
/// - 500: everything else — storage, archive, catalog, a failed backup hook or policy
///   call, a misconfigured repository — and a restore that failed (rolled back or not)
///   or that worked but could not remove the data it replaced.
///
/// Messages are a contract with the panels: reword one only together with them.
pub(crate) fn classify(e: &ManagerError) -> (StatusCode, &'static str) {
    use ManagerError::*;
    match e {
        InvalidId(_) => (StatusCode::BAD_REQUEST, "Invalid identifier"),
        AppNotFound(_) => (StatusCode::NOT_FOUND, "Application not found"),
        SnapshotNotFound(_) => (StatusCode::NOT_FOUND, "Snapshot not found"),
        JobNotFound(_) => (StatusCode::NOT_FOUND, "Job not found"),
        NotCancellable(_) => (StatusCode::CONFLICT, "Job cannot be cancelled"),
        Busy { .. } => (
            StatusCode::CONFLICT,
            "Another backup or restore of this application is running",
        ),
        RepairPending { .. } => (
            StatusCode::CONFLICT,
            "An interrupted operation of this application is being repaired",
        ),
        RootLost { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Backup root missing"),
        CleanupFailed { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Restored, but the replaced data was not all removed",
        ),
        NoSpace(_) | NoSpaceToRestore(_) => {
            (StatusCode::INSUFFICIENT_STORAGE, "Insufficient storage")
        }
        ForeignSnapshot { .. } => (
            StatusCode::BAD_REQUEST,
            "Snapshot does not belong to this app",
        ),
        Corrupt(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Snapshot is corrupt"),
        RestoreFailed { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Restore failed, rolled back",
        ),
        RollbackFailed { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Restore failed, rollback incomplete",
        ),
        QuotaDenied { .. } => (
            StatusCode::INSUFFICIENT_STORAGE,
            "Backup denied by quota policy",
        ),
        Policy(p) => match p {
            PolicyError::Invalid(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Invalid policy component")
            }
            PolicyError::Config { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid policy configuration",
            ),
            PolicyError::WrongKind(..) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Policy of the wrong kind")
            }
            PolicyError::NotFound(_) => (StatusCode::NOT_FOUND, "Policy not found"),
            PolicyError::Conflict(_) => (StatusCode::CONFLICT, "Policy in use"),
            PolicyError::Failed(_) | PolicyError::Malformed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "Policy failed")
            }
            PolicyError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Storage error"),
        },
        SnapshotExists(_) => (StatusCode::CONFLICT, "Snapshot already exists"),
        InvalidPath(_) => (StatusCode::BAD_REQUEST, "Invalid path"),
        PathNotFound { .. } => (StatusCode::NOT_FOUND, "Path not found"),
        NotAFile(_) => (StatusCode::BAD_REQUEST, "Not a regular file"),
        PathNotRestorable { .. } => (StatusCode::CONFLICT, "Path cannot be restored"),
        CopyNotBrowsable { .. } => (StatusCode::CONFLICT, "Copy cannot be browsed"),
        BadRange { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable"),
        TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "Upload too large"),
        Docker(DockerError::Hook { .. } | DockerError::HookTimeout { .. }) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Backup hook failed")
        }
        Docker(DockerError::UnreadableVolume { .. }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Application data cannot be read",
        ),
        Docker(_) => (StatusCode::BAD_GATEWAY, "Docker engine error"),
        Archive(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Archive error"),
        Catalog(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Catalog error"),
        Delete { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Snapshot could not be deleted",
        ),
        RootInUse(_) => (StatusCode::SERVICE_UNAVAILABLE, "Backup root in use"),
        ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "Service shutting down"),
        // Only ever seen in a job (and by a client that waited for it).
        Cancelled(_) => (StatusCode::CONFLICT, "Job cancelled"),
        // Only ever seen in the job: its client is gone.
        Abandoned(_) => (StatusCode::SERVICE_UNAVAILABLE, "Request abandoned"),
        Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "Storage error"),
        Offsite(o) => {
            use crate::offsite::OffsiteError as O;
            match o {
                O::UnknownRepository(_) => (StatusCode::NOT_FOUND, "Repository not found"),
                O::SnapshotNotFound { .. } => (
                    StatusCode::NOT_FOUND,
                    "Snapshot not found in the repository",
                ),
                O::NotOurs { .. } => (
                    StatusCode::CONFLICT,
                    "The repository's copies belong to another server",
                ),
                O::Config { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Repository is misconfigured",
                ),
                O::Backend { .. } | O::WrongPassword(_) => {
                    (StatusCode::BAD_GATEWAY, "Repository error")
                }
                O::Mismatch { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Repository copy does not match the snapshot",
                ),
                O::Local(_) | O::NotATree(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "Archive error")
                }
                O::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "Service shutting down"),
                O::AppendOnly(_) => (StatusCode::CONFLICT, "Repository is append-only"),
            }
        }
    }
}

/// The body alone: also how a failed job's `error` is made (`job_view`), so a job and a
/// request that fail for the same cause say the same.
impl From<&ManagerError> for ErrorBody {
    fn from(e: &ManagerError) -> Self {
        ErrorBody {
            message: classify(e).1.into(),
            details: e.to_string(),
        }
    }
}

impl From<&ManagerError> for ApiError {
    fn from(e: &ManagerError) -> Self {
        ApiError {
            status: classify(e).0,
            body: e.into(),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        (&e).into()
    }
}

/// A job's outcome: its error is shared between the job record and whoever waits.
impl From<std::sync::Arc<ManagerError>> for ApiError {
    fn from(e: std::sync::Arc<ManagerError>) -> Self {
        (&*e).into()
    }
}

/// A job as the API shows it: its failure, if any, mapped to the error body like the
/// error of a request. A failure of any other type than `ManagerError` gets the message
/// `Job failed`. Every route that shows a job passes it through here, the SSE stream too.
pub fn job_view(mut info: crate::jobs::JobInfo) -> crate::jobs::JobInfo {
    if let Some(failure) = &info.failure {
        let body = match failure.downcast_ref::<ManagerError>() {
            Some(e) => ErrorBody::from(e),
            None => ErrorBody {
                message: "Job failed".into(),
                details: failure.to_string(),
            },
        };
        info.error = Some(serde_json::to_value(body).expect("error body serializes"));
    }
    info
}

/// Logs a 5xx with its `details`, then answers; a 429 also carries `Retry-After: 5`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}: {}", self.body.message, self.body.details);
        }
        let too_many = self.status == StatusCode::TOO_MANY_REQUESTS;
        let mut response = (self.status, Json(self.body)).into_response();
        if too_many {
            // Every 429 says when to try again (RFC 6585): slots free up as work ends.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

/// Every error answer is the JSON body, whoever made it: axum's own rejections (bad JSON,
/// a wrong content type, a body too large, a bad path or query — plain text), an empty
/// 405, the docs' 404. Their text becomes `details`; the status stays.
///
/// `message` is then the status's reason phrase (`Method Not Allowed`, `Payload Too
/// Large`…). A text over 4 KiB is dropped; without text, `details` names the methods of
/// `Allow` (a 405) or points to `/docs`. Answers below 400 and JSON errors pass as they
/// are.
pub async fn json_errors(response: Response) -> Response {
    use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut details = String::from_utf8_lossy(&text).trim().to_string();
    if details.is_empty() {
        details = match parts.headers.get(ALLOW).and_then(|v| v.to_str().ok()) {
            Some(allow) if status == StatusCode::METHOD_NOT_ALLOWED => {
                format!("this route takes {allow}")
            }
            _ => "see /docs".into(),
        };
    }
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let body = ErrorBody {
        message: status.canonical_reason().unwrap_or("Error").into(),
        details,
    };
    (parts, Json(body)).into_response()
}

/// Adds to every operation of the document the error answers it can give besides its
/// own: the key check (401), the cross-site guard (403, 415), axum's rejections of a body
/// (400, 413, 415, 422) and of an id in the path (400), and 500. A panel generated from
/// the document then knows every status it may see, each with the JSON error body.
///
/// Only missing statuses are added: a handler's own description of a status wins. GET
/// gets no 403 or 415 (the guard lets reads through), and `/healthz`, which is open, no
/// 401. Run it after every route is registered, or the later ones miss out.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let answer = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let api = path != "/healthz";
        let methods = [
            (false, &mut item.get),
            (true, &mut item.put),
            (true, &mut item.post),
            (true, &mut item.delete),
            (true, &mut item.patch),
        ];
        for (changes, op) in methods {
            let Some(op) = op else { continue };
            let mut add = Vec::new();
            if api {
                add.push((
                    "401",
                    "The x-api-key header is missing or wrong (when a key is set)",
                ));
            }
            if api && changes {
                add.push(("403", "Refused: a browser says the request is cross-site"));
                add.push((
                    "415",
                    "Refused content type (form types, or none where a body is expected)",
                ));
            }
            let ids = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Path));
            if ids {
                add.push(("400", "Invalid identifier in the path"));
            }
            if op.request_body.is_some() {
                add.push(("400", "Malformed request body or query"));
                add.push(("413", "Request body too large"));
                add.push(("422", "The body does not have the expected shape"));
            }
            add.push(("500", "Internal error (storage, Docker)"));
            for (status, description) in add {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| answer(description));
            }
        }
    }
}

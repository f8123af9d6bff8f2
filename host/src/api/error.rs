//! The one mapping from errors to HTTP: every failure leaves the API as a status and the
//! body `{"message": "...", "details": "..."}` — `message` is short and stable (panels
//! match on it), `details` says what exactly went wrong.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::docker::DockerError;
use crate::manager::ManagerError;
use crate::policy::PolicyError;

/// The JSON body of every error response (and of a failed job).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub message: String,
    pub details: String,
}

/// An error on its way out of a handler.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
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

/// Status and stable message of each manager error.
fn classify(e: &ManagerError) -> (StatusCode, &'static str) {
    use ManagerError::*;
    match e {
        InvalidId(_) => (StatusCode::BAD_REQUEST, "Invalid identifier"),
        AppNotFound(_) => (StatusCode::NOT_FOUND, "Application not found"),
        SnapshotNotFound(_) => (StatusCode::NOT_FOUND, "Snapshot not found"),
        Busy { .. } => (
            StatusCode::CONFLICT,
            "Another backup or restore of this application is running",
        ),
        RepairPending { .. } => (
            StatusCode::CONFLICT,
            "An interrupted operation of this application is being repaired",
        ),
        RootLost { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Backup root missing"),
        NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "Insufficient storage"),
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
        // Only ever seen in the job: its client is gone.
        Abandoned(_) => (StatusCode::SERVICE_UNAVAILABLE, "Request abandoned"),
        Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "Storage error"),
    }
}

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

impl From<std::sync::Arc<ManagerError>> for ApiError {
    fn from(e: std::sync::Arc<ManagerError>) -> Self {
        (&*e).into()
    }
}

/// A job as the API shows it: its failure, if any, mapped to the error body like the
/// error of a request.
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

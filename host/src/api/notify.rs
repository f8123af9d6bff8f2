//! `POST /api/v1/notify/test`: a test message to the configured alert targets.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::manager::BackupManager;
use crate::notify::Delivery;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TestParams {
    /// Only this target (its `name`); default: every target.
    pub target: Option<String>,
}

/// One entry per target tried, in config order; empty when no target is configured.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    /// What each target said; a failed delivery is not an error of this request.
    pub results: Vec<Delivery>,
}

/// Send a test message now (once, no retries) and report what each target answered.
///
/// The message goes straight to each target, not through the alert queues, so it does
/// not wait behind pending alerts. Targets are tried one after another and the answer
/// comes after the last; each attempt is limited to 15 seconds. A target that fails is
/// reported with `ok: false` and its error in the 200 answer.
#[utoipa::path(post, path = "/api/v1/notify/test", tag = "service", params(TestParams),
    responses((status = 200, body = TestReport),
        (status = 404, description = "No target of that name", body = ErrorBody)))]
pub async fn test(
    State(manager): State<Arc<BackupManager>>,
    ApiQuery(params): ApiQuery<TestParams>,
) -> Result<Json<TestReport>, ApiError> {
    match manager.notifier.test(params.target.as_deref()).await {
        Some(results) => Ok(Json(TestReport { results })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Notification target not found",
            format!(
                "no [[notify]] target is named `{}`",
                params.target.unwrap_or_default()
            ),
        )),
    }
}

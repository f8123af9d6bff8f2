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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    /// What each target said; a failed delivery is not an error of this request.
    pub results: Vec<Delivery>,
}

/// Send a test message now (once, no retries) and report what each target answered.
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

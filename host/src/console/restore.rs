//! The restore flow: a page with the server's pre-checks and a typed confirmation
//! (`GET /snapshots/{id}/restore`), then the restore as a job (`POST`), whose page ends
//! in exactly one of Restored, Failed – rolled back, Rollback incomplete (`jobs`).

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::session::Csrf;
use super::{
    Console, Frame, LangParam, SnapRow, bytes, csrf_refusal, job_or_refusal, not_found, refused,
};
use crate::manager::RestorePreview;

#[derive(Template)]
#[template(path = "console/restore.html")]
struct RestorePage {
    f: Frame,
    s: SnapRow,
    p: RestorePreview,
    /// Why the last confirmation was refused.
    error: Option<&'static str>,
}

impl RestorePage {
    fn action(&self, action: &str) -> &'static str {
        match action {
            "replace" => self.f.t.act_replace,
            "create" => self.f.t.act_create,
            _ => self.f.t.act_skip,
        }
    }

    fn unstaged(&self) -> bool {
        self.p
            .mounts
            .iter()
            .any(|m| m.action != "skip" && !m.staged)
    }

    fn size(&self, n: &u64) -> String {
        bytes(*n)
    }

    fn last_downtime(&self) -> Option<String> {
        self.p
            .last_downtime_ms
            .map(|ms| format!("{:.1} {}", ms as f64 / 1000.0, self.f.t.seconds))
    }
}

/// The page, or why there is none: the manager's refusal (unknown snapshot, another
/// app's, an index that does not read) as the API would answer it.
async fn render(
    console: &Console,
    f: Frame,
    id: &str,
    error: Option<&'static str>,
) -> Result<RestorePage, Response> {
    let Ok(snapshot) = console.manager.get(id) else {
        return Err(not_found(f));
    };
    match console
        .manager
        .restore_preview(&snapshot.app_id, &snapshot.snapshot_id)
        .await
    {
        Ok(p) => Ok(RestorePage {
            f,
            s: SnapRow::from(&snapshot),
            p,
            error,
        }),
        Err(e) => Err(refused(f, &e)),
    }
}

/// `GET /snapshots/{id}/restore`: what a restore would do, and the confirmation.
pub(super) async fn page(
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(
        &console.base,
        &param,
        &headers,
        format!("/snapshots/{id}/restore"),
    )
    .signed_in(csrf);
    match render(&console, f, &id, None).await {
        Ok(page) => page
            .f
            .respond(StatusCode::OK, page.render(), param.lang.is_some()),
        Err(refusal) => refusal,
    }
}

#[derive(Deserialize)]
pub(super) struct Confirm {
    csrf: String,
    /// The app's name, typed by the user.
    confirm: String,
}

/// `POST /snapshots/{id}/restore`: with the app's name typed, starts the restore and
/// shows its job; with anything else, the page again (400) and nothing done.
pub(super) async fn start(
    State(console): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<Confirm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f =
        Frame::plain(&console.base, &headers, &format!("/snapshots/{id}/restore")).signed_in(csrf);
    let Ok(snapshot) = console.manager.get(&id) else {
        return not_found(f);
    };
    if form.confirm.trim() != snapshot.app_id {
        let wrong = Some(f.t.confirm_wrong);
        return match render(&console, f, &id, wrong).await {
            Ok(page) => page
                .f
                .respond(StatusCode::BAD_REQUEST, page.render(), false),
            Err(refusal) => refusal,
        };
    }
    let started = console
        .manager
        .start_restore_from(&snapshot.app_id, &snapshot.snapshot_id, None)
        .await;
    job_or_refusal(&console.base, started.map(|s| s.job), f)
}

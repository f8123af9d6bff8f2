//! The restore flow: a page with the server's pre-checks and a typed confirmation
//! (`GET /snapshots/{id}/restore`, or `/repositories/{name}/snapshots/{id}/restore` for
//! a copy there, fetched first), then the restore as a job (`POST`), whose page ends in
//! exactly one of Restored, Failed – rolled back, Rollback incomplete (`jobs`).

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::session::Csrf;
use super::{
    Console, Frame, LangParam, SnapRow, bytes, csrf_refusal, job_or_refusal, not_found, refused,
};
use crate::manager::{ManagerError, PreviewOf, RestorePreview};

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

/// A snapshot found: its row, its app, and what its preview is of.
type Found = (SnapRow, String, PreviewOf<'static>);

/// The snapshot restored: a local one, or the copy in a repository.
struct Which {
    id: String,
    from: Option<String>,
}

impl Which {
    /// The snapshot: the local record, or the repository's copy (found once, for the
    /// row, the app and the preview).
    async fn find(&self, console: &Console) -> Result<Found, ManagerError> {
        match &self.from {
            None => {
                let s = console.manager.get(&self.id)?;
                Ok((SnapRow::from(&s), s.app_id, PreviewOf::Local))
            }
            Some(repo) => {
                let r = console.manager.find_remote(repo, &self.id).await?;
                Ok((
                    SnapRow::from(&r),
                    r.app_id.clone(),
                    PreviewOf::Copy(Box::new(r)),
                ))
            }
        }
    }

    /// The flow's own path (its form posts there).
    fn here(&self) -> String {
        match &self.from {
            None => format!("/snapshots/{}/restore", self.id),
            Some(repo) => format!("/repositories/{repo}/snapshots/{}/restore", self.id),
        }
    }
}

/// The snapshot `which` names, or the page that says why there is none: the manager's
/// refusal (unknown snapshot or copy, a repository that fails) as the API would answer.
async fn find(console: &Console, f: &Frame, which: &Which) -> Result<Found, Response> {
    match which.find(console).await {
        Ok(found) => Ok(found),
        Err(ManagerError::SnapshotNotFound(_)) => Err(not_found(f.clone())),
        Err(e) => Err(refused(f.clone(), &e)),
    }
}

/// The page for the snapshot found, or why there is none: the preview's refusal
/// (another app's, an index that does not read).
async fn render(
    console: &Console,
    f: Frame,
    which: &Which,
    (s, app, of): Found,
    error: Option<&'static str>,
) -> Result<RestorePage, Response> {
    match console.manager.restore_preview(&app, &which.id, of).await {
        Ok(p) => Ok(RestorePage { f, s, p, error }),
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
    show(console, Which { id, from: None }, param, csrf, headers).await
}

/// `GET /repositories/{name}/snapshots/{id}/restore`: the same, for the copy there.
pub(super) async fn page_from(
    State(console): State<Console>,
    Path((name, id)): Path<(String, String)>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let which = Which {
        id,
        from: Some(name),
    };
    show(console, which, param, csrf, headers).await
}

async fn show(
    console: Console,
    which: Which,
    param: LangParam,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&console.base, &param, &headers, which.here()).signed_in(csrf);
    let found = match find(&console, &f, &which).await {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    match render(&console, f, &which, found, None).await {
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
    confirmed(console, Which { id, from: None }, csrf, headers, form).await
}

/// `POST /repositories/{name}/snapshots/{id}/restore`: the same, from the copy there.
pub(super) async fn start_from(
    State(console): State<Console>,
    Path((name, id)): Path<(String, String)>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<Confirm>,
) -> Response {
    let which = Which {
        id,
        from: Some(name),
    };
    confirmed(console, which, csrf, headers, form).await
}

async fn confirmed(
    console: Console,
    which: Which,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    form: Confirm,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&console.base, &headers, &which.here()).signed_in(csrf);
    let found = match find(&console, &f, &which).await {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let app = found.1.clone();
    if form.confirm.trim() != app {
        let wrong = Some(f.t.confirm_wrong);
        return match render(&console, f, &which, found, wrong).await {
            Ok(page) => page
                .f
                .respond(StatusCode::BAD_REQUEST, page.render(), false),
            Err(refusal) => refusal,
        };
    }
    let started = (console.manager)
        .start_restore_from(&app, &which.id, which.from.as_deref())
        .await;
    job_or_refusal(&console.base, started.map(|s| s.job), f)
}

//! Where copies go and where alerts go (`/repositories`): each offsite repository with a
//! check and a prune (jobs, followed live on their page) and the snapshots it holds
//! (`/repositories/{name}`); each alert target with a "send a test" button and what the
//! target answered (`POST /alerts/test`).

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::session::Csrf;
use super::{
    Console, Frame, LangParam, When, bytes, csrf_refusal, job_or_refusal, not_found, refused,
};
use crate::notify::Delivery;
use crate::offsite::RemoteSnapshot;

struct RepoRow {
    name: String,
    repository: String,
    copy: String,
    /// Pruned by its admin elsewhere: no Prune button here.
    append_only: bool,
}

struct TargetRow {
    name: String,
    kind: String,
}

#[derive(Template)]
#[template(path = "console/repositories.html")]
struct RepositoriesPage {
    f: Frame,
    repos: Vec<RepoRow>,
    targets: Vec<TargetRow>,
    /// The answers of a test just sent.
    tested: Option<Vec<Delivery>>,
}

fn render(console: &Console, f: Frame, tested: Option<Vec<Delivery>>) -> RepositoriesPage {
    let config = console.manager.config();
    let text = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    RepositoriesPage {
        f,
        repos: (config.repositories.iter())
            .map(|r| RepoRow {
                name: r.name.clone(),
                repository: r.location(),
                copy: text(serde_json::to_value(r.copy)),
                append_only: r.append_only,
            })
            .collect(),
        targets: (config.notify.iter())
            .map(|t| TargetRow {
                name: t.name.clone(),
                kind: text(serde_json::to_value(t.kind)),
            })
            .collect(),
        tested,
    }
}

/// `GET /repositories`.
pub(super) async fn page(
    State(console): State<Console>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&console.base, &param, &headers, "/repositories".into()).signed_in(csrf);
    let page = render(&console, f, None);
    page.f
        .respond(StatusCode::OK, page.render(), param.lang.is_some())
}

#[derive(Template)]
#[template(path = "console/repository.html")]
struct RepositoryPage {
    f: Frame,
    name: String,
    /// Only this app's copies (`?app=`).
    app: Option<String>,
    snapshots: Vec<RemoteSnapshot>,
}

#[derive(Deserialize)]
pub(super) struct RepositoryParam {
    lang: Option<String>,
    app: Option<String>,
}

impl RepositoryPage {
    fn when(&self, t: &chrono::DateTime<chrono::Utc>) -> When {
        (*t).into()
    }

    fn size(&self, n: &u64) -> String {
        bytes(*n)
    }
}

/// `GET /repositories/{name}`: the snapshots the repository holds (`?app=`: of one app),
/// newest first, each to browse or restore.
pub(super) async fn snapshots(
    State(console): State<Console>,
    Path(name): Path<String>,
    Query(RepositoryParam { lang, app }): Query<RepositoryParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let param = LangParam { lang };
    let here = format!("/repositories/{name}");
    let f = Frame::new(&console.base, &param, &headers, here).signed_in(csrf);
    if console.manager.repository(&name).is_err() {
        return not_found(f);
    }
    let app = app.filter(|a| !a.is_empty());
    match console
        .manager
        .remote_snapshots(&name, app.as_deref())
        .await
    {
        Ok(mut snapshots) => {
            snapshots.reverse();
            let page = RepositoryPage {
                f,
                name,
                app,
                snapshots,
            };
            page.f
                .respond(StatusCode::OK, page.render(), param.lang.is_some())
        }
        Err(e) => refused(f, &e),
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    csrf: String,
}

/// `POST /repositories/{name}/check` checks the repository's structure, `…/prune` removes
/// the data no copy uses: the job's page.
pub(super) async fn act(
    State(console): State<Console>,
    Path((name, action)): Path<(String, String)>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&console.base, &headers, "/repositories").signed_in(csrf);
    let started = match action.as_str() {
        "check" => console.manager.start_check(&name, false),
        "prune" => console.manager.start_prune(&name),
        _ => return not_found(f),
    };
    job_or_refusal(&console.base, started, f)
}

#[derive(Deserialize)]
pub(super) struct TestForm {
    csrf: String,
    target: String,
}

/// `POST /alerts/test`: sends a test message to one target now; the page with its answer.
pub(super) async fn test_alert(
    State(console): State<Console>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<TestForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&console.base, &headers, "/repositories").signed_in(csrf);
    let Some(results) = console.manager.notifier.test(Some(&form.target)).await else {
        return not_found(f);
    };
    let page = render(&console, f, Some(results));
    page.f.respond(StatusCode::OK, page.render(), false)
}

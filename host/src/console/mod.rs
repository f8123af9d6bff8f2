//! The web console: server-rendered pages for people who would rather not use curl, at
//! `/` (or under `base_path`). One file per screen, each with its routes' handlers:
//!
//! - `dashboard`: the apps, their status, usage and next run; the running jobs.
//! - this file: an app's page, Back up now, pin, note, delete; sign-in and sign-out; the
//!   frame every page shares (`Frame`) and the answers shared by the actions.
//! - `snapshot`: a snapshot's details and files (browse, search, download, restore
//!   beside), verify, copy, the archive's download; a copy in a repository, its files
//!   read from there.
//! - `restore`: the pre-checks, the typed confirmation, the restore's job.
//! - `jobs`: the jobs, a job's live page (SSE), its cancel and a restore's ending.
//! - `policies`: components, upload, bindings, schedules, dry runs.
//! - `repositories`: check, prune and snapshots of each repository; test alerts.
//!
//! Pages are askama templates (`host/templates/console/`), assets are compiled into the
//! binary (`host/assets/`), nothing is fetched from elsewhere
//! (`Content-Security-Policy: default-src 'self'`; `frame-ancestors` from the config), and
//! every page reads without JavaScript (the one script localises times, follows a running
//! job, and guards the typed confirmation and double submits). Strings come in English and
//! Simplified Chinese ([`i18n`]). The console only calls the manager, as the API does;
//! where both answer the same thing (a download, a job's event stream) they share the
//! API's function.
//!
//! Access follows the API's rules: without an API key, loopback names only (the
//! `Host` rule the API router applies to these routes too); with a key, a sign-in form
//! swaps the key for a session cookie ([`session`]), and every form of a signed-in page
//! carries the session's CSRF token. An unsafe request must come from this service's
//! own page (the API router's form variant of its cross-site rule).

mod dashboard;
pub mod i18n;
mod jobs;
mod policies;
mod repositories;
mod restore;
pub mod session;
mod snapshot;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Extension, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::catalog::Snapshot;
use crate::manager::{BackupManager, ManagerError};
use i18n::{Lang, Strings};
use session::{Csrf, Sessions};

/// What the console's handlers share.
#[derive(Clone)]
struct Console {
    manager: Arc<BackupManager>,
    /// The path prefix of every page and link (`base_path`; empty at `/`).
    base: Arc<str>,
    sessions: Arc<Sessions>,
    /// The CSRF token of the pages when no API key is set (no sessions then): made at
    /// start, so a form from a page of this process is the only one that passes.
    open_csrf: Csrf,
}

/// The pages and their assets.
pub fn router(manager: Arc<BackupManager>) -> Router {
    let state = Console {
        base: manager.config().base_path.as_str().into(),
        manager,
        sessions: Arc::default(),
        open_csrf: Csrf {
            token: session::token(),
            session: false,
        },
    };
    Router::new()
        .route("/", get(dashboard::page))
        .route("/apps/{app_id}", get(app_page))
        .route("/sign-out", post(sign_out))
        .route("/apps/{app_id}/backup", post(backup_now))
        .route("/jobs", get(jobs::list))
        .route("/policies", get(policies::page))
        .route("/repositories", get(repositories::page))
        .route("/repositories/{name}", get(repositories::snapshots))
        .route("/repositories/{name}/{action}", post(repositories::act))
        .route(
            "/repositories/{name}/snapshots/{snapshot_id}",
            get(snapshot::copy_page),
        )
        .route(
            "/repositories/{name}/snapshots/{snapshot_id}/file",
            get(snapshot::copy_file),
        )
        .route(
            "/repositories/{name}/snapshots/{snapshot_id}/restore",
            get(restore::page_from).post(restore::start_from),
        )
        .route("/alerts/test", post(repositories::test_alert))
        .route("/snapshots/{snapshot_id}/verify", post(snapshot::verify))
        .route("/snapshots/{snapshot_id}/copy", post(snapshot::copy))
        .route("/snapshots/{snapshot_id}/download", get(snapshot::download))
        .route("/policies/dry-run", post(policies::dry_run))
        .route("/policies/bind", post(policies::bind))
        .route(
            "/policies/upload",
            post(policies::upload).layer(axum::extract::DefaultBodyLimit::max(
                crate::policy::MAX_COMPONENT_BYTES + (64 << 10),
            )),
        )
        .route("/jobs/{job_id}", get(jobs::page))
        .route("/jobs/{job_id}/events", get(jobs::events))
        .route("/jobs/{job_id}/cancel", post(jobs::cancel))
        .route("/snapshots/{snapshot_id}", get(snapshot::page))
        .route("/snapshots/{snapshot_id}/file", get(snapshot::file))
        .route(
            "/snapshots/{snapshot_id}/restore-beside",
            post(snapshot::restore_beside),
        )
        .route(
            "/snapshots/{snapshot_id}/restore",
            get(restore::page).post(restore::start),
        )
        .route("/snapshots/{snapshot_id}/pin", post(pin))
        .route("/snapshots/{snapshot_id}/note", post(note))
        .route(
            "/snapshots/{snapshot_id}/delete",
            get(delete_page).post(delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), signed_in))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .route("/assets/favicon.svg", get(favicon))
        .layer(middleware::map_response_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// `?lang=`: switches the language (kept in a cookie).
#[derive(Debug, Deserialize)]
pub struct LangParam {
    lang: Option<String>,
}

/// What every page's frame needs.
#[derive(Clone)]
struct Frame {
    /// The path prefix of the page's links (`base_path`).
    base: Arc<str>,
    lang: Lang,
    t: &'static Strings,
    /// The page's own path, for the language switch's links.
    here: String,
    /// The page's CSRF token, for its forms.
    csrf: Option<String>,
    /// Signed in with the API key (the page offers to sign out).
    session: bool,
}

impl Frame {
    fn new(base: &Arc<str>, param: &LangParam, headers: &HeaderMap, here: String) -> Frame {
        let lang = Lang::of(param.lang.as_deref(), headers);
        Frame {
            base: Arc::clone(base),
            lang,
            t: lang.strings(),
            here,
            csrf: None,
            session: false,
        }
    }

    /// The apps page's address.
    fn home(&self) -> String {
        under(&self.base, "/")
    }

    /// The frame of an answer to a form or a refusal: no `?lang=` there.
    fn plain(base: &Arc<str>, headers: &HeaderMap, here: &str) -> Frame {
        Frame::new(base, &LangParam { lang: None }, headers, here.into())
    }

    fn signed_in(mut self, csrf: Option<Extension<Csrf>>) -> Frame {
        if let Some(Extension(c)) = csrf {
            self.session = c.session;
            self.csrf = Some(c.token);
        }
        self
    }

    /// The page as a response, with the language cookie when `?lang=` chose one.
    fn respond(
        &self,
        status: StatusCode,
        page: Result<String, askama::Error>,
        chosen: bool,
    ) -> Response {
        let body = match page {
            Ok(body) => body,
            Err(e) => {
                tracing::error!("a console page did not render: {e}");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be rendered",
                )
                    .into_response();
            }
        };
        let mut response = (status, Html(body)).into_response();
        if chosen {
            let cookie = format!(
                "{}={}; Path=/; Max-Age=31536000; SameSite=Strict",
                i18n::COOKIE,
                self.lang.code()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        response
    }
}

/// One row of an app's page.
struct SnapRow {
    id: String,
    taken: When,
    size: String,
    origin: String,
    note: String,
    pinned: bool,
    locations: String,
    /// Its structure was checked in full (a restore then checks only its checksum).
    verified: bool,
    /// Its copy in each repository: (repository, state, why the last attempt failed).
    copies: Vec<(String, String, Option<String>)>,
}

impl From<&Snapshot> for SnapRow {
    fn from(s: &Snapshot) -> SnapRow {
        SnapRow {
            id: s.snapshot_id.clone(),
            taken: s.facts.created_at.into(),
            size: bytes(s.size_bytes),
            origin: serde_json::to_value(s.facts.origin)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            note: s.facts.note.clone().unwrap_or_default(),
            pinned: s.facts.pinned,
            locations: s.locations.join(", "),
            verified: s.checked().is_some(),
            copies: (s.facts.copies.iter())
                .map(|(repo, c)| {
                    let state = serde_json::to_value(c.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    (repo.clone(), state, c.error.clone())
                })
                .collect(),
        }
    }
}

impl From<&crate::offsite::RemoteSnapshot> for SnapRow {
    /// A copy in a repository: what its description says (no local record, no copies).
    fn from(r: &crate::offsite::RemoteSnapshot) -> SnapRow {
        SnapRow {
            id: r.snapshot_id.clone(),
            taken: r.created_at.into(),
            size: bytes(r.tar_bytes),
            origin: serde_json::to_value(r.origin)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            note: r.note.clone().unwrap_or_default(),
            pinned: r.pinned,
            locations: r.repository.clone(),
            verified: false,
            copies: Vec::new(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/app.html")]
struct AppPage {
    f: Frame,
    app_id: String,
    snapshots: Vec<SnapRow>,
    /// This process's jobs of the app, newest first.
    jobs: Vec<jobs::JobRow>,
    /// The policies that apply to it: (slot, policy and settings), `–` for none.
    bindings: Vec<(&'static str, String)>,
    /// The configured repositories: its copies there are listed on their pages.
    repositories: Vec<String>,
}

impl AppPage {
    fn state(&self, s: &crate::jobs::JobState) -> &'static str {
        jobs::state(&self.f, *s)
    }
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct Message {
    f: Frame,
    title: &'static str,
    text: &'static str,
}

/// `GET /apps/{app_id}`: the app's snapshots, newest first.
async fn app_page(
    State(Console { manager, base, .. }): State<Console>,
    Path(app_id): Path<String>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&base, &param, &headers, format!("/apps/{app_id}")).signed_in(csrf);
    let Ok(snapshots) = manager.list(Some(&app_id)) else {
        return not_found(f);
    };
    let known = !snapshots.is_empty()
        || manager
            .apps_in_docker()
            .await
            .is_ok_and(|apps| apps.contains(&app_id));
    if !known {
        return not_found(f);
    }
    let chosen = param.lang.is_some();
    let own = manager.policies.bindings(Some(&app_id));
    let fallback = manager.policies.bindings(None);
    let shown = |b: Option<&crate::policy::Binding>| {
        b.map_or("–".to_string(), |b| format!("{} {}", b.policy, b.config))
    };
    let bindings = vec![
        (
            f.t.col_retention,
            shown(own.retention.as_ref().or(fallback.retention.as_ref())),
        ),
        (
            f.t.col_quota,
            shown(own.quota.as_ref().or(fallback.quota.as_ref())),
        ),
        (
            f.t.col_schedule,
            shown(own.schedule.as_ref().or(fallback.schedule.as_ref())),
        ),
    ];
    let jobs = (manager.jobs.list().into_iter())
        .filter(|j| j.app_id == app_id)
        .map(jobs::JobRow::from)
        .collect();
    let page = AppPage {
        f,
        app_id,
        snapshots: snapshots.iter().map(SnapRow::from).collect(),
        jobs,
        bindings,
        repositories: (manager.config().repositories.iter())
            .map(|r| r.name.clone())
            .collect(),
    };
    page.f.respond(StatusCode::OK, page.render(), chosen)
}

fn not_found(f: Frame) -> Response {
    let page = Message {
        title: f.t.not_found_title,
        text: f.t.not_found_text,
        f,
    };
    page.f.respond(StatusCode::NOT_FOUND, page.render(), false)
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../assets/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console.js"),
    )
}

async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("../../assets/favicon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The 403 of a form whose CSRF token is not the page's (`None`: it is).
fn csrf_refusal(form: &str, csrf: &Option<Extension<Csrf>>) -> Option<Response> {
    let refusal = (
        StatusCode::FORBIDDEN,
        "the form's CSRF token is not this page's",
    );
    (!csrf_ok(form, csrf)).then(|| refusal.into_response())
}

/// Whether a form's CSRF token is the page's.
fn csrf_ok(form: &str, csrf: &Option<Extension<Csrf>>) -> bool {
    use subtle::ConstantTimeEq;
    csrf.as_ref()
        .is_some_and(|Extension(c)| bool::from(form.as_bytes().ct_eq(c.token.as_bytes())))
}

/// The answer to a form that starts a job: the job's page, or the page saying why the
/// manager refused it.
fn job_or_refusal(
    base: &str,
    started: Result<crate::jobs::Job, ManagerError>,
    f: Frame,
) -> Response {
    match started {
        Ok(job) => to(base, &format!("/jobs/{}", job.id())).into_response(),
        Err(e) => refused(f, &e),
    }
}

/// The page for an action the manager refused: its status, the API's message, the cause.
fn refused(f: Frame, e: &crate::manager::ManagerError) -> Response {
    let (status, message) = crate::api::error::classify(e);
    let page = Failure {
        title: f.t.action_refused,
        message,
        details: e.to_string(),
        f,
    };
    page.f.respond(status, page.render(), false)
}

#[derive(Template)]
#[template(path = "console/failure.html")]
struct Failure {
    f: Frame,
    title: &'static str,
    message: &'static str,
    details: String,
}

/// `POST /apps/{app_id}/backup`: starts a backup and shows its job.
async fn backup_now(
    State(Console { manager, base, .. }): State<Console>,
    Path(app_id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&base, &headers, &format!("/apps/{app_id}")).signed_in(csrf);
    let started = manager
        .start_backup(&app_id, crate::catalog::Origin::Manual, None)
        .await;
    job_or_refusal(&base, started.map(|s| s.job), f)
}

#[derive(Deserialize)]
struct PinForm {
    csrf: String,
    pinned: bool,
}

#[derive(Deserialize)]
struct NoteForm {
    csrf: String,
    note: String,
}

/// The app page of the snapshot an action changed (or the apps when it is gone).
fn back_to_app(base: &str, snapshot: Option<&Snapshot>) -> Response {
    let path = snapshot.map_or("/".to_string(), |s| format!("/apps/{}", s.app_id));
    to(base, &path).into_response()
}

/// A 303 to the console's page `path` (under `base_path`).
fn to(base: &str, path: &str) -> axum::response::Redirect {
    axum::response::Redirect::to(&under(base, path))
}

/// The console's page `path` under `base`: the apps page is `base` itself (a nested
/// router answers `/appsnap`, not `/appsnap/`).
fn under(base: &str, path: &str) -> String {
    match path {
        "/" if !base.is_empty() => base.to_string(),
        _ => format!("{base}{path}"),
    }
}

/// The answer to a change of a snapshot: its app's page, or why it was refused.
fn patched(
    base: &Arc<str>,
    result: Result<Snapshot, crate::manager::ManagerError>,
    csrf: Option<Extension<Csrf>>,
    headers: &HeaderMap,
) -> Response {
    match result {
        Ok(s) => back_to_app(base, Some(&s)),
        Err(e) => refused(Frame::plain(base, headers, "/").signed_in(csrf), &e),
    }
}

/// `POST /snapshots/{id}/pin`: pins or unpins it.
async fn pin(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<PinForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    patched(
        &base,
        manager.patch(&id, Some(form.pinned), None),
        csrf,
        &headers,
    )
}

/// `POST /snapshots/{id}/note`: sets its note (empty: removes it).
async fn note(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<NoteForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let note = Some(form.note.trim().to_string());
    patched(&base, manager.patch(&id, None, note), csrf, &headers)
}

#[derive(Template)]
#[template(path = "console/delete.html")]
struct DeletePage {
    f: Frame,
    s: SnapRow,
    app_id: String,
}

/// `GET /snapshots/{id}/delete`: what a delete removes, and where, to confirm.
async fn delete_page(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&base, &param, &headers, format!("/snapshots/{id}/delete")).signed_in(csrf);
    let Ok(snapshot) = manager.get(&id) else {
        return not_found(f);
    };
    let chosen = param.lang.is_some();
    let page = DeletePage {
        f,
        s: SnapRow::from(&snapshot),
        app_id: snapshot.app_id,
    };
    page.f.respond(StatusCode::OK, page.render(), chosen)
}

/// `POST /snapshots/{id}/delete`: deletes the local archive (copies stay).
async fn delete(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let snapshot = manager.get(&id).ok();
    match manager.delete(&id) {
        Ok(()) => back_to_app(&base, snapshot.as_ref()),
        Err(e) => refused(Frame::plain(&base, &headers, "/").signed_in(csrf), &e),
    }
}

/// With an API key set, a page needs a session: without one, a GET is sent to the
/// sign-in form and anything else is 401. With a session, its CSRF token is handed to the
/// page (for its forms).
async fn signed_in(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    if console.manager.config().api_key.is_none() {
        request.extensions_mut().insert(console.open_csrf.clone());
        return next.run(request).await;
    }
    match console.sessions.of(request.headers()) {
        Some((_, csrf)) => {
            request.extensions_mut().insert(csrf);
            next.run(request).await
        }
        None if request.method() == axum::http::Method::GET => {
            to(&console.base, "/sign-in").into_response()
        }
        None => {
            let f = Frame::plain(&console.base, request.headers(), "/");
            let page = Message {
                title: f.t.sign_in_title,
                text: f.t.sign_in_text,
                f,
            };
            page.f
                .respond(StatusCode::UNAUTHORIZED, page.render(), false)
        }
    }
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignIn {
    f: Frame,
    /// Why the last attempt failed.
    error: Option<&'static str>,
}

/// `GET /sign-in`: the form (without an API key there is nothing to sign in to).
async fn sign_in_form(
    State(console): State<Console>,
    Query(param): Query<LangParam>,
    headers: HeaderMap,
) -> Response {
    if console.manager.config().api_key.is_none() {
        return to(&console.base, "/").into_response();
    }
    let page = SignIn {
        f: Frame::new(&console.base, &param, &headers, "/sign-in".into()),
        error: None,
    };
    page.f
        .respond(StatusCode::OK, page.render(), param.lang.is_some())
}

#[derive(Deserialize)]
struct KeyForm {
    key: String,
}

/// `POST /sign-in`: the key, compared in constant time; the session cookie and the apps
/// page, or the form again with a 401.
async fn sign_in(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<KeyForm>,
) -> Response {
    let Some(expected) = &console.manager.config().api_key else {
        return to(&console.base, "/").into_response();
    };
    if !crate::api::key_matches(form.key.as_bytes(), expected) {
        tracing::warn!("a console sign-in with a wrong key");
        let f = Frame::plain(&console.base, &headers, "/sign-in");
        let page = SignIn {
            error: Some(f.t.sign_in_wrong),
            f,
        };
        return page
            .f
            .respond(StatusCode::UNAUTHORIZED, page.render(), false);
    }
    let (id, _) = console.sessions.create();
    redirect_setting(
        &console.base,
        "/",
        &session::set_cookie(Some(&id), &headers),
    )
}

/// A 303 to the page `path` that sets the cookie `set_cookie`.
fn redirect_setting(base: &str, path: &str, set_cookie: &str) -> Response {
    let mut response = to(base, path).into_response();
    if let Ok(v) = HeaderValue::from_str(set_cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// `POST /sign-out`: ends the session (its CSRF token must come with it).
async fn sign_out(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some((id, token)) = console.sessions.of(&headers) else {
        return to(&console.base, "/sign-in").into_response();
    };
    if let Some(forbidden) = csrf_refusal(&form.csrf, &Some(Extension(token))) {
        return forbidden;
    }
    console.sessions.end(&id);
    redirect_setting(
        &console.base,
        "/sign-in",
        &session::set_cookie(None, &headers),
    )
}

/// What every console answer carries: nothing but this server's own scripts, styles and
/// images run (no inline script, no other origin), no framing but by the origins of
/// `frame_ancestors`, no type sniffing, no referrer to other sites.
async fn security_headers(State(console): State<Console>, mut response: Response) -> Response {
    let ancestors = &console.manager.config().frame_ancestors;
    let frame = if ancestors.is_empty() {
        "'none'".to_string()
    } else {
        ancestors.join(" ")
    };
    let csp =
        format!("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors {frame}");
    // The config's check allows only origin characters; should a value still not be a
    // header, the page is not framed at all.
    let csp = HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static(
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ));
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// `1.5 GB`: bytes in decimal units, as `df -H` shows them.
fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A moment as a page shows it: RFC 3339 for `<time datetime>`, and the UTC text shown
/// before (or without) the script that turns it into the browser's time zone.
struct When {
    iso: String,
    utc: String,
}

impl From<DateTime<Utc>> for When {
    fn from(t: DateTime<Utc>) -> When {
        When {
            iso: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            utc: t.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

//! The REST API (axum). [`router`] builds the whole app once; `main` serves it and the
//! tests drive it with `oneshot` as well as over a real socket.
//!
//! - [`backup`] — `/api/v1/backup/…` (the seed routes: create, list, delete; plus show, stats)
//! - [`restore`] — `POST /api/v1/backup/restore/{app_id}/{snapshot_id}`
//! - [`transfer`] — verify, download and import of snapshots
//! - [`policies`] — `/api/v1/policies/…`, bindings per app, retention runs, pins
//! - [`jobs`] — `/api/v1/jobs/…` (progress of long operations, SSE)
//! - [`notify`] — `POST /api/v1/notify/test`
//! - [`repositories`] — offsite repositories: list, their snapshots, copy on demand,
//!   prune, check
//! - [`error`] — the single error → HTTP mapping
//! - here: auth, `/healthz`, `/metrics`, OpenAPI + docs page

pub mod backup;
pub mod error;
pub mod files;
pub mod jobs;
pub mod notify;
pub mod policies;
pub mod repositories;
pub mod restore;
pub mod transfer;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::manager::BackupManager;
use error::ApiError;

/// The header that carries the API key. `Authorization: Bearer <key>` is accepted too,
/// for clients that cannot set custom headers (Prometheus); when both are sent, only this
/// one is checked.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The fixed part of the OpenAPI document: title, description, and schemas registered up
/// front (`ErrorBody` must be: `error::document` refers to it by name). `router` adds each
/// route's path and schemas, then the id rules (`crate::ids::document`) and the common
/// error answers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "appsnap",
        description = "Backup and restore for the data of Docker compose apps. \
        Every error is `{\"message\", \"details\"}`; send the key in `x-api-key` when one is configured."
    ),
    components(schemas(
        error::ErrorBody,
        crate::catalog::Snapshot,
        crate::model::Mount,
        crate::catalog::Origin,
        crate::jobs::JobInfo,
        crate::jobs::JobState,
        crate::manager::Stats,
        crate::manager::AppStats,
        backup::BackupCreated
    ))
)]
pub struct ApiDoc;

/// The whole HTTP app, and the OpenAPI document of exactly its routes: each route is
/// registered with `routes!`, which takes its path and method from the handler's
/// `#[utoipa::path]`, so a route cannot exist without its documentation.
///
/// Guards, outermost first: `refuse_cross_site` (host rule, cross-site and form types),
/// then `require_key`; both are route layers, so they run only for a route that matched:
/// an unknown path answers 404 even without a key. `/healthz`, `/docs` and the document at
/// `/api/v1/openapi.json` bypass both. Bodies are capped at axum's default 2 MB, except
/// policy uploads (`MAX_COMPONENT_BYTES`) and imports (streamed, `max_import_bytes`).
/// Every error answer, whoever made it, leaves through `error::json_errors`.
pub fn router(manager: Arc<BackupManager>) -> Router {
    let (api, api_doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(backup::list))
        .routes(routes!(
            backup::show,
            backup::delete,
            policies::patch_snapshot
        ))
        .routes(
            routes!(policies::show, policies::delete, policies::upload)
                .layer(DefaultBodyLimit::max(crate::policy::MAX_COMPONENT_BYTES)),
        )
        .routes(routes!(policies::list))
        .routes(routes!(policies::dry_run))
        .routes(routes!(policies::bindings, policies::bind))
        .routes(routes!(policies::run_retention))
        .routes(routes!(policies::bind_default))
        .routes(routes!(policies::schedules))
        .routes(routes!(backup::stats))
        .routes(routes!(files::list))
        .routes(routes!(files::content))
        .routes(routes!(restore::restore))
        .routes(routes!(restore::preview))
        .routes(routes!(transfer::verify))
        .routes(routes!(transfer::download))
        // Uploads stream to disk with their own limit (max_import_bytes).
        .routes(routes!(transfer::import).layer(DefaultBodyLimit::disable()))
        .routes(routes!(backup::create))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::show))
        .routes(routes!(jobs::events))
        .routes(routes!(jobs::cancel))
        .routes(routes!(metrics))
        .routes(routes!(notify::test))
        .routes(routes!(repositories::list))
        .routes(routes!(repositories::snapshots))
        .routes(routes!(repositories::copy))
        .routes(routes!(transfer::fetch))
        .routes(routes!(repositories::prune))
        .routes(routes!(repositories::check))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&manager),
            require_key,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&manager),
            refuse_cross_site,
        ))
        .with_state(Arc::clone(&manager))
        .split_for_parts();
    // Health and docs stay open: they reveal nothing about the data.
    let (open, open_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .with_state(Arc::clone(&manager))
        .split_for_parts();
    let mut doc = api_doc;
    doc.merge(open_doc);
    crate::ids::document(&mut doc);
    error::document(&mut doc);
    // The console answers HTML, its errors included: it joins after the JSON error
    // layer, under the same Host and cross-site rules as the API.
    let console = crate::console::router(Arc::clone(&manager)).route_layer(
        middleware::from_fn_with_state(Arc::clone(&manager), refuse_cross_site_forms),
    );
    // Under a `base_path`, the console's pages are below it, and `/` and `base/` lead
    // to its apps page, `base`.
    let base = manager.config().base_path.clone();
    let console = if base.is_empty() {
        console
    } else {
        let home = base.clone();
        let lead = axum::routing::get(move || async move { axum::response::Redirect::to(&home) });
        Router::new()
            .nest(&base, console)
            .route("/", lead.clone())
            .route(&format!("{base}/"), lead)
    };
    Router::new()
        .merge(open)
        .merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", doc))
        .merge(api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such route; see /docs",
            )
        })
        .layer(middleware::map_response(error::json_errors))
        .merge(console)
}

/// Without a key, "loopback only" must hold against browsers too.
///
/// - **DNS rebinding**: a page on `evil.example` whose name then resolves to 127.0.0.1
///   talks to appsnap as its own origin (`Origin` equals `Host`, `Sec-Fetch-Site` says
///   same-origin), for every method. So without a key, every request over TCP must name
///   a loopback host (`localhost`, `127.x.y.z`, `[::1]`, with any port); a Unix socket is
///   out of a browser's reach. With a key the page cannot authenticate anyway.
/// - **Cross-site requests**: a page on any site can make the user's browser send a
///   *simple* request (a form POST, a `fetch` without custom headers) to 127.0.0.1.
///   State-changing requests are refused when the browser says they come from elsewhere
///   (`Sec-Fetch-Site`, `Origin`), and when they carry one of the content types a form
///   can send — our bodies are JSON or binary, which a cross-site page cannot send
///   without a preflight that appsnap never answers.
///
/// Answers 403 `Host refused` (the host rule, every method), 403 `Cross-site request
/// refused`, or 415 `Unsupported content type`; the last two only for methods other than
/// GET, HEAD and OPTIONS. A request with neither `Sec-Fetch-Site` nor `Origin` (curl,
/// scripts) passes the two browser checks: only browsers send those headers.
async fn refuse_cross_site(
    State(manager): State<Arc<BackupManager>>,
    request: Request,
    next: Next,
) -> Response {
    match cross_site(&manager, &request, false) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// [`refuse_cross_site`] for the console's pages, whose forms post the form content
/// types the API refuses: an unsafe request must instead show that the browser sent it
/// from this service's own page (`Sec-Fetch-Site: same-origin`, or an `Origin` naming
/// this service; a browser sends one or both with every form), and the console checks
/// its CSRF token besides.
pub(crate) async fn refuse_cross_site_forms(
    State(manager): State<Arc<BackupManager>>,
    request: Request,
    next: Next,
) -> Response {
    match cross_site(&manager, &request, true) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// The checks of [`refuse_cross_site`]; `forms`: the console's variant. `None`: passes.
fn cross_site(manager: &BackupManager, request: &Request, forms: bool) -> Option<Response> {
    use axum::http::{Method, header};
    // The name the request is addressed to: HTTP/2 carries it as the URI's authority,
    // HTTP/1.1 as `Host`.
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            let h = request.headers().get(header::HOST)?;
            Some(String::from_utf8_lossy(h.as_bytes()).into_owned())
        });
    let config = manager.config();
    if config.api_key.is_none()
        && config.listen_unix.is_none()
        && let Some(host) = &host
        && !is_loopback_host(host)
    {
        return Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Host refused",
                format!(
                    "without an API key appsnap answers only requests addressed to a loopback \
                     name (localhost, 127.0.0.1, [::1]), not to `{host}`: a web page could \
                     point that name at this machine (DNS rebinding). Set APPSNAP_API_KEY to \
                     reach it under another name"
                ),
            )
            .into_response(),
        );
    }
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return None;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let refuse = |details: String| {
        Some(
            ApiError::new(StatusCode::FORBIDDEN, "Cross-site request refused", details)
                .into_response(),
        )
    };
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return refuse(format!("the browser says this request is {site}"));
    }
    if let Some(origin) = text("origin") {
        let host = host.as_deref().unwrap_or_default();
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or(origin);
        if authority != host {
            return refuse(format!("origin {origin} is not this service ({host})"));
        }
    }
    if forms {
        if text("sec-fetch-site").is_none() && text("origin").is_none() {
            return refuse(
                "a console form is sent by a browser, which says where from \
                 (Origin or Sec-Fetch-Site); this request does not"
                    .into(),
            );
        }
        return None;
    }
    let form_type = text(header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        let ct = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        matches!(
            ct.as_str(),
            "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
        )
    });
    if form_type {
        return Some(
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported content type",
                "send JSON (application/json) or binary (application/gzip, \
                 application/wasm, application/octet-stream); form content types are refused",
            )
            .into_response(),
        );
    }
    None
}

/// Whether `given` is the API key `expected`, compared in constant time (of their
/// sha256, so that not even the length leaks): the API's header and the console's
/// sign-in form both ask here.
pub(crate) fn key_matches(given: &[u8], expected: &str) -> bool {
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

/// Whether a `Host` value (`name[:port]`) names this machine's loopback interface.
/// Only `localhost` (any case) and literal loopback addresses count: a name that merely
/// starts like one (`localhost.evil.example`, `127.0.0.1.nip.io`) could resolve anywhere.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `x-api-key` must match when a key is configured. Both sides are hashed first, so the
/// constant-time compare does not leak the key's length either.
///
/// Without a configured key every request passes (`refuse_cross_site` then holds the
/// service to loopback names). A refusal is 401 `Unauthorized`, whose `details` tells a
/// missing key from a wrong one.
async fn require_key(
    State(manager): State<Arc<BackupManager>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &manager.config().api_key {
        // `x-api-key` (Websoft9's header), or `Authorization: Bearer` (what Prometheus and
        // most HTTP clients can send).
        let headers = request.headers();
        let given = headers
            .get(API_KEY_HEADER)
            .map(|v| v.as_bytes())
            .or_else(|| {
                headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            })
            .unwrap_or_default();
        if !key_matches(given, expected) {
            let details = if given.is_empty() {
                "the x-api-key header (or Authorization: Bearer) is missing"
            } else {
                "the x-api-key header is wrong"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", details)
                .into_response();
        }
    }
    next.run(request).await
}

/// Liveness, plus whether Docker answers.
///
/// Open: no key and no host check, so container and load-balancer health checks can call
/// it. 200 `{"status":"ok","docker":"ok"}`; 503 `Docker engine unreachable`, with the
/// engine's error in `details`, when the Docker ping fails. The backup root is not
/// checked here.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "Service and Docker are up"), (status = 503, body = error::ErrorBody)))]
pub async fn healthz(State(manager): State<Arc<BackupManager>>) -> Response {
    match manager.docker().ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok", "docker": "ok"})).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Docker engine unreachable",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Prometheus metrics (text format). Behind the API key when one is set: Prometheus sends
/// it as `Authorization: Bearer …` (`authorization: {credentials_file: …}` in its scrape
/// config).
///
/// Gauges (snapshots and bytes per app, last success, free space) are computed from the
/// catalog and the filesystem at each scrape; an app whose snapshots are all deleted
/// stays listed with 0 until the service restarts.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(manager): State<Arc<BackupManager>>) -> Response {
    let text = tokio::task::spawn_blocking(move || manager.metrics_text())
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves the API on `manager.config().listen` (or its Unix socket) until `shutdown`
/// resolves, then waits for running backups to finish (so no app is left stopped).
///
/// Before serving it resumes the offsite copies a stop left unfinished and starts the
/// scheduler. A Unix socket left by an earlier run is replaced and the new one is made
/// with mode 0660 (owner and group); any other file at that path is an error. When
/// `shutdown` resolves, running work is cancelled at its next consistent point, the
/// listener closes, and the scheduler stops before the wait for app locks. Restores'
/// cleanups are not waited for: the next start finishes them.
pub async fn serve(
    manager: Arc<BackupManager>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = manager.config();
    let auth = if config.api_key.is_some() {
        "on"
    } else {
        "off: loopback only"
    };
    // Offsite copies a stop interrupted (or never started) go on.
    manager.resume_copies();
    let scheduler = crate::scheduler::spawn(
        Arc::clone(&manager),
        std::time::Duration::from_secs(config.scheduler_tick_secs),
    );
    let app = router(Arc::clone(&manager));
    let root = config.backup_root.display();
    // When the signal comes, long work is told to stop (at a consistent point) at once,
    // so the requests waiting for it end and the service exits within seconds.
    let stopping = Arc::clone(&manager);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: stopping the work in progress");
        stopping.cancel_all();
    };
    if let Some(path) = &config.listen_unix {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        // A socket left by an earlier run is replaced; any other file is not ours.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path)?;
        }
        // Made with mode 0660 at once (no window in which any local user may connect):
        // the umask is the only way to give bind() a mode, and nothing else creates files
        // while the service starts.
        use nix::sys::stat::{Mode, umask};
        let previous = umask(Mode::from_bits_truncate(0o117));
        let bound = tokio::net::UnixListener::bind(path);
        umask(previous);
        let listener = bound.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", path.display()),
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        tracing::info!(
            "appsnap listening on unix:{} (backups in {root}, auth {auth})",
            path.display()
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
    } else {
        let listen = config.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        tracing::info!("appsnap listening on http://{addr} (backups in {root}, auth {auth})");
        tracing::info!("web console: http://{addr}{}/", config.base_path);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
    }
    scheduler.abort();
    tracing::info!("shutting down: waiting for running backups to finish");
    manager.idle().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for yes in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(yes), "{yes}");
        }
        for no in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "10.0.0.1:8080",
            "[::2]:8080",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }
}

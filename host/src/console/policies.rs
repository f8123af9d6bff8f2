//! Policies in the console (`/policies`): the built-in and uploaded components with their
//! failures, an upload (its refusal shown with the policy engine's reasons), the bindings
//! (the default's and each app's, per repository too), every app's schedule in words with
//! its last and next run, and a dry run (`POST /policies/dry-run`): what a policy would
//! decide for an app — "would delete these, because …", a quota's answer, or a schedule's
//! next five runs — changing nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Extension, Form, Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::session::Csrf;
use super::{Console, Frame, LangParam, When};
use crate::manager::ManagerError;
use crate::policy::{Binding, Bindings, PolicyInfo, ScheduleState};

#[derive(Template)]
#[template(path = "console/policies.html")]
struct PoliciesPage {
    f: Frame,
    policies: Vec<PolicyInfo>,
    /// `default` first, then each app with its own bindings.
    bindings: Vec<(String, Bindings)>,
    schedules: BTreeMap<String, ScheduleState>,
    apps: Vec<String>,
    /// The configured repositories, each a place a retention or quota can be bound for.
    repositories: Vec<String>,
    /// The dry run asked for: its form's values, and its answer or why there is none.
    dry: Option<Dry>,
    /// An upload's outcome: `Ok(name)` or the refusal.
    uploaded: Option<Result<String, (String, String)>>,
    /// A binding's outcome: `Ok(default or app)` or the refusal.
    bound: Option<Result<String, (String, String)>>,
}

struct Dry {
    policy: String,
    app: String,
    config: String,
    answer: Result<serde_json::Value, (String, String)>,
}

impl PoliciesPage {
    fn binding(&self, b: &Option<Binding>) -> String {
        match b {
            None => "–".into(),
            Some(b) if b.config.as_object().is_some_and(|o| o.is_empty()) => b.policy.clone(),
            Some(b) => format!("{} {}", b.policy, b.config),
        }
    }

    fn words(&self, app: &str) -> String {
        let schedule = self
            .bindings
            .iter()
            .find(|(a, _)| a == app)
            .or_else(|| self.bindings.first())
            .and_then(|(_, b)| b.schedule.as_ref());
        match schedule {
            Some(b) => schedule_in_words(&self.f, b),
            None => self.f.t.on_request.into(),
        }
    }

    /// The dry run's schedule in words: its settings, or the app's bound ones.
    fn dry_words(&self, d: &Dry) -> String {
        let config = serde_json::from_str(&d.config).ok().or_else(|| {
            self.bindings
                .iter()
                .find(|(a, _)| *a == d.app)
                .or_else(|| self.bindings.first())
                .and_then(|(_, b)| b.schedule.as_ref())
                .filter(|b| b.policy == d.policy)
                .map(|b| b.config.clone())
        });
        let binding = Binding {
            policy: d.policy.clone(),
            config: config.unwrap_or_default(),
        };
        schedule_in_words(&self.f, &binding)
    }

    fn when(&self, t: &Option<DateTime<Utc>>) -> Option<When> {
        t.map(When::from)
    }

    /// A schedule's dry run: its next runs.
    fn runs(&self, answer: &serde_json::Value) -> Vec<When> {
        answer["next_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| serde_json::from_value::<DateTime<Utc>>(t.clone()).ok())
            .map(When::from)
            .collect()
    }

    fn decisions(&self, answer: &serde_json::Value, list: &str) -> Vec<(String, String)> {
        answer[list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                (text("snapshot_id"), text("reason"))
            })
            .collect()
    }
}

/// A schedule as a person says it: the built-in's `daily`, `weekly` and `cron` settings in
/// words (with their zone); any other policy by its name and settings.
fn schedule_in_words(f: &Frame, b: &Binding) -> String {
    let c = &b.config;
    let tz = c["tz"].as_str().unwrap_or("UTC");
    let t = f.t;
    if b.policy != "daily-weekly-cron" {
        return format!("{} {}", b.policy, c);
    }
    if let Some(at) = c["daily"].as_str() {
        return format!("{} {at} ({tz})", t.every_day_at);
    }
    if let Some(w) = c["weekly"].as_object() {
        let day = w.get("day").and_then(|d| d.as_str()).unwrap_or("?");
        let at = w.get("at").and_then(|d| d.as_str()).unwrap_or("?");
        let days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let name = days
            .iter()
            .position(|d| day.to_ascii_lowercase().starts_with(d))
            .map_or(day, |i| t.weekdays[i]);
        return format!("{} {name} {at} ({tz})", t.every_week_on);
    }
    if let Some(cron) = c["cron"].as_str() {
        return format!("cron `{cron}` ({tz})");
    }
    format!("{} {}", b.policy, c)
}

async fn render(
    console: &Console,
    f: Frame,
    dry: Option<Dry>,
    uploaded: Option<Result<String, (String, String)>>,
) -> PoliciesPage {
    let manager = &console.manager;
    let registry = Arc::clone(&manager.policies);
    let policies = tokio::task::spawn_blocking(move || registry.list())
        .await
        .unwrap_or_default();
    let mut apps: Vec<String> = manager.apps_in_docker().await.unwrap_or_default();
    for s in manager.list(None).unwrap_or_default() {
        apps.push(s.app_id);
    }
    apps.sort();
    apps.dedup();
    let mut bindings = vec![("default".to_string(), manager.policies.bindings(None))];
    let default = bindings[0].1.clone();
    for app in &apps {
        let own = manager.policies.bindings(Some(app));
        if !same(&own, &default) {
            bindings.push((app.clone(), own));
        }
    }
    PoliciesPage {
        f,
        policies,
        bindings,
        schedules: manager.schedules(),
        apps,
        repositories: (manager.config().repositories.iter())
            .map(|r| r.name.clone())
            .collect(),
        dry,
        uploaded,
        bound: None,
    }
}

/// Whether two sets of bindings say the same (an app without its own shows the default's).
fn same(a: &Bindings, b: &Bindings) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn respond(page: PoliciesPage, status: StatusCode, chosen: bool) -> Response {
    page.f.respond(status, page.render(), chosen)
}

/// `GET /policies`.
pub(super) async fn page(
    State(console): State<Console>,
    Query(param): Query<LangParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::new(&console.base, &param, &headers, "/policies".into()).signed_in(csrf);
    let page = render(&console, f, None, None).await;
    respond(page, StatusCode::OK, param.lang.is_some())
}

#[derive(Deserialize)]
pub(super) struct DryForm {
    csrf: String,
    policy: String,
    app: String,
    /// JSON settings; empty: the app's bound ones.
    #[serde(default)]
    config: String,
}

/// `POST /policies/dry-run`: the page with the policy's answer for the app.
pub(super) async fn dry_run(
    State(console): State<Console>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<DryForm>,
) -> Response {
    if let Some(forbidden) = super::csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&console.base, &headers, "/policies").signed_in(csrf);
    let config = form.config.trim();
    let answer = match config {
        "" => Ok(None),
        text => serde_json::from_str::<serde_json::Value>(text)
            .map(Some)
            .map_err(|e| (f.t.config_not_json.to_string(), e.to_string())),
    };
    let answer = match answer {
        Ok(config) => console
            .manager
            .dry_run(&form.policy, &form.app, config)
            .await
            .map_err(|e| explain(&e)),
        Err(e) => Err(e),
    };
    let status = match &answer {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let dry = Dry {
        policy: form.policy,
        app: form.app,
        config: config.to_string(),
        answer,
    };
    respond(render(&console, f, Some(dry), None).await, status, false)
}

#[derive(Deserialize)]
pub(super) struct BindForm {
    csrf: String,
    /// `default`, or an app.
    target: String,
    /// Empty: the local snapshots' slots; a repository's name: that repository's slots
    /// (the app's copies there).
    #[serde(default)]
    repository: String,
    /// `retention`, `quota` or `schedule` (not for a repository).
    slot: String,
    /// Empty: the slot is emptied (an app then falls back to the default's).
    #[serde(default)]
    policy: String,
    #[serde(default)]
    config: String,
}

/// `POST /policies/bind`: sets one slot of the default's or an app's bindings, for the
/// local snapshots or for one repository (the other slots are kept), checked by the
/// policy as the API's binding is; the page with the bindings, or why they were refused
/// (nothing changed then).
pub(super) async fn bind(
    State(console): State<Console>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<BindForm>,
) -> Response {
    if let Some(forbidden) = super::csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&console.base, &headers, "/policies").signed_in(csrf);
    let app = (form.target != "default").then_some(form.target.clone());
    let outcome = async {
        let config = match form.config.trim() {
            "" => serde_json::json!({}),
            text => serde_json::from_str(text)
                .map_err(|e| (f.t.config_not_json.to_string(), e.to_string()))?,
        };
        let binding = (!form.policy.is_empty()).then(|| Binding {
            policy: form.policy.clone(),
            config,
        });
        let mut bindings = console.manager.policies.bindings(app.as_deref());
        let invalid = |what: &str| Err(("Invalid slot".to_string(), what.to_string()));
        if form.repository.is_empty() {
            match form.slot.as_str() {
                "retention" => bindings.retention = binding,
                "quota" => bindings.quota = binding,
                "schedule" => bindings.schedule = binding,
                other => return invalid(&format!("no slot `{other}`")),
            }
        } else {
            let repo = bindings
                .repositories
                .entry(form.repository.clone())
                .or_default();
            match form.slot.as_str() {
                "retention" => repo.retention = binding,
                "quota" => repo.quota = binding,
                "schedule" => return invalid(f.t.bind_schedule_local_only),
                other => return invalid(&format!("no slot `{other}`")),
            }
            if repo.retention.is_none() && repo.quota.is_none() {
                bindings.repositories.remove(&form.repository);
            }
        }
        (console.manager.bind(app.as_deref(), bindings).await).map_err(|e| explain(&e))
    }
    .await;
    let (status, result) = match outcome {
        Ok(()) => (StatusCode::OK, Ok(form.target)),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, Err(e)),
    };
    let mut page = render(&console, f, None, None).await;
    page.bound = Some(result);
    respond(page, status, false)
}

/// The API's message and the cause, for the page.
fn explain(e: &ManagerError) -> (String, String) {
    (crate::api::error::classify(e).1.to_string(), e.to_string())
}

/// `POST /policies/upload` (multipart: `csrf`, `name`, `component`): stores a new policy,
/// or a new version of one, and shows the page with the outcome.
pub(super) async fn upload(
    State(console): State<Console>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let (mut token, mut name, mut bytes) = (String::new(), String::new(), Vec::new());
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let which = field.name().unwrap_or_default().to_string();
                let Ok(data) = field.bytes().await else {
                    return (StatusCode::BAD_REQUEST, "the upload was cut off").into_response();
                };
                match which.as_str() {
                    "csrf" => token = String::from_utf8_lossy(&data).into_owned(),
                    "name" => name = String::from_utf8_lossy(&data).trim().to_string(),
                    "component" => bytes = data.to_vec(),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return (e.status(), e.body_text()).into_response(),
        }
    }
    if let Some(forbidden) = super::csrf_refusal(&token, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&console.base, &headers, "/policies").signed_in(csrf);
    let registry = Arc::clone(&console.manager.policies);
    let stored = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || registry.upload(&name, &bytes)).await
    };
    let (status, outcome) = match stored {
        Ok(Ok(info)) => (StatusCode::CREATED, Ok(info.name)),
        Ok(Err(e)) => {
            let e = ManagerError::from(e);
            (crate::api::error::classify(&e).0, Err(explain(&e)))
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Err(("Policy failed".into(), e.to_string())),
        ),
    };
    respond(
        render(&console, f, None, Some(outcome)).await,
        status,
        false,
    )
}

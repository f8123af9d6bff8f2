//! Alerts: what went wrong — and, once, that it is right again — sent where the operator
//! looks: a webhook (optionally signed), ntfy, Gotify, Slack, Discord, Telegram or mail.
//!
//! Sending never blocks or fails the operation that reports: a notice goes into each
//! wanting target's bounded queue (a full queue drops it, counted), and one task per
//! target delivers, retrying with backoff. What could not be delivered is logged and
//! counted in `appsnap_notification_failures_total{target}`. Secrets live in files named by
//! the config and never appear in logs or API answers.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Delivery attempts per notice, and the wait before the first retry (doubled each time).
const ATTEMPTS: u32 = 4;
/// Wait before the first retry of a notice: 1 s, then 2 s, then 4 s.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Notices waiting per target; beyond it new ones are dropped (and counted).
const QUEUE: usize = 64;
/// One delivery attempt's limit: the whole HTTP request, or the SMTP transport's timeout.
const TIMEOUT: Duration = Duration::from_secs(15);

/// One `[[notify]]` target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// An id, unique among targets: logs, the `target` label of the failure counter, and
    /// `POST /api/v1/notify/test?target=` name the target by it.
    pub name: String,
    /// The service, which decides which of the fields below are needed (see `check`).
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Webhook, ntfy topic, Gotify server, Slack/Discord incoming webhook; for Telegram the
    /// Bot API base (default `https://api.telegram.org`).
    #[serde(default)]
    pub url: Option<String>,
    /// Default: every event. A recovery goes wherever its failure goes.
    #[serde(default)]
    pub events: Option<Vec<Event>>,
    /// Events of a lower level are not sent here; a test always is. Default: `info`.
    #[serde(default)]
    pub min_level: Level,
    /// Webhook: HMAC-SHA256 key. Each POST carries `X-Appsnap-Signature: t=<unix
    /// seconds>,v1=<hex HMAC of "<t>.<body>">`: a receiver checks the MAC and that `t` is
    /// recent, so a captured alert cannot be replayed later.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// ntfy access token, Gotify application token, Telegram bot token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Telegram chat.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// Email: the SMTP server.
    #[serde(default)]
    pub smtp_host: Option<String>,
    /// Default: the port of `tls` (587 STARTTLS, 465 TLS, 25 plain).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    /// SMTP login; without it the mail is sent unauthenticated.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP password (the file's first line); with `username` but no file, the password
    /// is empty.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Sender address (`Name <a@b>` or `a@b`); checked when a mail is built, not at start.
    #[serde(default)]
    pub from: Option<String>,
    /// Recipients; an address that does not parse fails that delivery.
    #[serde(default)]
    pub to: Vec<String>,
}

/// The service a target is, and so the shape of what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = NotifyKind)]
pub enum Kind {
    /// POST of the `Notice` as JSON, signed when `secret_file` is set.
    Webhook,
    /// The text as body; title, priority and event tag in headers; optional bearer token.
    Ntfy,
    /// POST to `<url>/message` with the application token in `X-Gotify-Key`.
    Gotify,
    /// Incoming webhook, `text` in Slack's markdown.
    Slack,
    /// Incoming webhook, `content` cut to 2000 characters (Discord refuses longer).
    Discord,
    /// Bot API `sendMessage` to `chat_id`; the token is part of the URL.
    Telegram,
    /// Plain-text mail over SMTP.
    Email,
}

/// How an email target talks to its SMTP server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587).
    #[default]
    Starttls,
    /// TLS from the first byte (465).
    Tls,
    /// Plain text: only for a relay on the same host (port 25). `check` refuses it with
    /// credentials unless `smtp_host` is a loopback name or address.
    None,
}

/// How grave an event is; ordered `Info < Warning < Error`, which `min_level` filters
/// by. ntfy and Gotify map it to their message priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Recoveries and tests.
    #[default]
    Info,
    /// An app gone stale.
    Warning,
    /// Something failed.
    Error,
}

/// What a notice is about; `events` in a target selects by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = NotifyEvent)]
pub enum Event {
    /// A backup failed (every failure, no rate limit).
    BackupFailed,
    /// A scheduled backup could not even start (the app is gone, Docker refused…).
    BackupMissed,
    /// The first successful backup of an app after failures.
    BackupRecovered,
    /// A restore failed after touching the app and was rolled back.
    RestoreRolledBack,
    /// A restore failed and so did its rollback: the app is left stopped.
    RollbackIncomplete,
    /// A policy call trapped, timed out or answered nonsense (at most hourly per policy
    /// and app).
    PolicyFailed,
    /// An offsite copy gave up after its retries (the local snapshot is fine).
    OffsiteFailed,
    /// No successful backup of an app for `stale_after_hours`.
    Stale,
    /// A stale app has a recent successful backup again.
    StaleRecovered,
    /// `POST /api/v1/notify/test`: goes to every chosen target whatever its filters.
    Test,
}

impl Event {
    /// Failures are errors, staleness a warning, recoveries and tests information.
    pub fn level(self) -> Level {
        match self {
            Event::BackupFailed
            | Event::BackupMissed
            | Event::RestoreRolledBack
            | Event::RollbackIncomplete
            | Event::PolicyFailed
            | Event::OffsiteFailed => Level::Error,
            Event::Stale => Level::Warning,
            Event::BackupRecovered | Event::StaleRecovered | Event::Test => Level::Info,
        }
    }

    /// The failure a recovery ends.
    fn recovers(self) -> Option<Event> {
        match self {
            Event::BackupRecovered => Some(Event::BackupFailed),
            Event::StaleRecovered => Some(Event::Stale),
            _ => None,
        }
    }
}

impl Target {
    /// What the config must say for this kind of target to work. Run at start-up: it also
    /// reads each secret file, so a missing or empty one is a config error then, not a
    /// lost alert later. Errors name fields and files, never a secret.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.name;
        crate::ids::validate("notify target name", name).map_err(|e| e.to_string())?;
        let need = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "[[notify]] `{name}` ({:?}) needs `{what}`",
                    self.kind
                ))
            }
        };
        match self.kind {
            Kind::Webhook | Kind::Ntfy | Kind::Gotify | Kind::Slack | Kind::Discord => {
                need("url", self.url.as_deref().is_some_and(is_http))?;
            }
            Kind::Telegram => {
                need("token_file", self.token_file.is_some())?;
                need("chat_id", self.chat_id.is_some())?;
            }
            Kind::Email => {
                need("smtp_host", self.smtp_host.is_some())?;
                need("from", self.from.is_some())?;
                need("to", !self.to.is_empty())?;
                let host = self.smtp_host.as_deref().unwrap_or_default();
                if self.tls == SmtpTls::None
                    && (self.username.is_some() || self.password_file.is_some())
                    && !is_loopback_name(host)
                {
                    return Err(format!(
                        "[[notify]] `{name}`: tls = \"none\" would send the SMTP password \
                         to {host} in clear text; use tls = \"starttls\" or \"tls\" (or a \
                         relay on this machine)"
                    ));
                }
            }
        }
        for file in [&self.secret_file, &self.token_file, &self.password_file]
            .into_iter()
            .flatten()
        {
            read_secret(file).map_err(|e| format!("[[notify]] `{name}`: {e}"))?;
        }
        Ok(())
    }

    /// A test always; otherwise the level must reach `min_level`, and `events` (when set)
    /// must list the event or the failure it recovers from.
    fn wants(&self, notice: &Notice) -> bool {
        if notice.event == Event::Test {
            return true;
        }
        notice.event.level() >= self.min_level
            && self.events.as_ref().is_none_or(|events| {
                events.contains(&notice.event)
                    || notice.event.recovers().is_some_and(|f| events.contains(&f))
            })
    }
}

/// `localhost` or a loopback address: mail to it never leaves the machine.
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Only `http://` and `https://` URLs are sent to.
fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// A secret file's first line, trimmed; an empty one is an error. Read at each use, so a
/// rotated secret needs no restart. Errors name the file, never its content.
fn read_secret(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or_default().trim().to_string();
    if first.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(first)
}

/// What happened, as every target gets it (each in its own shape).
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub event: Event,
    /// Set from `event.level()`; carried for receivers of the webhook's JSON.
    pub level: Level,
    /// The app concerned; `None` for a test.
    pub app: Option<String>,
    /// The snapshot concerned, when there is one (a recovery, a restore, a copy).
    pub snapshot: Option<String>,
    /// One line: the title of a chat message, the subject of a mail.
    pub message: String,
    /// The rest (may be empty). It goes to third parties: a failed backup puts its alert
    /// text here, which leaves out a hook's command and output.
    pub details: String,
    /// When it was made, not when it was delivered.
    pub time: DateTime<Utc>,
}

impl Notice {
    /// A notice made now, at the event's level, without a snapshot.
    pub fn new(event: Event, app: Option<&str>, message: String, details: String) -> Notice {
        Notice {
            event,
            level: event.level(),
            app: app.map(str::to_string),
            snapshot: None,
            message,
            details,
            time: Utc::now(),
        }
    }

    /// The message, and the details on the next line when there are any.
    fn text(&self) -> String {
        if self.details.is_empty() {
            self.message.clone()
        } else {
            format!("{}\n{}", self.message, self.details)
        }
    }
}

/// The answer of `POST /api/v1/notify/test` for one target.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The target's `name`.
    pub target: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The target accepted it (a 2xx answer, or the SMTP server took the mail).
    pub ok: bool,
    /// Why it failed (what the target or the network said); never a secret.
    pub error: Option<String>,
}

/// Sends alerts. Holds the only sender of each target's queue: once it is dropped, each
/// delivery task finishes what is queued and ends.
pub struct Notifier {
    /// Each target with the sender of its bounded queue.
    targets: Vec<(Target, mpsc::Sender<Notice>)>,
    /// One client for every delivery task and for `test`.
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Apps whose last backup failed (a success then is announced as a recovery, once).
    failing: Mutex<HashSet<String>>,
    /// Apps reported stale. Like `failing`, in memory only: after a restart an app still
    /// stale is announced again, and one that recovered meanwhile is not.
    stale: Mutex<HashSet<String>>,
    /// When each (policy, app) failure was last announced: a broken schedule policy fails
    /// at every scheduler tick, and one alert an hour says it well enough.
    policy_failures: Mutex<std::collections::HashMap<(String, String), DateTime<Utc>>>,
}

impl Notifier {
    /// Starts one delivery task per target (on the current tokio runtime; it panics
    /// outside one). Targets are taken as they are: `Target::check` is the config's job.
    pub fn start(targets: &[Target], metrics: Arc<Metrics>) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("appsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client");
        let targets = targets
            .iter()
            .map(|t| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver_all(
                    t.clone(),
                    rx,
                    http.clone(),
                    Arc::clone(&metrics),
                ));
                (t.clone(), tx)
            })
            .collect();
        Notifier {
            targets,
            http,
            metrics,
            failing: Mutex::default(),
            stale: Mutex::default(),
            policy_failures: Mutex::default(),
        }
    }

    /// Queues `notice` for every target that wants it; never waits. A target whose queue
    /// is full loses this notice (logged, and counted as a failure of that target).
    pub fn send(&self, notice: Notice) {
        for (target, tx) in &self.targets {
            if !target.wants(&notice) {
                continue;
            }
            if tx.try_send(notice.clone()).is_err() {
                tracing::warn!(target = %target.name, event = ?notice.event, "notification dropped: the target's queue is full");
                self.metrics.notification_failed(&target.name);
            }
        }
    }

    /// A backup ended: a failure is announced, and the first success after failures.
    /// `outcome`: the new snapshot's id, or the failure as an alert may tell it.
    pub fn backup_ended(&self, app: &str, outcome: Result<&str, String>) {
        let mut failing = self.failing.lock().expect("failing");
        match outcome {
            Err(details) => {
                failing.insert(app.to_string());
                drop(failing);
                self.send(Notice::new(
                    Event::BackupFailed,
                    Some(app),
                    format!("Backup of {app} failed"),
                    details,
                ));
            }
            Ok(snapshot) => {
                if failing.remove(app) {
                    drop(failing);
                    let mut notice = Notice::new(
                        Event::BackupRecovered,
                        Some(app),
                        format!("Backup of {app} works again"),
                        String::new(),
                    );
                    notice.snapshot = Some(snapshot.to_string());
                    self.send(notice);
                }
            }
        }
    }

    /// A policy call failed: announced at most once an hour per policy and app.
    pub fn policy_failed(&self, policy: &str, app: &str, message: String, details: String) {
        let key = (policy.to_string(), app.to_string());
        let mut last = self.policy_failures.lock().expect("policy failures");
        if hourly(&mut last, key, Utc::now()) {
            drop(last);
            self.send(Notice::new(
                Event::PolicyFailed,
                Some(app),
                message,
                details,
            ));
        }
    }

    /// Staleness at `now`: each app (with its last successful backup and threshold in
    /// hours) that became stale is announced once, and once more when it is fresh again.
    pub fn staleness(&self, now: DateTime<Utc>, apps: &[(String, DateTime<Utc>, u64)]) {
        let (became, recovered) = {
            let mut stale = self.stale.lock().expect("stale");
            stale_transitions(&mut stale, now, apps)
        };
        for (app, last) in became {
            self.send(Notice::new(
                Event::Stale,
                Some(&app),
                format!("No successful backup of {app} since {}", last.to_rfc3339()),
                format!("{} hours ago", (now - last).num_hours()),
            ));
        }
        for app in recovered {
            self.send(Notice::new(
                Event::StaleRecovered,
                Some(&app),
                format!("{app} has a recent backup again"),
                String::new(),
            ));
        }
    }

    /// Sends a test message to one target (or all) now, once each, and says how it went.
    /// `None` if there is no target of that name. Past the queues and filters: one
    /// attempt, no retry, targets one after the other while the caller waits.
    pub async fn test(&self, name: Option<&str>) -> Option<Vec<Delivery>> {
        let chosen: Vec<&Target> = self
            .targets
            .iter()
            .map(|(t, _)| t)
            .filter(|t| name.is_none_or(|n| t.name == n))
            .collect();
        if name.is_some() && chosen.is_empty() {
            return None;
        }
        let notice = Notice::new(
            Event::Test,
            None,
            "appsnap test notification".into(),
            "If you read this, appsnap's alerts reach you here.".into(),
        );
        let mut answers = Vec::new();
        for target in chosen {
            let result = deliver(&self.http, target, &notice).await;
            answers.push(Delivery {
                target: target.name.clone(),
                kind: target.kind,
                ok: result.is_ok(),
                error: result.err(),
            });
        }
        Some(answers)
    }
}

/// True (and noted) when `key` was not announced in the hour before `now`. The hour runs
/// from the last announcement, so a failure that persists is announced once an hour.
fn hourly<K: std::hash::Hash + Eq>(
    last: &mut std::collections::HashMap<K, DateTime<Utc>>,
    key: K,
    now: DateTime<Utc>,
) -> bool {
    if last
        .get(&key)
        .is_some_and(|t| now - *t < chrono::Duration::hours(1))
    {
        return false;
    }
    last.insert(key, now);
    true
}

/// Which apps became stale and which are fresh again at `now`; `stale` is updated. An app
/// is stale once its last success is older than its threshold (0: never stale).
/// `apps`: (app, last successful backup, threshold in hours). Returns the apps that became
/// stale, with their last success, and those that are fresh again.
pub fn stale_transitions(
    stale: &mut HashSet<String>,
    now: DateTime<Utc>,
    apps: &[(String, DateTime<Utc>, u64)],
) -> (Vec<(String, DateTime<Utc>)>, Vec<String>) {
    let (mut became, mut recovered) = (Vec::new(), Vec::new());
    for (app, last, hours) in apps {
        let is_stale = *hours > 0 && now - *last > chrono::Duration::hours(*hours as i64);
        if is_stale && stale.insert(app.clone()) {
            became.push((app.clone(), *last));
        } else if !is_stale && stale.remove(app) {
            recovered.push(app.clone());
        }
    }
    (became, recovered)
}

/// One target's delivery task: each notice in turn, retried with backoff. A notice being
/// retried holds up those queued behind it, in order. Ends when the queue is closed
/// (the `Notifier` dropped) and empty.
async fn deliver_all(
    target: Target,
    mut rx: mpsc::Receiver<Notice>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
) {
    while let Some(notice) = rx.recv().await {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            match deliver(&http, &target, &notice).await {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(target = %target.name, attempt, "notification not delivered, retrying in {wait:?}: {e}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::error!(target = %target.name, event = ?notice.event, "notification given up after {ATTEMPTS} attempts: {e}");
                    metrics.notification_failed(&target.name);
                }
            }
        }
    }
}

/// One attempt to deliver `notice` to `target`, in that target's shape. Any 2xx answer is
/// success. Secrets are read from their files here, at each attempt. The error says what
/// failed (at most 300 characters of the target's answer) and never holds a secret.
async fn deliver(http: &reqwest::Client, target: &Target, notice: &Notice) -> Result<(), String> {
    let secret = |file: &Option<PathBuf>| file.as_ref().map(read_secret).transpose();
    let url = target.url.clone().unwrap_or_default();
    let title = format!("appsnap: {}", notice.message);
    let request = match target.kind {
        Kind::Email => return send_mail(target, notice).await,
        Kind::Webhook => {
            let body = serde_json::to_vec(notice).expect("notice serializes");
            let mut req = http.post(&url).header("content-type", "application/json");
            if let Some(key) = secret(&target.secret_file)? {
                let t = chrono::Utc::now().timestamp();
                req = req.header("x-appsnap-signature", signature(&key, t, &body));
            }
            req.body(body)
        }
        Kind::Ntfy => {
            let priority = match notice.level {
                Level::Error => "high",
                Level::Warning => "default",
                Level::Info => "low",
            };
            let mut req = http
                .post(&url)
                .header("title", title)
                .header("priority", priority)
                .header("tags", format!("{:?}", notice.event).to_lowercase())
                .body(notice.text());
            if let Some(token) = secret(&target.token_file)? {
                req = req.bearer_auth(token);
            }
            req
        }
        Kind::Gotify => {
            let token = secret(&target.token_file)?.unwrap_or_default();
            let priority = match notice.level {
                Level::Error => 8,
                Level::Warning => 5,
                Level::Info => 2,
            };
            http.post(format!("{}/message", url.trim_end_matches('/')))
                .header("x-gotify-key", token)
                .json(&serde_json::json!({"title": title, "message": notice.details, "priority": priority}))
        }
        Kind::Slack => http
            .post(&url)
            .json(&serde_json::json!({"text": format!("*{title}*\n{}", notice.details)})),
        Kind::Discord => {
            let text: String = format!("**{title}**\n{}", notice.details)
                .chars()
                .take(2000)
                .collect();
            http.post(&url).json(&serde_json::json!({"content": text}))
        }
        Kind::Telegram => {
            let token = secret(&target.token_file)?.unwrap_or_default();
            let base = target.url.as_deref().unwrap_or("https://api.telegram.org");
            http.post(format!("{}/bot{token}/sendMessage", base.trim_end_matches('/')))
                .json(&serde_json::json!({"chat_id": target.chat_id, "text": format!("{title}\n{}", notice.details)}))
        }
    };
    let response = request
        .send()
        .await
        // reqwest's message names the URL, which for Telegram holds the token.
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let body: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(format!("the target answered {status}: {body}"))
    }
}

/// The webhook's `X-Appsnap-Signature` for `body` sent at unix time `t`: `t=<t>,v1=<hex
/// HMAC-SHA256 under key of "<t>.<body>">` (the time is inside the MAC, so it cannot be
/// changed to replay an old alert as new).
pub fn signature(key: &str, t: i64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!(
        "t={t},v1={}",
        crate::archive::hex(&mac.finalize().into_bytes())
    )
}

/// One mail, over a fresh SMTP connection: the notice's message as subject, its text,
/// event, app and time as a plain-text body, to every address of `to`.
async fn send_mail(target: &Target, notice: &Notice) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let host = target.smtp_host.as_deref().unwrap_or_default();
    let mut builder = match target.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| format!("SMTP: {e}"))?,
        SmtpTls::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| format!("SMTP: {e}"))?
        }
    };
    if let Some(port) = target.smtp_port {
        builder = builder.port(port);
    }
    if let Some(user) = &target.username {
        let password = match &target.password_file {
            Some(file) => read_secret(file)?,
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let mailer = builder.timeout(Some(TIMEOUT)).build();
    let mut message = Message::builder()
        .from(
            target
                .from
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e| format!("from: {e}"))?,
        )
        .subject(format!("appsnap: {}", notice.message))
        .header(ContentType::TEXT_PLAIN);
    for to in &target.to {
        message = message.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    let body = format!(
        "{}\n\nevent: {:?}\napp: {}\ntime: {}\n",
        notice.text(),
        notice.event,
        notice.app.as_deref().unwrap_or("-"),
        notice.time.to_rfc3339()
    );
    let email = message.body(body).map_err(|e| format!("mail: {e}"))?;
    mailer
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staleness watch with an injected clock: stale once when the last success gets
    /// older than the threshold, fresh again once after a new success, silent otherwise.
    #[test]
    fn staleness_is_announced_once_and_so_is_recovery() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let h = chrono::Duration::hours;
        let mut stale = HashSet::new();
        let app = |last| vec![("app".to_string(), last, 24u64), ("off".to_string(), t0, 0)];
        let at = |stale: &mut HashSet<String>, now, last| stale_transitions(stale, now, &app(last));
        assert_eq!(at(&mut stale, t0 + h(23), t0), (vec![], vec![]));
        assert_eq!(
            at(&mut stale, t0 + h(25), t0),
            (vec![("app".to_string(), t0)], vec![])
        );
        assert_eq!(at(&mut stale, t0 + h(26), t0), (vec![], vec![]));
        assert_eq!(at(&mut stale, t0 + h(200), t0), (vec![], vec![]), "once");
        let fresh = t0 + h(201);
        assert_eq!(
            at(&mut stale, t0 + h(202), fresh),
            (vec![], vec!["app".to_string()])
        );
        assert_eq!(at(&mut stale, t0 + h(203), fresh), (vec![], vec![]));
    }

    /// A policy failing at every scheduler tick alerts once an hour, not every 30 s.
    #[test]
    fn policy_failures_are_announced_at_most_hourly() {
        let t0 = Utc::now();
        let m = chrono::Duration::minutes;
        let mut last = std::collections::HashMap::new();
        let calls: Vec<bool> = [0, 1, 30, 59, 60, 61, 119, 121]
            .into_iter()
            .map(|minute| hourly(&mut last, "p/a", t0 + m(minute)))
            .collect();
        assert_eq!(calls, [true, false, false, false, true, false, false, true]);
        assert!(hourly(&mut last, "p/other-app", t0 + m(1)), "per app");
    }

    #[test]
    fn recoveries_follow_their_failures_and_levels_filter() {
        let mut target: Target = toml::from_str(
            "name = \"ops\"\ntype = \"webhook\"\nurl = \"http://x\"\nevents = [\"backup_failed\"]",
        )
        .unwrap();
        let notice = |event| Notice::new(event, Some("a"), String::new(), String::new());
        assert!(target.wants(&notice(Event::BackupFailed)));
        assert!(target.wants(&notice(Event::BackupRecovered)));
        assert!(!target.wants(&notice(Event::Stale)));
        target.events = None;
        target.min_level = Level::Error;
        assert!(target.wants(&notice(Event::PolicyFailed)));
        assert!(!target.wants(&notice(Event::Stale)));
        assert!(!target.wants(&notice(Event::BackupRecovered)));
        assert!(target.wants(&notice(Event::Test)), "a test goes through");
    }

    #[test]
    fn a_password_goes_in_clear_text_only_to_this_machine() {
        let mail = |host: &str, tls: &str| -> Target {
            toml::from_str(&format!(
                "name = \"m\"\ntype = \"email\"\nsmtp_host = \"{host}\"\ntls = \"{tls}\"\n\
                 username = \"u\"\nfrom = \"a@example.org\"\nto = [\"b@example.org\"]"
            ))
            .unwrap()
        };
        let refused = mail("smtp.example.org", "none").check().unwrap_err();
        assert!(refused.contains("clear text"), "{refused}");
        for ok in [
            mail("smtp.example.org", "starttls"),
            mail("127.0.0.1", "none"),
            mail("localhost", "none"),
            mail("[::1]", "none"),
        ] {
            assert_eq!(ok.check(), Ok(()), "{:?}", ok.smtp_host);
        }
    }

    #[test]
    fn the_webhook_signature_binds_the_time() {
        let body = br#"{"event":"test"}"#;
        let now = signature("k", 1_700_000_000, body);
        assert!(now.starts_with("t=1700000000,v1="), "{now}");
        assert_ne!(now, signature("k", 1_700_000_000, b"{}"));
        let later = signature("k", 1_700_000_001, body);
        assert_ne!(
            now[now.len() - 64..],
            later[later.len() - 64..],
            "the time is in the MAC"
        );
    }
}

//! Policies: retention, quota and schedule decisions made by WebAssembly components that
//! operators can upload and swap at runtime. The host acts; policies only decide.
//!
//! - [`engine`]: wasmtime, the worlds of `wit/`, and the sandbox limits;
//! - here: the registry — built-in and uploaded components by name and version (stored by
//!   sha256 under `{backup_root}/.appsnap/policies/`), bindings of policies to apps (and a
//!   default), schedule state, and per-policy failure counts shown in the API.
//!
//! Host rules no policy can break live in `manager::policies`: pinned snapshots and the
//! newest verified snapshot survive, a policy can only delete what it was shown, and a
//! failing policy means "delete nothing / admit".

pub mod engine;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use engine::{Compiled, shared};

/// Errors of the policy registry and sandbox.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The upload is not a usable policy component (422).
    #[error("{0}")]
    Invalid(String),
    /// A call into the policy trapped, timed out or ran out of memory.
    #[error("policy failed: {0}")]
    Failed(String),
    /// The policy answered something the host cannot accept.
    #[error("policy answered nonsense: {0}")]
    Malformed(String),
    /// The policy is of another kind than the slot it was used for.
    #[error("a {0} policy cannot be used as {1}")]
    WrongKind(Kind, Kind),
    /// No policy of that name.
    #[error("no policy `{0}`")]
    NotFound(String),
    /// The operation conflicts with how the policy is used.
    #[error("{0}")]
    Conflict(String),
    /// A configuration was refused by the policy's `validate-config`.
    #[error("invalid configuration for `{policy}`: {reason}")]
    Config { policy: String, reason: String },
    /// Storing policies or bindings failed.
    #[error("policy storage: {0}")]
    Io(#[from] std::io::Error),
}

/// What a policy decides: the WIT world its component exports. A slot takes only a policy
/// of its own kind, and an uploaded policy keeps its kind across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Which snapshots of an app to keep.
    Retention,
    /// Whether a backup may be made, and what to evict for it.
    Quota,
    /// When an app is backed up next.
    Schedule,
}

impl Kind {
    /// The name `describe` must give, and the `kind` label of the failure metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Retention => "retention",
            Kind::Quota => "quota",
            Kind::Schedule => "schedule",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest component accepted (an upload, and what `appsnap compile-policy` reads).
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;

/// Built-in policies, built from `policies/` by `build.rs` and embedded. Always there under
/// these names: they cannot be uploaded over or deleted, and are compiled in-process.
pub const BUILTINS: &[(&str, &[u8])] = &[
    (
        "keep-last",
        include_bytes!(concat!(env!("APPSNAP_GUESTS_DIR"), "/keep_last.wasm")),
    ),
    (
        "keep-within",
        include_bytes!(concat!(env!("APPSNAP_GUESTS_DIR"), "/keep_within.wasm")),
    ),
    (
        "gfs",
        include_bytes!(concat!(env!("APPSNAP_GUESTS_DIR"), "/gfs.wasm")),
    ),
    (
        "quota-oldest-first",
        include_bytes!(concat!(
            env!("APPSNAP_GUESTS_DIR"),
            "/quota_oldest_first.wasm"
        )),
    ),
    (
        "daily-weekly-cron",
        include_bytes!(concat!(
            env!("APPSNAP_GUESTS_DIR"),
            "/daily_weekly_cron.wasm"
        )),
    ),
];

/// One policy bound to a slot, with its configuration (any JSON; passed as a string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Binding {
    /// A built-in or uploaded policy; each call uses its version current at that time.
    pub policy: String,
    /// Omitted: `{}`. Must be a JSON object, which the policy's `validate-config`
    /// accepted when it was bound.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The policies of an app (or the default for apps without their own).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bindings {
    /// Which local snapshots to keep. For an app, `None` falls back to the default's.
    pub retention: Option<Binding>,
    /// Whether a backup may be made (and what to evict first); same fallback.
    pub quota: Option<Binding>,
    /// When the app is backed up; with none here nor in the default, only on request.
    pub schedule: Option<Binding>,
    /// Per offsite repository (by name): the retention and quota of the app's copies
    /// there, e.g. 7 local snapshots but 12 monthly offsite. The top-level slots bind the
    /// local snapshots only; a repository without its own binding here keeps every copy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub repositories: BTreeMap<String, RepositoryBindings>,
}

/// The policies bound to an app's copies in one repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryBindings {
    pub retention: Option<Binding>,
    pub quota: Option<Binding>,
}

impl Bindings {
    /// Every slot with the kind it takes, the repositories' included: what `bind` checks
    /// and `uses` searches.
    fn slots(&self) -> Vec<(Kind, Option<&Binding>)> {
        let mut slots = vec![
            (Kind::Retention, self.retention.as_ref()),
            (Kind::Quota, self.quota.as_ref()),
            (Kind::Schedule, self.schedule.as_ref()),
        ];
        for r in self.repositories.values() {
            slots.push((Kind::Retention, r.retention.as_ref()));
            slots.push((Kind::Quota, r.quota.as_ref()));
        }
        slots
    }

    /// Whether any slot, a repository's included, binds policy `name`.
    fn uses(&self, name: &str) -> bool {
        self.slots()
            .iter()
            .any(|(_, b)| b.is_some_and(|b| b.policy == name))
    }
}

/// One stored version of an uploaded policy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    /// Of the component's bytes; an upload's file is `<sha256>.wasm`.
    pub sha256: String,
    /// The first upload of these bytes (a re-upload keeps it); the Unix epoch for a
    /// built-in.
    pub uploaded_at: DateTime<Utc>,
    pub kind: Kind,
    /// From the component's `describe`.
    pub version: String,
    /// From `describe` too: how to write the policy's configuration.
    pub config_help: String,
}

/// A policy as the API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    /// For an uploaded policy, that of its newest version (all versions share it).
    pub kind: Kind,
    pub builtin: bool,
    /// sha256 of the version in use.
    pub current: String,
    /// Oldest first; a built-in has exactly one.
    pub versions: Vec<Version>,
    /// Calls that trapped, timed out or answered nonsense since start-up.
    pub failures: u64,
    /// The latest failure since start-up, prefixed with its time and app.
    pub last_error: Option<String>,
}

/// What the scheduler remembers of one app's schedule. Saved in `state.json`, so a
/// restart neither repeats a run nor forgets one that is due.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleState {
    /// Last scheduled run (or when the schedule was first seen).
    pub last_run: Option<DateTime<Utc>>,
    /// When the next scheduled backup is due, as last computed; `None`: not computed yet,
    /// or the policy names no further run.
    pub next_run: Option<DateTime<Utc>>,
    /// Why the schedule policy failed, or the due backup could not start; cleared by a
    /// scheduled backup that starts.
    pub last_error: Option<String>,
}

/// Everything the registry persists, as `policies/state.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Uploaded policies: name → versions, newest last, and the current one.
    uploaded: BTreeMap<String, (Vec<Version>, String)>,
    /// For apps without their own binding, slot by slot.
    default: Bindings,
    /// Apps' own bindings; an app bound to nothing has no entry.
    apps: BTreeMap<String, Bindings>,
    schedules: BTreeMap<String, ScheduleState>,
}

/// One policy's failure count and latest error: in memory only (zero after a restart), and
/// apart from `State`, so that counting a failure takes neither its lock nor a disk write.
#[derive(Default)]
struct Health {
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The policy registry: uploaded components as `<sha256>.wasm` and `state.json` in one
/// directory, and the failure counts. Methods that may compile a component block.
pub struct Registry {
    /// `{state_dir}/policies`.
    dir: PathBuf,
    /// What `state.json` holds; each change is saved while the lock is held.
    state: Mutex<State>,
    health: Mutex<BTreeMap<String, Arc<Health>>>,
}

impl Registry {
    /// Loads `{state_dir}/policies/` (the service passes `{backup_root}/.appsnap`),
    /// creating it if missing. No `state.json` is an empty registry; a corrupt one is
    /// `Invalid`: refused, never replaced by an empty one.
    pub fn open(state_dir: &Path) -> Result<Registry, PolicyError> {
        let dir = state_dir.join("policies");
        fs::create_dir_all(&dir)?;
        Self::open_dir(dir)
    }

    /// Loads a policies folder as it is (`state.json` and uploaded components), e.g. a
    /// copy of a server's on an admin machine; a folder without `state.json` is an empty
    /// registry.
    pub fn open_dir(dir: PathBuf) -> Result<Registry, PolicyError> {
        let state = match fs::read(dir.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                PolicyError::Invalid(format!("policies/state.json is corrupt: {e}"))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Registry {
            dir,
            state: Mutex::new(state),
            health: Mutex::default(),
        })
    }

    /// Replaces `state.json` atomically (temporary file, fsync, rename).
    fn save(&self, state: &State) -> Result<(), PolicyError> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        crate::catalog::write_atomic(&self.dir.join("state.json"), &bytes)?;
        Ok(())
    }

    fn builtin(name: &str) -> Option<&'static [u8]> {
        BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    /// The version in use of `name`, compiled (blocking: may compile). `NotFound` for an
    /// unknown name; `Io` when the current version's file is gone.
    pub fn resolve(&self, name: &str) -> Result<Arc<Compiled>, PolicyError> {
        if let Some(bytes) = Self::builtin(name) {
            return shared().load_builtin(bytes);
        }
        let sha = {
            let state = self.state.lock().expect("policy state");
            state
                .uploaded
                .get(name)
                .map(|(_, current)| current.clone())
                .ok_or_else(|| PolicyError::NotFound(name.into()))?
        };
        let bytes = fs::read(self.dir.join(format!("{sha}.wasm")))?;
        shared().load(&bytes)
    }

    /// Stores a new version of `name` and makes it current (blocking: compiles).
    /// Evaluations already running keep the version they started with. Uploading bytes
    /// that are already a version makes that version current again (a rollback).
    /// `Invalid`: a bad name or component; `Conflict`: a built-in's name, or another kind
    /// than the policy's earlier versions.
    pub fn upload(&self, name: &str, bytes: &[u8]) -> Result<PolicyInfo, PolicyError> {
        crate::ids::validate("policy name", name)
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if Self::builtin(name).is_some() {
            return Err(PolicyError::Conflict(format!(
                "`{name}` is a built-in policy; upload under another name"
            )));
        }
        let compiled = shared().load(bytes)?;
        let path = self.dir.join(format!("{}.wasm", compiled.sha256));
        if !path.exists() {
            crate::catalog::write_atomic(&path, bytes)?;
        }
        let mut state = self.state.lock().expect("policy state");
        if let Some((versions, _)) = state.uploaded.get(name)
            && versions.last().is_some_and(|v| v.kind != compiled.kind)
        {
            return Err(PolicyError::Conflict(format!(
                "`{name}` is a {} policy; this component is {}",
                versions[0].kind, compiled.kind
            )));
        }
        let entry = state.uploaded.entry(name.to_string()).or_default();
        if !entry.0.iter().any(|v| v.sha256 == compiled.sha256) {
            entry.0.push(Version {
                sha256: compiled.sha256.clone(),
                uploaded_at: Utc::now(),
                kind: compiled.kind,
                version: compiled.description.version.clone(),
                config_help: compiled.description.config_help.clone(),
            });
        }
        entry.1 = compiled.sha256.clone();
        self.save(&state)?;
        tracing::info!(policy = name, kind = %compiled.kind, sha256 = %compiled.sha256, "policy uploaded");
        drop(state);
        self.info(name)
    }

    /// Every policy: the built-ins, then the uploaded ones by name. One whose info cannot
    /// be had (a built-in that does not load) is left out. Blocking.
    pub fn list(&self) -> Vec<PolicyInfo> {
        let mut names: Vec<String> = BUILTINS.iter().map(|(n, _)| n.to_string()).collect();
        names.extend(
            self.state
                .lock()
                .expect("policy state")
                .uploaded
                .keys()
                .cloned(),
        );
        names.iter().filter_map(|n| self.info(n).ok()).collect()
    }

    /// One policy with its versions and failures (blocking: a built-in may compile on
    /// first use). `NotFound` for an unknown name.
    pub fn info(&self, name: &str) -> Result<PolicyInfo, PolicyError> {
        let health = self.health(name);
        let (failures, last_error) = (
            health.failures.load(Ordering::Relaxed),
            health.last_error.lock().expect("health").clone(),
        );
        if let Some(bytes) = Self::builtin(name) {
            let c = shared().load_builtin(bytes)?;
            return Ok(PolicyInfo {
                name: name.into(),
                kind: c.kind,
                builtin: true,
                current: c.sha256.clone(),
                versions: vec![Version {
                    sha256: c.sha256.clone(),
                    uploaded_at: DateTime::<Utc>::UNIX_EPOCH,
                    kind: c.kind,
                    version: c.description.version.clone(),
                    config_help: c.description.config_help.clone(),
                }],
                failures,
                last_error,
            });
        }
        let state = self.state.lock().expect("policy state");
        let (versions, current) = state
            .uploaded
            .get(name)
            .ok_or_else(|| PolicyError::NotFound(name.into()))?;
        Ok(PolicyInfo {
            name: name.into(),
            kind: versions.last().map_or(Kind::Retention, |v| v.kind),
            builtin: false,
            current: current.clone(),
            versions: versions.clone(),
            failures,
            last_error,
        })
    }

    /// Removes an uploaded policy; refused while any app (or the default) uses it.
    /// `Conflict` names the users (or says it is built in). Its version files go too,
    /// unless another policy has the same bytes.
    pub fn delete(&self, name: &str) -> Result<(), PolicyError> {
        if Self::builtin(name).is_some() {
            return Err(PolicyError::Conflict(format!(
                "`{name}` is built in and cannot be deleted"
            )));
        }
        let mut state = self.state.lock().expect("policy state");
        if !state.uploaded.contains_key(name) {
            return Err(PolicyError::NotFound(name.into()));
        }
        let users: Vec<String> = std::iter::once(("default".to_string(), &state.default))
            .chain(state.apps.iter().map(|(a, b)| (a.clone(), b)))
            .filter(|(_, b)| b.uses(name))
            .map(|(a, _)| a)
            .collect();
        if !users.is_empty() {
            return Err(PolicyError::Conflict(format!(
                "`{name}` is bound to {}",
                users.join(", ")
            )));
        }
        let (versions, _) = state.uploaded.remove(name).expect("checked");
        self.save(&state)?;
        for v in versions {
            let still_used = state
                .uploaded
                .values()
                .any(|(vs, _)| vs.iter().any(|x| x.sha256 == v.sha256));
            if !still_used {
                let _ = fs::remove_file(self.dir.join(format!("{}.wasm", v.sha256)));
            }
        }
        Ok(())
    }

    /// Checks every binding (policy exists, right kind, `validate-config` accepts the
    /// config) and stores them for `app` (`None`: the default). Blocking. Every slot is
    /// checked before anything is stored: one refused slot stores nothing.
    pub fn bind(&self, app: Option<&str>, bindings: Bindings) -> Result<(), PolicyError> {
        for (kind, binding) in bindings.slots() {
            let Some(b) = binding else { continue };
            if !b.config.is_object() {
                return Err(PolicyError::Config {
                    policy: b.policy.clone(),
                    reason: "a policy's config is a JSON object".into(),
                });
            }
            let c = self.resolve(&b.policy)?;
            if c.kind != kind {
                return Err(PolicyError::WrongKind(c.kind, kind));
            }
            shared()
                .validate_config(&c, &b.config.to_string())?
                .map_err(|reason| PolicyError::Config {
                    policy: b.policy.clone(),
                    reason,
                })?;
        }
        let mut state = self.state.lock().expect("policy state");
        match app {
            Some(app) if bindings == Bindings::default() => {
                state.apps.remove(app);
            }
            Some(app) => {
                state.apps.insert(app.to_string(), bindings);
            }
            None => state.default = bindings,
        }
        self.save(&state)
    }

    /// The app's own bindings (`None`: the default's).
    pub fn bindings(&self, app: Option<&str>) -> Bindings {
        let state = self.state.lock().expect("policy state");
        match app {
            Some(app) => state.apps.get(app).cloned().unwrap_or_default(),
            None => state.default.clone(),
        }
    }

    /// What applies to `app` in `kind`'s slot: its own binding, else the default's.
    pub fn effective(&self, app: &str, kind: Kind) -> Option<Binding> {
        let state = self.state.lock().expect("policy state");
        let pick = |b: &Bindings| match kind {
            Kind::Retention => b.retention.clone(),
            Kind::Quota => b.quota.clone(),
            Kind::Schedule => b.schedule.clone(),
        };
        state
            .apps
            .get(app)
            .and_then(pick)
            .or_else(|| pick(&state.default))
    }

    /// What applies to `app`'s copies in `repository` (`kind` is retention or quota): its
    /// own binding for that repository, else the default's. Never the local slot.
    pub fn effective_at(&self, app: &str, kind: Kind, repository: &str) -> Option<Binding> {
        let state = self.state.lock().expect("policy state");
        let pick = |b: &Bindings| {
            let r = b.repositories.get(repository)?;
            match kind {
                Kind::Retention => r.retention.clone(),
                Kind::Quota => r.quota.clone(),
                Kind::Schedule => None,
            }
        };
        state
            .apps
            .get(app)
            .and_then(pick)
            .or_else(|| pick(&state.default))
    }

    /// Apps with a schedule of their own, plus (when the default has one) `known`;
    /// sorted, each once.
    pub fn scheduled_apps(&self, known: impl IntoIterator<Item = String>) -> Vec<String> {
        let state = self.state.lock().expect("policy state");
        let mut apps: Vec<String> = state
            .apps
            .iter()
            .filter(|(_, b)| b.schedule.is_some())
            .map(|(a, _)| a.clone())
            .collect();
        if state.default.schedule.is_some() {
            apps.extend(known);
        }
        apps.sort();
        apps.dedup();
        apps
    }

    /// The app's schedule state; empty (never run, nothing due) for one not seen yet.
    pub fn schedule_state(&self, app: &str) -> ScheduleState {
        self.state
            .lock()
            .expect("policy state")
            .schedules
            .get(app)
            .cloned()
            .unwrap_or_default()
    }

    pub fn schedules(&self) -> BTreeMap<String, ScheduleState> {
        self.state.lock().expect("policy state").schedules.clone()
    }

    /// Stores the app's schedule state and saves `state.json` at once.
    pub fn set_schedule_state(&self, app: &str, s: ScheduleState) -> Result<(), PolicyError> {
        let mut state = self.state.lock().expect("policy state");
        state.schedules.insert(app.to_string(), s);
        self.save(&state)
    }

    /// The counters of `name`, created at first use.
    fn health(&self, name: &str) -> Arc<Health> {
        Arc::clone(
            self.health
                .lock()
                .expect("health")
                .entry(name.to_string())
                .or_default(),
        )
    }

    /// Counts a failed call (trap, timeout, nonsense) against `policy` and logs it. The
    /// log says what the caller does: a failed policy deletes nothing and denies nothing.
    pub fn record_failure(&self, policy: &str, app: &str, error: &PolicyError) {
        tracing::error!(
            policy,
            app,
            "policy failed, nothing deleted or denied: {error}"
        );
        let h = self.health(policy);
        h.failures.fetch_add(1, Ordering::Relaxed);
        *h.last_error.lock().expect("health") =
            Some(format!("{}: app {app}: {error}", Utc::now().to_rfc3339()));
    }
}

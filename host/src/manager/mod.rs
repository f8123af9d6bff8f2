//! `BackupManager`: the one place where snapshots are created, listed, restored and
//! deleted. The API and the CLI are thin layers over it.
//!
//! - [`backup`]: making a snapshot (stop, archive, start, commit) and its crash repair;
//! - [`restore`]: putting one back with rollback, and its crash repair;
//! - [`aside`]: the journaled file half of a restore (set aside, commit, roll back);
//! - [`transfer`]: verify, download and import (moving snapshots between servers);
//! - [`offsite`]: copies to repositories after a backup (retried), fetching them back;
//! - [`policies`]: quota before a backup, retention after it, schedules, dry runs, and
//!   the host rules no policy can break;
//! - here: opening the backup root (lock, repairs, catalog), per-app locks, list, delete,
//!   stats.

mod aside;
mod backup;
mod offsite;
mod policies;
mod restore;
mod transfer;

pub use policies::{Decision, RetentionReport};
pub use restore::Restored;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use crate::archive::{self, ArchiveError};
use crate::catalog::{Catalog, CatalogError, PARTIAL_SUFFIX, Snapshot};
use crate::config::Config;
use crate::docker::{Docker, DockerError};
use crate::ids::{self, IdError};
use crate::jobs::{Job, Jobs};

/// appsnap's own state under the backup root (hidden: ids cannot start with a dot).
const STATE_DIR: &str = ".appsnap";

/// Errors of backup operations; `api::error` maps each to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// An id in the request is malformed.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// No compose project of that name exists.
    #[error("no container belongs to compose project `{0}`")]
    AppNotFound(String),
    /// No snapshot of that id is in the catalog.
    #[error("no snapshot `{0}` in the catalog")]
    SnapshotNotFound(String),
    /// Another operation holds the app's lock.
    #[error("a {operation} of app `{app_id}` is already running")]
    Busy { app_id: String, operation: String },
    /// An interrupted backup or restore of the app is not repaired yet.
    #[error(
        "an interrupted {operation} of app `{app_id}` is not repaired yet ({journal}); appsnap \
         retries the repair in the background, see its log"
    )]
    RepairPending {
        app_id: String,
        operation: String,
        journal: PathBuf,
    },
    /// The backup root was initialised before but its mark is gone: most likely the backup
    /// disk is not mounted, and appsnap would fill the root filesystem instead.
    #[error(
        "backup root {root} was initialised before (id {id}) but {mark} is missing: is the \
         backup disk mounted? If the old backups are really gone, remove {record} to start afresh"
    )]
    RootLost {
        root: PathBuf,
        id: String,
        mark: PathBuf,
        record: PathBuf,
    },
    /// The backup filesystem is full.
    #[error("no space left on the backup filesystem: {0}")]
    NoSpace(String),
    /// A restore's data cannot fit where it goes; nothing was touched.
    #[error("not enough space to restore: {0}")]
    NoSpaceToRestore(String),
    /// Docker failed (engine unreachable, container gone, hook failed).
    #[error(transparent)]
    Docker(DockerError),
    /// Writing or reading an archive failed.
    #[error(transparent)]
    Archive(ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The request that ran the operation was closed before it finished (its client left).
    #[error("the request running this {0} was closed before it finished; the {0} was stopped")]
    Abandoned(&'static str),
    /// appsnap is shutting down: the work stopped at a consistent point.
    #[error("appsnap is shutting down; the operation was stopped and nothing half-done was kept")]
    ShuttingDown,
    /// The archive file of a snapshot could not be removed; the catalog still lists it.
    #[error("cannot remove {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The data a successful restore replaced could not all be removed (the restore
    /// stands; what is left is named, for a person to remove).
    #[error("the data a restore of app `{app_id}` replaced was not all removed: {details}")]
    CleanupFailed { app_id: String, details: String },
    /// The snapshot was taken of another app.
    #[error("snapshot `{snapshot_id}` belongs to app `{snapshot_app}`, not `{app_id}`")]
    ForeignSnapshot {
        snapshot_id: String,
        snapshot_app: String,
        app_id: String,
    },
    /// The archive failed verification; nothing was touched.
    #[error("{0}")]
    Corrupt(String),
    /// A restore failed at `step` and everything was put back as it was.
    #[error(
        "{step} failed: {cause}; the previous data was put back and the containers that were running started again"
    )]
    RestoreFailed { step: String, cause: String },
    /// A restore failed and so did putting things back: see `rollback` and the log.
    #[error("{step} failed: {cause}; rolling back also failed: {rollback}")]
    RollbackFailed {
        step: String,
        cause: String,
        rollback: String,
    },
    /// The quota policy refused the backup.
    #[error("quota policy `{policy}` denied the backup: {reason}")]
    QuotaDenied { policy: String, reason: String },
    /// A policy could not be stored, bound or run.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A snapshot with this id is in the catalog already.
    #[error("snapshot `{0}` exists already")]
    SnapshotExists(String),
    /// The upload is over the configured limit.
    #[error("the upload exceeds max_import_bytes ({0} bytes)")]
    TooLarge(u64),
    /// Another appsnap process (the service, or a CLI run) uses this backup root.
    #[error("another appsnap process is using {0}; stop it or use its API")]
    RootInUse(PathBuf),
    /// An offsite repository failed or refused (unknown, unreachable, wrong password…).
    #[error(transparent)]
    Offsite(#[from] crate::offsite::OffsiteError),
    /// A filesystem operation on the backup root failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ManagerError {
    /// The error as an alert tells it (see [`DockerError::alert_text`]).
    pub fn alert_text(&self) -> String {
        match self {
            ManagerError::Docker(e) => e.alert_text(),
            other => other.to_string(),
        }
    }
}

impl From<DockerError> for ManagerError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::AppNotFound(app) => ManagerError::AppNotFound(app),
            other => ManagerError::Docker(other),
        }
    }
}

impl From<ArchiveError> for ManagerError {
    fn from(e: ArchiveError) -> Self {
        if matches!(e, ArchiveError::Cancelled) {
            ManagerError::ShuttingDown
        } else if e.is_no_space() {
            ManagerError::NoSpace(e.to_string())
        } else if e.is_bad_archive() {
            ManagerError::Corrupt(e.to_string())
        } else {
            ManagerError::Archive(e)
        }
    }
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ManagerError {
    let context = context.into();
    move |source| {
        if archive::is_no_space(&source) {
            ManagerError::NoSpace(format!("{context}: {source}"))
        } else {
            ManagerError::Io { context, source }
        }
    }
}

/// Per-app stats for `GET /api/v1/backup/stats`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct AppStats {
    pub snapshots: u64,
    pub bytes: u64,
    /// The quota policy that applies to the app, if any: `bytes` is what it counts.
    pub quota: Option<crate::policy::Binding>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub apps: HashMap<String, AppStats>,
    pub total_snapshots: u64,
    pub total_bytes: u64,
    /// Free bytes on the backup filesystem (available to appsnap).
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
}

/// A backup accepted and running: its job, and the task to await for the outcome.
pub struct Started<T = Snapshot> {
    pub job: Job,
    pub done: tokio::task::JoinHandle<Result<T, Arc<ManagerError>>>,
}

pub struct BackupManager {
    config: Arc<Config>,
    docker: Docker,
    catalog: Mutex<Catalog>,
    /// app id → operation holding its lock.
    busy: Arc<Mutex<HashMap<String, String>>>,
    /// Count of held app locks, for a graceful shutdown that waits for them.
    busy_count: watch::Sender<usize>,
    pub jobs: Jobs,
    /// Slots for heavy work (backups, restores, verifies, imports): more wait their turn.
    heavy: tokio::sync::Semaphore,
    /// Set once shutdown begins; with the cancel flags of the work in progress.
    shutting_down: std::sync::atomic::AtomicBool,
    cancels: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicBool>>>,
    pub policies: Arc<crate::policy::Registry>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub notifier: crate::notify::Notifier,
    /// Offsite work (copies, prunes) runs one at a time; its tasks, for the CLI to wait on.
    offsite_slot: tokio::sync::Semaphore,
    offsite_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// (snapshot, repository) of each copy task alive, waiting to retry included: one
    /// task per pair, whoever asks.
    copies_running: offsite::Claims,
    /// Set by the CLI before it waits for copies: a failed attempt is left `pending` for
    /// the service to retry, rather than keeping the command waiting through the backoff.
    retry_in_service: std::sync::atomic::AtomicBool,
    /// app id → the end (sender dropped) of the cleanup after its last restore, while
    /// that runs (see `restore::start_cleanup`).
    cleanups: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    /// Apps a scrape has shown, so that one whose snapshots are gone shows 0.
    known_apps: Mutex<std::collections::BTreeSet<String>>,
    /// The backup root's id (`.appsnap/id`): names this server's offsite copies.
    root_id: String,
    /// Held for the manager's life: one process per backup root.
    _root_lock: File,
}

/// Releases an app's lock when the operation ends, however it ends.
pub(super) struct AppLock {
    pub(super) app_id: String,
    busy: Arc<Mutex<HashMap<String, String>>>,
    count: watch::Sender<usize>,
    /// The cleanup of the app's last restore, still running when the lock was taken:
    /// work on the app's data waits for it (`BackupManager::after_cleanup`).
    pub(super) after: Option<watch::Receiver<()>>,
}

impl Drop for AppLock {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().expect("busy lock");
        busy.remove(&self.app_id);
        self.count.send_replace(busy.len());
    }
}

impl BackupManager {
    /// Opens the backup root: takes the process lock, repairs what a crash left (restarts
    /// containers a backup had stopped, removes partial archives), loads the catalog.
    pub async fn open(config: Config) -> Result<Arc<BackupManager>, ManagerError> {
        let root = config.backup_root.clone();
        let state = root.join(STATE_DIR);
        let root_id = mark_root(&root, &config.state_dir)?;
        let lock = lock_root(&state.join("lock"))?;
        let docker = Docker::connect(
            &config.host_root,
            std::time::Duration::from_secs(config.docker_timeout_secs.max(1)),
        )?;

        // Repairs before serving: a crash may have left an app stopped or half restored.
        let mut journals: Vec<PathBuf> = fs::read_dir(&state)
            .map_err(io_err(format!("cannot read {}", state.display())))?
            .flatten()
            .map(|e| e.path())
            .collect();
        journals.sort();
        for path in journals {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(PARTIAL_SUFFIX) {
                tracing::warn!("removing interrupted import {}", path.display());
                let _ = fs::remove_file(&path);
            } else if let Err(e) = repair(&docker, &path, config.stop_timeout_secs).await {
                tracing::error!("repair from {} failed, retried later: {e}", path.display());
            }
        }
        remove_partials(&root);
        let catalog = tokio::task::spawn_blocking(move || Catalog::open(&root))
            .await
            .expect("catalog open task")?;
        let config_state = config.backup_root.join(STATE_DIR);
        let heavy_slots = config.max_parallel.max(1);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let notifier = crate::notify::Notifier::start(&config.notify, Arc::clone(&metrics));
        Ok(Arc::new(BackupManager {
            config: Arc::new(config),
            docker,
            catalog: Mutex::new(catalog),
            busy: Arc::default(),
            busy_count: watch::channel(0).0,
            jobs: Jobs::default(),
            heavy: tokio::sync::Semaphore::new(heavy_slots),
            shutting_down: Default::default(),
            cancels: Mutex::default(),
            policies: Arc::new(crate::policy::Registry::open(&config_state)?),
            metrics,
            notifier,
            offsite_slot: tokio::sync::Semaphore::new(1),
            offsite_tasks: Mutex::default(),
            copies_running: offsite::Claims::default(),
            retry_in_service: std::sync::atomic::AtomicBool::new(false),
            cleanups: Arc::default(),
            known_apps: Mutex::default(),
            root_id,
            _root_lock: lock,
        }))
    }

    /// Retries the repairs that failed before (Docker was down, a rollback could not put
    /// the data back): called periodically by the service. An app being worked on is
    /// left for the next pass. Returns what was tried: app id and outcome.
    pub async fn repair_pending(&self) -> Vec<(String, Result<(), String>)> {
        let mut tried = Vec::new();
        for (app_id, operation, path) in self.pending_journals() {
            let Ok(lock) = self.take_lock(&app_id, "repair") else {
                continue;
            };
            if lock.after.is_some() {
                continue; // a restore's cleanup owns that journal
            }
            let result = repair(&self.docker, &path, self.config.stop_timeout_secs).await;
            match &result {
                Ok(()) => tracing::info!(app = %app_id, "interrupted {operation} repaired"),
                Err(e) => {
                    tracing::warn!(app = %app_id, "repair of the {operation} failed again: {e}")
                }
            }
            tried.push((app_id, result));
        }
        tried
    }

    /// Outstanding journals: (app id, operation, path).
    fn pending_journals(&self) -> Vec<(String, String, PathBuf)> {
        let state = self.config.backup_root.join(STATE_DIR);
        let Ok(dir) = fs::read_dir(&state) else {
            return Vec::new();
        };
        let mut out: Vec<_> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".journal")?;
                let (app, op) = stem.rsplit_once('.')?;
                Some((app.to_string(), op.to_string(), e.path()))
            })
            .collect();
        out.sort();
        out
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Takes the app's lock for `operation`. Refused while another operation runs, and
    /// while an interrupted one is not repaired (its journal may describe data set aside
    /// that a new operation must not sweep away).
    fn lock_app(&self, app_id: &str, operation: &str) -> Result<AppLock, ManagerError> {
        let lock = self.take_lock(app_id, operation)?;
        for kind in ["restore", "backup"] {
            let journal = self.journal_path(app_id, kind);
            // The journal of a cleanup still running is not a repair: the caller waits.
            let cleaning = kind == "restore" && lock.after.is_some();
            if journal.exists() && !cleaning {
                return Err(ManagerError::RepairPending {
                    app_id: app_id.into(),
                    operation: kind.into(),
                    journal,
                });
            }
        }
        Ok(lock)
    }

    fn take_lock(&self, app_id: &str, operation: &str) -> Result<AppLock, ManagerError> {
        let mut busy = self.busy.lock().expect("busy lock");
        if let Some(running) = busy.get(app_id) {
            return Err(ManagerError::Busy {
                app_id: app_id.into(),
                operation: running.clone(),
            });
        }
        busy.insert(app_id.into(), operation.into());
        self.busy_count.send_replace(busy.len());
        Ok(AppLock {
            app_id: app_id.into(),
            busy: Arc::clone(&self.busy),
            count: self.busy_count.clone(),
            after: self
                .cleanups
                .lock()
                .expect("cleanups lock")
                .get(app_id)
                .cloned(),
        })
    }

    /// A cancel flag for one piece of long archive work; [`Self::cancel_all`] sets it.
    pub(super) fn new_cancel(&self) -> archive::Cancel {
        use std::sync::atomic::Ordering;
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(
            self.shutting_down.load(Ordering::SeqCst),
        ));
        let mut all = self.cancels.lock().expect("cancels lock");
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&flag));
        flag
    }

    /// Shutdown: archive work in progress stops at its next chunk — a backup then starts
    /// the app's containers again and keeps no partial archive, a restore rolls back, a
    /// verify ends — and containers are no longer waited for.
    pub fn cancel_all(&self) {
        use std::sync::atomic::Ordering;
        self.shutting_down.store(true, Ordering::SeqCst);
        for flag in self.cancels.lock().expect("cancels lock").iter() {
            if let Some(flag) = flag.upgrade() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A slot for heavy work, waiting (and saying so in the job) while all are taken.
    pub(super) async fn heavy_slot(&self, job: Option<&Job>) -> tokio::sync::SemaphorePermit<'_> {
        if let Ok(permit) = self.heavy.try_acquire() {
            return permit;
        }
        let step = job.map(|j| j.info().step);
        if let Some(job) = job {
            job.step(&format!(
                "waiting for a free slot ({} heavy operations at most)",
                self.config.max_parallel.max(1)
            ));
        }
        let permit = self
            .heavy
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if let (Some(job), Some(step)) = (job, step) {
            job.step(&step);
        }
        permit
    }

    fn journal_path(&self, app_id: &str, kind: &str) -> PathBuf {
        self.config
            .backup_root
            .join(STATE_DIR)
            .join(format!("{app_id}.{kind}.journal"))
    }

    /// Resolves once no app lock is held (for a graceful shutdown). Cleanups after
    /// restores are not waited for: the next start finishes them from their journals.
    pub async fn idle(&self) {
        let mut rx = self.busy_count.subscribe();
        let _ = rx.wait_for(|&n| n == 0).await;
        let cleaning = self.cleanups.lock().expect("cleanups lock").len();
        if cleaning > 0 {
            tracing::info!(
                "{cleaning} removal(s) of data replaced by a restore left for the next start"
            );
        }
    }

    /// Waits for every cleanup after a restore started so far (the CLI waits before it
    /// exits, and the benchmark before its next run).
    pub async fn cleanups_finished(&self) {
        let running: Vec<_> = self
            .cleanups
            .lock()
            .expect("cleanups lock")
            .values()
            .cloned()
            .collect();
        for mut done in running {
            let _ = done.changed().await;
        }
    }

    /// Changes a local snapshot's record in the catalog and its sidecar; a snapshot
    /// deleted meanwhile has nothing to record.
    pub(super) fn update_record(
        &self,
        snapshot_id: &str,
        change: impl FnOnce(&mut Snapshot),
    ) -> Result<(), crate::catalog::CatalogError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let Some(s) = catalog.get_mut(snapshot_id) else {
            return Ok(());
        };
        change(s);
        s.refresh_locations();
        if let Err(e) = crate::catalog::write_sidecar(s) {
            tracing::warn!(snapshot = %snapshot_id, "cannot write its sidecar: {e}");
        }
        catalog.save()
    }

    /// Newest first.
    pub fn list(&self, app_id: Option<&str>) -> Result<Vec<Snapshot>, ManagerError> {
        if let Some(app) = app_id {
            ids::validate("app id", app)?;
        }
        let catalog = self.catalog.lock().expect("catalog lock");
        Ok(catalog.list(app_id).into_iter().cloned().collect())
    }

    pub fn get(&self, snapshot_id: &str) -> Result<Snapshot, ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        let catalog = self.catalog.lock().expect("catalog lock");
        catalog
            .get(snapshot_id)
            .cloned()
            .ok_or_else(|| ManagerError::SnapshotNotFound(snapshot_id.into()))
    }

    /// Removes the archive, then the entry: the catalog never lists a file that is gone
    /// and never forgets one that is still there.
    pub fn delete(&self, snapshot_id: &str) -> Result<(), ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        let mut catalog = self.catalog.lock().expect("catalog lock");
        remove_snapshot(&mut catalog, snapshot_id)
    }

    /// Deletes for a policy or a count rule, whose decision was taken earlier and outside
    /// the catalog lock: a snapshot pinned since then (or already gone) is kept, checked
    /// here under the lock. Returns whether it was deleted.
    pub fn delete_unless_pinned(&self, snapshot_id: &str) -> Result<bool, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        match catalog.get(snapshot_id) {
            None => Ok(false),
            Some(s) if s.pinned => {
                tracing::info!(
                    snapshot = snapshot_id,
                    "kept: pinned after the policy decided"
                );
                Ok(false)
            }
            Some(_) => remove_snapshot(&mut catalog, snapshot_id).map(|()| true),
        }
    }

    /// Rebuilds the catalog from the archives on disk.
    pub fn reindex(&self) -> Result<usize, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        Ok(catalog.rebuild()?)
    }

    /// Each app's newest snapshot made by a backup of this server (imports are not
    /// backups): what the staleness watch and the metrics call its last success.
    pub fn last_backups(&self) -> HashMap<String, chrono::DateTime<chrono::Utc>> {
        let mut last = HashMap::new();
        for s in self.catalog.lock().expect("catalog lock").list(None) {
            if s.origin != crate::catalog::Origin::Imported {
                let newest = last.entry(s.app_id.clone()).or_insert(s.created_at);
                *newest = (*newest).max(s.created_at);
            }
        }
        last
    }

    /// The Prometheus text of a scrape: counters as they stand, gauges from the catalog
    /// and the backup root's filesystem now.
    pub fn metrics_text(&self) -> String {
        let stats = self.stats().ok();
        let last = self.last_backups();
        let mut apps: std::collections::BTreeMap<String, crate::metrics::AppGauges> = stats
            .iter()
            .flat_map(|s| &s.apps)
            .map(|(app, a)| {
                let gauges = crate::metrics::AppGauges {
                    snapshots: a.snapshots,
                    bytes: a.bytes,
                    last_success: last.get(app).map(|t| t.timestamp()),
                };
                (app.clone(), gauges)
            })
            .collect();
        // An app whose snapshots were all deleted shows 0, not its last count.
        let mut known = self.known_apps.lock().expect("known apps");
        for app in known.iter() {
            apps.entry(app.clone()).or_default();
        }
        known.extend(apps.keys().cloned());
        drop(known);
        self.metrics.render(
            apps.iter().map(|(k, v)| (k.as_str(), v.clone())),
            stats.map(|s| s.disk_free_bytes),
        )
    }

    pub fn stats(&self) -> Result<Stats, ManagerError> {
        let mut apps: HashMap<String, AppStats> = HashMap::new();
        let (mut total_snapshots, mut total_bytes) = (0, 0);
        for s in self.catalog.lock().expect("catalog lock").all() {
            let a = apps.entry(s.app_id.clone()).or_default();
            a.snapshots += 1;
            a.bytes += s.size_bytes;
            total_snapshots += 1;
            total_bytes += s.size_bytes;
        }
        for (app, a) in apps.iter_mut() {
            a.quota = self.policies.effective(app, crate::policy::Kind::Quota);
        }
        let vfs =
            nix::sys::statvfs::statvfs(&self.config.backup_root).map_err(|e| ManagerError::Io {
                context: format!("statvfs {}", self.config.backup_root.display()),
                source: e.into(),
            })?;
        let frag = vfs.fragment_size() as u64;
        Ok(Stats {
            apps,
            total_snapshots,
            total_bytes,
            disk_free_bytes: vfs.blocks_available() as u64 * frag,
            disk_total_bytes: vfs.blocks() as u64 * frag,
        })
    }
}

pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Removes a snapshot's archive (durably), then its sidecar and its catalog entry.
fn remove_snapshot(catalog: &mut Catalog, snapshot_id: &str) -> Result<(), ManagerError> {
    let snapshot = catalog
        .get(snapshot_id)
        .ok_or_else(|| ManagerError::SnapshotNotFound(snapshot_id.into()))?;
    let path = snapshot.file_path.clone();
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(snapshot = snapshot_id, "archive {path} was already gone");
        }
        Err(source) => return Err(ManagerError::Delete { path, source }),
    }
    // Without this a power cut can bring the deleted archive back (and the catalog,
    // rebuilt from the disk, would list it again).
    if let Some(dir) = Path::new(&path).parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| ManagerError::Delete {
                path: path.clone(),
                source,
            })?;
    }
    let _ = fs::remove_file(crate::catalog::sidecar_path(Path::new(&path)));
    catalog.remove(snapshot_id);
    catalog.save()?;
    tracing::info!(snapshot = snapshot_id, "snapshot deleted");
    Ok(())
}

/// Runs the repair a journal describes (see `backup::recover_backup` and
/// `restore::recover_restore`).
async fn repair(docker: &Docker, path: &Path, stop_timeout: u32) -> Result<(), String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name.ends_with(".backup.journal") {
        backup::recover_backup(docker, path, stop_timeout).await
    } else if name.ends_with(".restore.journal") {
        restore::recover_restore(docker, path, stop_timeout).await
    } else {
        Ok(())
    }
}

/// An unmounted backup disk must not silently become an empty store on the root
/// filesystem. The root carries a mark (`.appsnap/id`), and `state_dir` remembers, per
/// root path, the id it had: a root that had one and lost it is refused. A root is created
/// (and marked) only on first use, and that is logged. Returns the root's id.
fn mark_root(root: &Path, state_dir: &Path) -> Result<String, ManagerError> {
    use sha2::Digest;
    let mark = root.join(STATE_DIR).join("id");
    let key = archive::hex(&sha2::Sha256::digest(root.as_os_str().as_encoded_bytes()));
    let record = state_dir.join("roots").join(format!("{}.id", &key[..16]));
    let known = fs::read_to_string(&record)
        .ok()
        .map(|s| s.trim().to_string());
    let id = match fs::read_to_string(&mark) {
        Ok(id) => id.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(id) = known {
                return Err(ManagerError::RootLost {
                    root: root.into(),
                    id,
                    mark,
                    record,
                });
            }
            if !root.exists() {
                tracing::info!("creating the backup root {}", root.display());
            } else if root.join(STATE_DIR).exists()
                || root.join(crate::catalog::CATALOG_FILE).exists()
            {
                tracing::info!(
                    "marking the backup root {} (made by an older appsnap)",
                    root.display()
                );
            } else {
                tracing::info!("initialising the backup root {}", root.display());
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(STATE_DIR))
                .map_err(io_err(format!("cannot create {}", root.display())))?;
            let id = format!("{:016x}", rand::random::<u64>());
            crate::catalog::write_atomic(&mark, id.as_bytes())
                .map_err(io_err(format!("cannot write {}", mark.display())))?;
            id
        }
        Err(e) => return Err(io_err(format!("cannot read {}", mark.display()))(e)),
    };
    let remembered = fs::create_dir_all(record.parent().expect("has a parent"))
        .and_then(|()| crate::catalog::write_atomic(&record, id.as_bytes()));
    if let Err(e) = remembered {
        tracing::warn!(
            "cannot record the backup root's id in {}: {e}; an unmounted backup disk \
             would not be noticed",
            record.display()
        );
    }
    Ok(id)
}

/// One appsnap process per backup root: two would rewrite one catalog and repair each
/// other's backups as crashes.
fn lock_root(path: &Path) -> Result<File, ManagerError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    if file.try_lock().is_err() {
        return Err(ManagerError::RootInUse(
            path.parent()
                .and_then(Path::parent)
                .unwrap_or(path)
                .to_path_buf(),
        ));
    }
    Ok(file)
}

/// Leftover `.*.partial` archives of interrupted backups are never valid snapshots, and a
/// sidecar whose archive is not there describes nothing.
fn remove_partials(root: &Path) {
    let Ok(apps) = fs::read_dir(root) else { return };
    for app in apps.flatten() {
        let Ok(files) = fs::read_dir(app.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX) {
                tracing::warn!("removing partial archive {}", f.path().display());
                let _ = fs::remove_file(f.path());
            } else if let Some(id) = name.strip_suffix(crate::catalog::SIDECAR_SUFFIX)
                && !f
                    .path()
                    .with_file_name(format!("{id}{}", crate::catalog::ARCHIVE_SUFFIX))
                    .exists()
            {
                // Written before its archive was moved into place (or left by a delete).
                tracing::warn!("removing sidecar without an archive {}", f.path().display());
                let _ = fs::remove_file(f.path());
            }
        }
    }
}

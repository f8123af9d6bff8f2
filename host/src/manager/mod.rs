//! `BackupManager`: the façade the API and the CLI call to create, list, restore, copy
//! and delete snapshots.
//!
//! Components, each with one job, which never call an operation:
//! - [`gate`]: per-app locks, the waits for a restore's cleanup, heavy-work slots,
//!   cancel flags;
//! - [`store`]: the backup root (mark, process lock), the catalog and sidecars, journals'
//!   paths, partial files;
//! - [`containers`]: stop, start, wait until running, hooks (Docker behind a trait);
//! - [`verify`]: checksum and full check of an archive, and the extraction rules;
//! - [`repos`]: the configured repositories, and which copies in them are this server's;
//! - [`rules`]: what the policies decide (retention, quota, schedules), after the host's
//!   rules no policy can break; it decides, never acts;
//! - [`recovery`]: a restore's rollback, and the repairs run from the journals a crash
//!   left;
//! - [`error`]: the one error type.
//!
//! Operations, one file each, built on those components:
//! - [`backup`]: making a snapshot (stop, archive, start, commit) and its crash repair;
//! - [`restore`]: putting one back with rollback, and its crash repair; [`aside`] is its
//!   journaled state machine (set aside, extract, commit or roll back);
//! - [`browse`]: a snapshot's folders, listed from its entry index;
//! - [`transfer`]: verify, download, import, and fetch (a repository's copy brought back
//!   as a local snapshot): moving snapshots between servers;
//! - [`offsite`]: copies to repositories after a backup (retried), forget, prune, check;
//! - [`policies`]: retention of the local snapshots (after each backup, with the quota's
//!   evictions), schedules, dry runs.
//!
//! The façade is this file and [`run`]: here, opening (the store, then repairs from the
//! journals), list, get, delete, pin and note, stats and metrics; in `run`, the job
//! starters, the one place where an operation follows another (a backup's retention and
//! copies, a restore's fetch, the scheduler's backups). Operations take the façade as
//! their receiver (as rustic_core's commands take its `Repository`) but call only
//! components, never another operation; components import nothing above them.

pub mod admin;
mod aside;
mod backup;
mod browse;
mod containers;
mod error;
mod gate;
mod offsite;
mod policies;
mod recovery;
mod repos;
mod restore;
mod rules;
mod run;
mod store;
mod transfer;
mod verify;

pub use browse::{Download, FileContent, FileInfo, Listing};
pub use error::ManagerError;
pub use restore::{FetchPlan, MountPlan, PathsTarget, PreviewOf, RestorePreview, Selection, Space};
pub use rules::{Decision, RetentionReport};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::archive::index::{self, Index};

use crate::catalog::Snapshot;
use crate::config::Config;
use crate::docker::Docker;
use crate::ids;
use crate::jobs::{Job, Jobs};
use containers::Containers;
use gate::{AppLock, Gate};
use repos::Repos;
use store::Store;
use verify::Verify;

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

/// How a restore ended well: the answer of `wait=true` and the result of its job alike.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Restored {
    pub message: String,
    /// The app restored: always the snapshot's own (a foreign snapshot is refused).
    pub app_id: String,
    pub snapshot_id: String,
    /// Mounts of the snapshot that were not restored, with why: the app no longer mounts
    /// them, or they name a volume of another app or a path appsnap never writes to.
    pub skipped: Vec<String>,
    /// The job (kind `cleanup`) removing the data the restore replaced: it runs after
    /// this answer, and the next backup or restore of the app waits for it.
    pub cleanup_job: Option<String>,
    /// How long the app was down: from the stop of its containers until they ran again
    /// (the extraction happens before, into staging folders, with the app running).
    pub downtime_ms: u64,
    /// Mounts that are mount points on the host: they cannot be staged beside (a rename
    /// cannot leave a mount point), so they were extracted with the app stopped.
    pub extracted_while_stopped: Vec<String>,
    /// A partial restore `beside`: the host folders the paths were put in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored_to: Vec<String>,
}

/// A backup accepted and running: its job, and the task to await for the outcome.
pub struct Started<T = Snapshot> {
    pub job: Job,
    pub done: tokio::task::JoinHandle<Result<T, Arc<ManagerError>>>,
}

pub struct BackupManager {
    config: Arc<Config>,
    docker: Docker,
    /// Stop, start, wait until running, hooks (through `docker`).
    containers: Containers,
    /// The backup root: catalog, sidecars, journals' paths.
    store: Store,
    /// App locks, cleanup waits, heavy-work slots, cancel flags.
    gate: Gate,
    /// Checksums, full checks, and the extraction rules they share with restores.
    verify: Verify,
    /// The offsite repositories, and which copies in them are this server's.
    repos: Repos,
    pub jobs: Jobs,
    pub policies: Arc<crate::policy::Registry>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub notifier: crate::notify::Notifier,
    /// Offsite work (copies, prunes) runs one at a time; its tasks, for the CLI to wait on.
    offsite_slot: tokio::sync::Semaphore,
    offsite_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The entry index read last: a user browses one snapshot click after click, and
    /// each listing would otherwise read and parse the whole index again (~100 ms at
    /// 275,000 entries). Found by the archive's sha256, so a stale one is never used.
    last_index: Mutex<Option<Arc<Index>>>,
    /// The copy browsed last, kept open ([`browse`]).
    last_copy: Mutex<Option<Arc<browse::Browsed>>>,
    /// (snapshot, repository) of each copy task alive, waiting to retry included: one
    /// task per pair, whoever asks.
    copies_running: gate::Claims,
    /// Set by the CLI before it waits for copies: a failed attempt is left `pending` for
    /// the service to retry, rather than keeping the command waiting through the backoff.
    retry_in_service: std::sync::atomic::AtomicBool,
    /// Apps a scrape has shown, so that one whose snapshots are gone shows 0.
    known_apps: Mutex<std::collections::BTreeSet<String>>,
}

impl BackupManager {
    /// Opens the backup root (mark, process lock, partial files, catalog), then repairs
    /// what a crash left — restarts containers a backup had stopped, finishes or rolls
    /// back an interrupted restore — before anything is served. A repair that fails is
    /// logged and retried by [`Self::repair_pending`].
    pub async fn open(config: Config) -> Result<Arc<BackupManager>, ManagerError> {
        let store = Store::open(&config.backup_root, &config.state_dir).await?;
        let docker = Docker::connect(
            &config.host_root,
            std::time::Duration::from_secs(config.docker_timeout_secs.max(1)),
        )?;
        let containers = Containers::new(docker.clone(), config.stop_timeout_secs);
        for (_, _, path) in store.pending_journals() {
            if let Err(e) = recovery::repair(&containers, &path).await {
                tracing::error!("repair from {} failed, retried later: {e}", path.display());
            }
        }
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let notifier = crate::notify::Notifier::start(&config.notify, Arc::clone(&metrics));
        Ok(Arc::new(BackupManager {
            policies: Arc::new(crate::policy::Registry::open(&store.state_dir())?),
            gate: Gate::new(config.max_parallel),
            verify: Verify::new(&config),
            repos: Repos::new(config.repositories.clone()),
            config: Arc::new(config),
            docker,
            containers,
            store,
            jobs: Jobs::default(),
            metrics,
            notifier,
            offsite_slot: tokio::sync::Semaphore::new(1),
            offsite_tasks: Mutex::default(),
            last_index: Mutex::default(),
            last_copy: Mutex::default(),
            copies_running: gate::Claims::default(),
            retry_in_service: std::sync::atomic::AtomicBool::new(false),
            known_apps: Mutex::default(),
        }))
    }

    /// Retries the repairs that failed before (Docker was down, a rollback could not put
    /// the data back): called periodically by the service. An app being worked on is
    /// left for the next pass. Returns what was tried: app id and outcome.
    pub async fn repair_pending(&self) -> Vec<(String, Result<(), String>)> {
        let mut tried = Vec::new();
        for (app_id, operation, path) in self.store.pending_journals() {
            let Ok(lock) = self.gate.lock(&app_id, "repair") else {
                continue;
            };
            if lock.cleanup_running() {
                continue; // a restore's cleanup owns that journal
            }
            let result = recovery::repair(&self.containers, &path).await;
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

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Takes the app's lock for `operation`. Refused while another operation runs, and
    /// while an interrupted one is not repaired (its journal may describe data set aside
    /// that a new operation must not sweep away). The journal of a restore whose cleanup
    /// still runs is not a repair: the operation waits for that cleanup
    /// ([`Self::after_cleanup`]).
    fn lock_app(&self, app_id: &str, operation: &str) -> Result<AppLock, ManagerError> {
        let lock = self.gate.lock(app_id, operation)?;
        if !lock.cleanup_running() {
            self.store.no_journal(app_id, "restore")?;
        }
        self.store.no_journal(app_id, "backup")?;
        Ok(lock)
    }

    /// Waits (saying so in the job) until the cleanup of the app's last restore is done,
    /// if one ran when `lock` was taken; then the app is the caller's, unless that cleanup
    /// left its journal.
    async fn after_cleanup(&self, lock: &AppLock, job: &Job) -> Result<(), ManagerError> {
        if self.gate.wait_for_cleanup(lock, job).await {
            self.store.no_journal(&lock.app_id, "restore")?;
        }
        Ok(())
    }

    /// The snapshot's entry index (browsing and partial restores read it): the one read
    /// last when it describes this archive, else the saved one when it does, else one
    /// made now (on a blocking thread, under a heavy slot) and saved. A save that fails
    /// is logged; the index made is used all the same.
    async fn index_of(&self, snapshot: &Snapshot) -> Result<Arc<Index>, ManagerError> {
        let sha = snapshot.sha256.clone();
        let cached = self.last_index.lock().unwrap().clone();
        if let Some(index) = cached.filter(|i| i.sha256 == sha) {
            return Ok(index);
        }
        let index = Arc::new(self.read_index(snapshot).await?);
        *self.last_index.lock().unwrap() = Some(Arc::clone(&index));
        Ok(index)
    }

    /// For a lookup in the index of `snapshot` that found a damaged block: the index is
    /// forgotten, in memory and on disk, so that the next request builds it again from
    /// the archive, and the request that found it fails with what it was doing.
    fn local_index_damaged<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> impl FnOnce(std::io::Error) -> ManagerError + 'a {
        move |source| {
            let mut last = self.last_index.lock().unwrap();
            if last.as_ref().is_some_and(|i| i.sha256 == snapshot.sha256) {
                *last = None;
            }
            let at = index::path_for(Path::new(&snapshot.file_path));
            let _ = std::fs::remove_file(&at);
            tracing::warn!(snapshot = %snapshot.snapshot_id, "its entry index is damaged, removed: {source}");
            ManagerError::Io {
                context: format!(
                    "reading the entry index of `{}` (it is made again at the next request)",
                    snapshot.snapshot_id
                ),
                source,
            }
        }
    }

    /// Closes the copy kept open for browsing when it is in `repository`: a forget and
    /// prune there may remove what it reads, and the next request finds the copy anew
    /// (or finds that it is gone).
    fn forget_browsed_copy(&self, repository: &str) {
        let mut last = self.last_copy.lock().unwrap();
        if last.as_ref().and_then(|b| b.repository()) == Some(repository) {
            *last = None;
        }
    }

    /// [`Self::index_of`] without the one kept in memory.
    async fn read_index(&self, snapshot: &Snapshot) -> Result<Index, ManagerError> {
        let archive = PathBuf::from(&snapshot.file_path);
        let at = index::path_for(&archive);
        let sha = snapshot.sha256.clone();
        let saved = {
            let at = at.clone();
            tokio::task::spawn_blocking(move || Index::load(&at))
                .await
                .ok()
                .and_then(Result::ok)
        };
        if let Some(index) = saved.filter(|i| i.sha256 == sha) {
            return Ok(index);
        }
        let _slot = self.gate.heavy_slot(None).await;
        let max_entries = self
            .config
            .max_archive_entries
            .max(snapshot.facts.entries.unwrap_or(0));
        let id = snapshot.snapshot_id.clone();
        tokio::task::spawn_blocking(move || {
            let index = index::build(&archive, &sha, max_entries)
                .map_err(|e| ManagerError::Corrupt(format!("cannot index {id}: {e}")))?;
            if let Err(e) = index.save(&at) {
                tracing::warn!(snapshot = %id, "cannot save its index {}: {e}", at.display());
            }
            Ok(index)
        })
        .await
        .map_err(|e| ManagerError::Corrupt(format!("index task: {e}")))?
    }

    /// Asks the job `job_id` to stop (see [`crate::jobs::Job::cancel`]): a backup starts
    /// the app's containers again if it stopped them and keeps no partial archive; a
    /// restore rolls back (staging folders removed, the app as it was); a verify, fetch
    /// or copy ends, a copy `failed` with its reason (a restore that has stopped the app
    /// takes no more cancels: `Job::no_more_cancels`). The job ends `failed` with
    /// `Cancelled` once its work has stopped. `JobNotFound` for an id this process does
    /// not know; `NotCancellable` for a job that has ended or runs to its end.
    pub fn cancel_job(&self, job_id: &str) -> Result<Job, ManagerError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| ManagerError::JobNotFound(job_id.to_string()))?;
        job.cancel()?;
        tracing::info!(job = job_id, kind = %job.info().kind, "cancel requested");
        Ok(job)
    }

    /// Shutdown: archive work in progress stops at its next chunk — a backup then starts
    /// the app's containers again and keeps no partial archive, a restore rolls back, a
    /// verify ends — and containers are no longer waited for.
    pub fn cancel_all(&self) {
        self.gate.cancel_all();
    }

    /// Resolves once no app lock is held (for a graceful shutdown). Cleanups after
    /// restores are not waited for: the next start finishes them from their journals.
    pub async fn idle(&self) {
        self.gate.idle().await;
        let cleaning = self.gate.cleanups_running();
        if cleaning > 0 {
            tracing::info!(
                "{cleaning} removal(s) of data replaced by a restore left for the next start"
            );
        }
    }

    /// Waits for every cleanup after a restore started so far (the CLI waits before it
    /// exits, and the benchmark before its next run).
    pub async fn cleanups_finished(&self) {
        self.gate.cleanups_finished().await;
    }

    /// The compose projects Docker runs (the apps appsnap can back up now).
    pub async fn apps_in_docker(&self) -> Result<Vec<String>, ManagerError> {
        Ok(self.docker.list_apps().await?)
    }

    /// Newest first.
    pub fn list(&self, app_id: Option<&str>) -> Result<Vec<Snapshot>, ManagerError> {
        if let Some(app) = app_id {
            ids::validate("app id", app)?;
        }
        Ok(self.store.list(app_id))
    }

    pub fn get(&self, snapshot_id: &str) -> Result<Snapshot, ManagerError> {
        self.store.get(snapshot_id)
    }

    /// Removes the archive, then the entry: the catalog never lists a file that is gone
    /// and never forgets one that is still there.
    pub fn delete(&self, snapshot_id: &str) -> Result<(), ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        self.store.delete(snapshot_id)
    }

    /// Deletes for a decision taken earlier (a policy, a count rule), unless the snapshot
    /// was pinned since then or is gone. Returns whether it was deleted.
    pub fn delete_unless_pinned(&self, snapshot_id: &str) -> Result<bool, ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        self.store.delete_unless_pinned(snapshot_id)
    }

    /// The policies' decisions, lent to one operation.
    fn rules(&self) -> rules::Rules<'_> {
        rules::Rules {
            policies: &self.policies,
            metrics: &self.metrics,
            notifier: &self.notifier,
            store: &self.store,
            repos: &self.repos,
        }
    }

    /// The configured repository of that name (404 `UnknownRepository` otherwise).
    pub fn repository(&self, name: &str) -> Result<crate::offsite::RepositoryConfig, ManagerError> {
        self.repos.get(name)
    }

    /// What a repository holds (appsnap snapshots only, every server's), optionally of
    /// one app, oldest first.
    pub async fn remote_snapshots(
        &self,
        repository: &str,
        app_id: Option<&str>,
    ) -> Result<Vec<crate::offsite::RemoteSnapshot>, ManagerError> {
        self.repos.list(repository, app_id).await
    }

    /// The copy of `snapshot_id` in `repository` (the newest, where several servers
    /// copied it). Errors: an unknown repository, its listing error, or a copy it does
    /// not hold (`OffsiteError::SnapshotNotFound`).
    pub async fn find_remote(
        &self,
        repository: &str,
        snapshot_id: &str,
    ) -> Result<crate::offsite::RemoteSnapshot, ManagerError> {
        self.repos
            .find(&self.store, Some(repository), snapshot_id)
            .await
    }

    /// Rebuilds the catalog from the archives on disk and their sidecars.
    pub fn reindex(&self) -> Result<usize, ManagerError> {
        self.store.reindex()
    }

    /// Sets `pinned` and/or `note` of a snapshot (an empty note clears it); both survive
    /// a rebuild of the catalog.
    pub fn patch(
        &self,
        snapshot_id: &str,
        pinned: Option<bool>,
        note: Option<String>,
    ) -> Result<Snapshot, ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        self.store.update_durably(snapshot_id, |s| {
            if let Some(p) = pinned {
                s.facts.pinned = p;
            }
            if let Some(n) = note {
                s.facts.note = (!n.is_empty()).then_some(n);
            }
        })
    }

    /// The Prometheus text of a scrape: counters as they stand, gauges from the catalog
    /// and the backup root's filesystem now.
    pub fn metrics_text(&self) -> String {
        let last = self.store.last_backups();
        let mut apps: std::collections::BTreeMap<String, crate::metrics::AppGauges> = self
            .store
            .usage()
            .into_iter()
            .map(|(app, a)| {
                let gauges = crate::metrics::AppGauges {
                    snapshots: a.snapshots,
                    bytes: a.bytes,
                    last_success: last.get(&app).map(|t| t.timestamp()),
                };
                (app, gauges)
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
            self.store.disk().ok().map(|(free, _)| free),
        )
    }

    pub fn stats(&self) -> Result<Stats, ManagerError> {
        let (disk_free_bytes, disk_total_bytes) = self.store.disk()?;
        let mut apps = HashMap::new();
        let (mut total_snapshots, mut total_bytes) = (0, 0);
        for (app, usage) in self.store.usage() {
            total_snapshots += usage.snapshots;
            total_bytes += usage.bytes;
            let quota = self.policies.effective(&app, crate::policy::Kind::Quota);
            let stats = AppStats {
                snapshots: usage.snapshots,
                bytes: usage.bytes,
                quota,
            };
            apps.insert(app, stats);
        }
        Ok(Stats {
            apps,
            total_snapshots,
            total_bytes,
            disk_free_bytes,
            disk_total_bytes,
        })
    }
}

/// Longest path a request may name (bytes).
const MAX_PATH: usize = 4096;

/// `path` as a path of a snapshot (no trailing `/`), or `InvalidPath`: absolute, with an
/// empty, `.` or `..` component, a NUL, or longer than [`MAX_PATH`]. Only ever compared
/// with an index's paths, never joined onto a host path.
fn check_path(path: &str) -> Result<String, ManagerError> {
    let trimmed = path.trim_end_matches('/');
    let bad = path.len() > MAX_PATH
        || path.starts_with('/')
        || path.contains('\0')
        || (!trimmed.is_empty() && trimmed.split('/').any(|c| matches!(c, "" | "." | "..")));
    if bad {
        return Err(ManagerError::InvalidPath(
            path.chars().take(200).collect::<String>(),
        ));
    }
    Ok(trimmed.to_string())
}

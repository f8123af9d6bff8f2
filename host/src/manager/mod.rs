//! `BackupManager`: the one place where snapshots are created, listed, restored and
//! deleted. The API and the CLI are thin layers over it.
//!
//! - [`backup`]: making a snapshot (stop, archive, start, commit) and its crash repair;
//! - [`restore`]: putting one back with rollback, and its crash repair;
//! - [`transfer`]: verify, download and import (moving snapshots between servers);
//! - [`policies`]: quota before a backup, retention after it, schedules, dry runs, and
//!   the host rules no policy can break;
//! - here: opening the backup root (lock, repairs, catalog), per-app locks, list, delete,
//!   stats.

mod backup;
mod policies;
mod restore;
mod transfer;

pub use policies::{Decision, RetentionReport};

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
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
    /// The backup filesystem is full.
    #[error("no space left on the backup filesystem: {0}")]
    NoSpace(String),
    /// Docker failed (engine unreachable, container gone, hook failed).
    #[error(transparent)]
    Docker(DockerError),
    /// Writing or reading an archive failed.
    #[error(transparent)]
    Archive(ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The archive file of a snapshot could not be removed; the catalog still lists it.
    #[error("cannot remove {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: io::Error,
    },
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
    #[error(
        "{step} failed: {cause}; rolling back also failed: {rollback}. The previous data is kept aside and will be put back at the next start of appsnap"
    )]
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
    /// A filesystem operation on the backup root failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
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
        if e.is_no_space() {
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
pub struct Started {
    pub job: Job,
    pub done: tokio::task::JoinHandle<Result<Snapshot, Arc<ManagerError>>>,
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
    pub policies: Arc<crate::policy::Registry>,
    /// Held for the manager's life: one process per backup root.
    _root_lock: File,
}

/// Releases an app's lock when the operation ends, however it ends.
struct AppLock {
    app_id: String,
    busy: Arc<Mutex<HashMap<String, String>>>,
    count: watch::Sender<usize>,
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
            .map_err(io_err(format!("cannot create {}", state.display())))?;
        let lock = lock_root(&state.join("lock"))?;
        let docker = Docker::connect(&config.host_root)?;

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
            if name.ends_with(".backup.journal") {
                backup::recover_backup(&docker, &path).await;
            } else if name.ends_with(".restore.journal") {
                restore::recover_restore(&docker, &path).await;
            } else if name.ends_with(PARTIAL_SUFFIX) {
                tracing::warn!("removing interrupted import {}", path.display());
                let _ = fs::remove_file(&path);
            }
        }
        remove_partials(&root);
        let catalog = tokio::task::spawn_blocking(move || Catalog::open(&root))
            .await
            .expect("catalog open task")?;
        let config_state = config.backup_root.join(STATE_DIR);
        Ok(Arc::new(BackupManager {
            config: Arc::new(config),
            docker,
            catalog: Mutex::new(catalog),
            busy: Arc::default(),
            busy_count: watch::channel(0).0,
            jobs: Jobs::default(),
            policies: Arc::new(crate::policy::Registry::open(&config_state)?),
            _root_lock: lock,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn lock_app(&self, app_id: &str, operation: &str) -> Result<AppLock, ManagerError> {
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
        })
    }

    fn journal_path(&self, app_id: &str, kind: &str) -> PathBuf {
        self.config
            .backup_root
            .join(STATE_DIR)
            .join(format!("{app_id}.{kind}.journal"))
    }

    /// Resolves once no app lock is held (for a graceful shutdown).
    pub async fn idle(&self) {
        let mut rx = self.busy_count.subscribe();
        let _ = rx.wait_for(|&n| n == 0).await;
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
        catalog.remove(snapshot_id);
        catalog.save()?;
        tracing::info!(snapshot = snapshot_id, "snapshot deleted");
        Ok(())
    }

    /// Rebuilds the catalog from the archives on disk.
    pub fn reindex(&self) -> Result<usize, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        Ok(catalog.rebuild()?)
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
    // SAFETY: flock on a valid, owned descriptor; the lock lives as long as `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ManagerError::RootInUse(
            path.parent()
                .and_then(Path::parent)
                .unwrap_or(path)
                .to_path_buf(),
        ));
    }
    Ok(file)
}

/// Leftover `.*.partial` archives of interrupted backups are never valid snapshots.
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
            }
        }
    }
}

//! `BackupManager`: the one place where snapshots are created, listed and deleted. The API
//! and the CLI are thin layers over it.
//!
//! A backup, step by step (each step is a [`Job`] step, visible in the API):
//! 1. find the app (404) and take its per-app lock (409 while another backup runs);
//! 2. run `appsnap.pre-backup` hooks in running containers (failure: nothing was touched);
//! 3. in `stop` mode (the default): write a journal naming the running containers, then
//!    stop them, so a crash of appsnap cannot leave an app down (see [`BackupManager::open`]);
//! 4. archive into `.{id}.tar.gz.partial` on a blocking thread, with progress;
//! 5. start the stopped containers again, whatever step 4 did, and drop the journal;
//! 6. run `appsnap.post-backup` hooks;
//! 7. fsync, rename to `{id}.tar.gz`, add to the catalog: only a complete, checksummed
//!    archive is ever listed.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::error::ErrorBody;
use crate::archive::{self, ArchiveError};
use crate::catalog::{
    ARCHIVE_SUFFIX, ArchiveMeta, Catalog, CatalogError, Origin, PARTIAL_SUFFIX, Snapshot,
};
use crate::config::{BackupMode, Config};
use crate::docker::{App, Docker, DockerError, POST_BACKUP_LABEL, PRE_BACKUP_LABEL};
use crate::ids::{self, IdError};
use crate::jobs::{Job, Jobs};

/// appsnap's own state under the backup root (hidden: ids cannot start with a dot).
const STATE_DIR: &str = ".appsnap";
const ARCHIVE_FORMAT: u32 = 1;

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
        } else {
            ManagerError::Archive(e)
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ManagerError {
    let context = context.into();
    move |source| {
        if archive::is_no_space(&source) {
            ManagerError::NoSpace(format!("{context}: {source}"))
        } else {
            ManagerError::Io { context, source }
        }
    }
}

/// Written before containers are stopped, removed once they run again. Found at start-up,
/// it means appsnap died mid-backup: the containers are started and the partial archive
/// removed.
#[derive(Debug, Serialize, Deserialize)]
struct BackupJournal {
    app_id: String,
    snapshot_id: String,
    stopped: Vec<String>,
    partial: PathBuf,
}

/// Per-app stats for `GET /api/v1/backup/stats`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct AppStats {
    pub snapshots: u64,
    pub bytes: u64,
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

        let journals = fs::read_dir(&state)
            .map_err(io_err(format!("cannot read {}", state.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "journal"));
        for path in journals {
            recover_backup(&docker, &path).await;
        }
        remove_partials(&root);
        let catalog = tokio::task::spawn_blocking(move || Catalog::open(&root))
            .await
            .expect("catalog open task")?;
        Ok(Arc::new(BackupManager {
            config: Arc::new(config),
            docker,
            catalog: Mutex::new(catalog),
            busy: Arc::default(),
            busy_count: watch::channel(0).0,
            jobs: Jobs::default(),
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

    /// Resolves once no app lock is held (for a graceful shutdown).
    pub async fn idle(&self) {
        let mut rx = self.busy_count.subscribe();
        let _ = rx.wait_for(|&n| n == 0).await;
    }

    /// Validates, finds the app and takes its lock (so 400/404/409 come back at once),
    /// then runs the backup as a job in its own task: a client that disconnects does not
    /// abort it halfway.
    pub async fn start_backup(
        self: &Arc<Self>,
        app_id: &str,
        origin: Origin,
        note: Option<String>,
    ) -> Result<Started, ManagerError> {
        ids::validate("app id", app_id)?;
        let app = self.docker.find_app(app_id).await?;
        let lock = self.lock_app(app_id, "backup")?;
        let job = self.jobs.create("backup", app_id);
        let (this, job2) = (Arc::clone(self), job.clone());
        let done = tokio::spawn(async move {
            let _lock = lock;
            let result = this.backup(&app, origin, note, &job2).await;
            match &result {
                Ok(s) => {
                    tracing::info!(app = %app.id, snapshot = %s.snapshot_id, bytes = s.size_bytes, "backup finished");
                    job2.succeed(serde_json::to_value(s).expect("snapshot serializes"));
                }
                Err(e) => {
                    tracing::error!(app = %app.id, "backup failed: {e}");
                    job2.fail(serde_json::to_value(ErrorBody::from(e)).expect("error serializes"));
                }
            }
            result.map_err(Arc::new)
        });
        Ok(Started { job, done })
    }

    async fn backup(
        &self,
        app: &App,
        origin: Origin,
        note: Option<String>,
        job: &Job,
    ) -> Result<Snapshot, ManagerError> {
        tracing::info!(app = %app.id, mounts = app.mounts.len(), "backup started");
        let dir = self.config.backup_root.join(&app.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        let created_at = Utc::now();
        let snapshot_id = self.unique_snapshot_id(&dir, created_at);
        let final_path = dir.join(format!("{snapshot_id}{ARCHIVE_SUFFIX}"));
        let partial = dir.join(format!(".{snapshot_id}{ARCHIVE_SUFFIX}{PARTIAL_SUFFIX}"));
        let meta = ArchiveMeta {
            format: ARCHIVE_FORMAT,
            appsnap_version: env!("CARGO_PKG_VERSION").into(),
            snapshot_id: snapshot_id.clone(),
            app_id: app.id.clone(),
            created_at,
            mounts: app.mounts.clone(),
            origin,
            note: note.clone(),
        };
        let meta_json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");

        job.step("estimating size");
        let sources = app.sources();
        let estimate_sources = sources.clone();
        let total = tokio::task::spawn_blocking(move || archive::estimate(&estimate_sources))
            .await
            .unwrap_or(0);
        job.total(total);

        let running = app.running();
        job.step("running pre-backup hooks");
        for c in &running {
            self.docker.run_hook(c, PRE_BACKUP_LABEL).await?;
        }

        let mut warnings: Vec<String> = app
            .skipped
            .iter()
            .map(|s| format!("not archived: {s}"))
            .collect();
        let stopped: Vec<String> = match self.config.mode_for(&app.id) {
            BackupMode::Live => Vec::new(),
            BackupMode::Stop => running.iter().map(|c| c.id.clone()).collect(),
        };
        let journal = self
            .config
            .backup_root
            .join(STATE_DIR)
            .join(format!("{}.journal", app.id));
        if !stopped.is_empty() {
            job.step("stopping containers");
            let record = BackupJournal {
                app_id: app.id.clone(),
                snapshot_id: snapshot_id.clone(),
                stopped: stopped.clone(),
                partial: partial.clone(),
            };
            crate::catalog::write_atomic(&journal, &serde_json::to_vec(&record).expect("journal"))
                .map_err(io_err("cannot write the backup journal"))?;
            match self.stop_all(&stopped).await {
                Ok(w) => warnings.extend(w),
                Err(e) => {
                    warnings.extend(self.start_all(&stopped).await);
                    let _ = fs::remove_file(&journal);
                    return Err(e);
                }
            }
        }

        job.step("archiving");
        let opts = archive::Options {
            level: self.config.compression_level,
            threads: self.config.threads(),
            skip_dirs: vec![self.config.backup_root.clone()],
            ..archive::Options::default()
        };
        let (progress_job, partial2) = (job.clone(), partial.clone());
        let archived = tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial2)
                .map_err(ArchiveError::Output)?;
            let (summary, file) = archive::write(file, &meta_json, &sources, &opts, &|b| {
                progress_job.progress(b)
            })?;
            file.sync_all().map_err(ArchiveError::Output)?;
            Ok::<_, ArchiveError>(summary)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ArchiveError::Output(io::Error::other(format!(
                "archive task: {e}"
            ))))
        });

        if !stopped.is_empty() {
            job.step("starting containers");
            warnings.extend(self.start_all(&stopped).await);
            let _ = fs::remove_file(&journal);
        }
        job.step("running post-backup hooks");
        for c in &running {
            if let Err(e) = self.docker.run_hook(c, POST_BACKUP_LABEL).await {
                warnings.push(e.to_string());
            }
        }

        let summary = match archived {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e.into());
            }
        };
        job.step("saving");
        let commit = || -> io::Result<()> {
            fs::rename(&partial, &final_path)?;
            File::open(&dir)?.sync_all()
        };
        if let Err(e) = commit() {
            let _ = fs::remove_file(&partial);
            return Err(io_err("cannot move the finished archive into place")(e));
        }
        warnings.extend(summary.warnings);
        let snapshot = Snapshot {
            snapshot_id,
            app_id: app.id.clone(),
            created_at,
            size_bytes: summary.compressed_bytes,
            file_path: final_path.to_string_lossy().into_owned(),
            sha256: summary.sha256,
            mounts: app.mounts.clone(),
            origin,
            note,
            pinned: false,
            warnings,
        };
        {
            let mut catalog = self.catalog.lock().expect("catalog lock");
            catalog.insert(snapshot.clone());
            // On failure the archive stays and is listed again at the next start-up.
            catalog.save()?;
        }
        self.enforce_count(&app.id);
        Ok(snapshot)
    }

    fn unique_snapshot_id(&self, dir: &Path, now: chrono::DateTime<Utc>) -> String {
        let catalog = self.catalog.lock().expect("catalog lock");
        loop {
            let id = ids::new_snapshot_id(now);
            if !catalog.contains(&id) && !dir.join(format!("{id}{ARCHIVE_SUFFIX}")).exists() {
                return id;
            }
        }
    }

    /// Stops every container in `ids`. One that no longer exists is a warning (it cannot
    /// write to the data any more); any other failure aborts the backup.
    async fn stop_all(&self, ids: &[String]) -> Result<Vec<String>, ManagerError> {
        let timeout = self.config.stop_timeout_secs;
        let results =
            futures_util::future::join_all(ids.iter().map(|id| self.docker.stop(id, timeout)))
                .await;
        let mut warnings = Vec::new();
        for (id, result) in ids.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    warnings.push(format!(
                        "container {} disappeared during the backup",
                        short(id)
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(warnings)
    }

    /// Starts every container in `ids`; what fails becomes a warning (a container removed
    /// meanwhile cannot be started, and the snapshot is still good).
    async fn start_all(&self, ids: &[String]) -> Vec<String> {
        let mut warnings = Vec::new();
        for id in ids {
            if let Err(e) = self.docker.start(id).await {
                tracing::error!(container = %id, "could not start container again: {e}");
                warnings.push(format!(
                    "container {} could not be started again: {e}",
                    short(id)
                ));
            }
        }
        warnings
    }

    /// The simple count rule of `max_snapshots_per_app`: oldest unpinned go first.
    fn enforce_count(&self, app_id: &str) {
        let max = self.config.max_snapshots_per_app;
        if max == 0 {
            return;
        }
        let doomed: Vec<String> = {
            let catalog = self.catalog.lock().expect("catalog lock");
            catalog
                .list(Some(app_id))
                .into_iter()
                .filter(|s| !s.pinned)
                .skip(max)
                .map(|s| s.snapshot_id.clone())
                .collect()
        };
        for id in doomed {
            match self.delete(&id) {
                Ok(()) => {
                    tracing::info!(app = app_id, snapshot = %id, "deleted by max_snapshots_per_app")
                }
                Err(e) => {
                    tracing::error!(app = app_id, snapshot = %id, "retention delete failed: {e}")
                }
            }
        }
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

fn short(id: &str) -> &str {
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

/// Start-up repair of a backup that was interrupted by a crash.
async fn recover_backup(docker: &Docker, path: &Path) {
    let journal: BackupJournal = match fs::read(path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(j)) => j,
        other => {
            tracing::error!(
                "unreadable backup journal {} ({other:?}); removed",
                path.display()
            );
            let _ = fs::remove_file(path);
            return;
        }
    };
    tracing::warn!(
        app = %journal.app_id,
        snapshot = %journal.snapshot_id,
        "a backup was interrupted: starting the {} container(s) it had stopped",
        journal.stopped.len()
    );
    let mut all_ok = true;
    for id in &journal.stopped {
        match docker.start(id).await {
            Ok(()) => tracing::info!(container = %short(id), "started again"),
            Err(e) if e.is_not_found() => {
                tracing::warn!(container = %short(id), "container no longer exists")
            }
            Err(e) => {
                all_ok = false;
                tracing::error!(container = %short(id), "could not start: {e}");
            }
        }
    }
    let _ = fs::remove_file(&journal.partial);
    // Keep the journal while Docker is unreachable, so the next start-up tries again.
    if all_ok {
        let _ = fs::remove_file(path);
    }
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

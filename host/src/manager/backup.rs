//! Creating a snapshot, step by step (each step is a [`Job`] step, visible in the API):
//! 1. find the app (404) and take its per-app lock (409 while another backup or restore runs);
//! 2. run `appsnap.pre-backup` hooks in running containers (failure: nothing was touched);
//! 3. in `stop` mode (the default): write a journal naming the running containers, then
//!    stop them, so a crash of appsnap cannot leave an app down (see [`recover_backup`]);
//! 4. archive into `.{id}.tar.gz.partial` on a blocking thread, with progress;
//! 5. start the stopped containers again, whatever step 4 did, and drop the journal;
//! 6. run `appsnap.post-backup` hooks;
//! 7. fsync, rename to `{id}.tar.gz`, add to the catalog: only a complete, checksummed
//!    archive is ever listed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{BackupManager, ManagerError, Started, io_err, short};
use crate::api::error::ErrorBody;
use crate::archive::{self, ArchiveError};
use crate::catalog::{ARCHIVE_SUFFIX, ArchiveMeta, Origin, PARTIAL_SUFFIX, Snapshot};
use crate::config::BackupMode;
use crate::docker::{App, Docker, POST_BACKUP_LABEL, PRE_BACKUP_LABEL};
use crate::ids;
use crate::jobs::Job;

const ARCHIVE_FORMAT: u32 = 1;

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

impl BackupManager {
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
        job.step("asking the quota policy");
        let evict = self.quota_admit(&app.id, total).await?;

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
        let journal = self.journal_path(&app.id, "backup");
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
        job.step("applying policies");
        self.after_backup(&app.id, evict).await;
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
    pub(super) async fn stop_all(&self, ids: &[String]) -> Result<Vec<String>, ManagerError> {
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
    pub(super) async fn start_all(&self, ids: &[String]) -> Vec<String> {
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
}

/// Start-up repair of a backup that was interrupted by a crash.
pub(super) async fn recover_backup(docker: &Docker, path: &Path) {
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

//! Offsite copies, from the manager's side: running the copies a snapshot owes as jobs
//! (retried, backing off), recording where each snapshot is, forgetting copies, pruning
//! and checking repositories. (Fetching a copy back is a transfer, in `transfer`; which
//! copies are this server's is the `repos` component's to say.)
//!
//! A copy never touches the local snapshot: it reads the `.tar.gz`, inflates it in
//! parallel and hands the tar stream to [`crate::offsite::copy`]. Its state lives in the
//! catalog (and the sidecar) per snapshot and repository: `pending` → `copying` → `done`,
//! or `failed` after its attempts. `pending` and `copying` left by a stop are picked up
//! again at the next start ([`BackupManager::resume_copies`]).
//!
//! Concurrency: copies and prunes take the one offsite slot, so they run one at a time
//! in this process (a check does not take it; one that reads every pack waits for a heavy
//! slot instead). A copy task claims its (snapshot, repository) pair for its whole life,
//! backoff included, so that whoever asks — a backup, a resume, `POST …/copy` — never
//! starts a second copy of the same pair. Repository calls (rustic_core is synchronous)
//! run on blocking threads.
//!
//! Several servers may share one repository, and a snapshot id survives a download and
//! an import: forget, retention and quota only ever touch this server's copies (see
//! `Repos::copies_of`), while a fetch may take another server's copy of the id
//! (preferring the tar stream the local record names).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use super::BackupManager;
use super::error::ManagerError;
use super::gate::Claim;
use super::repos::{blocking, drop_copy_record, new_copy};
use super::rules::RetentionReport;
use crate::archive;
use crate::catalog::{Copy, CopyState, Snapshot};
use crate::ids;
use crate::jobs::Job;
use crate::offsite::{self, Description, OffsiteError, RepositoryConfig};
use crate::policy::Kind;

impl BackupManager {
    /// Starts the copies `snapshot` owes (those `pending`), each as its own job, unless
    /// a task for it is alive already.
    /// A record naming a repository no longer configured is left `pending`, untouched:
    /// it resumes should the repository come back. Returns at once; nothing is awaited.
    pub(super) fn spawn_copies(self: &Arc<Self>, snapshot: &Snapshot) {
        for (name, copy) in &snapshot.facts.copies {
            if copy.state != CopyState::Pending {
                continue;
            }
            let Ok(repo) = self.repos.get(name) else {
                continue;
            };
            let Some(claim) = self.copies_running.claim(&snapshot.snapshot_id, name) else {
                continue;
            };
            let job = self.jobs.create("copy", &snapshot.app_id);
            self.spawn_copy(snapshot.snapshot_id.clone(), repo, job, claim);
        }
    }

    /// Copies left `pending` or `copying` by a stop of the service start again.
    /// Called once as the service starts: no task survived the stop, so `copying` is
    /// reset to `pending` (in one pass and one save of the catalog) before the copies are
    /// spawned. `failed` copies are not retried: that takes `POST …/copy`.
    pub fn resume_copies(self: &Arc<Self>) {
        // A copy left `copying` has no task any more: it is owed again (saved only when
        // there was one).
        self.store.update_all(|s| {
            let mut reset = false;
            for c in s.facts.copies.values_mut() {
                if c.state == CopyState::Copying {
                    c.state = CopyState::Pending;
                    reset = true;
                }
            }
            reset
        });
        let unfinished: Vec<Snapshot> = self.store.read(|catalog| {
            catalog
                .all()
                .filter(|s| {
                    s.facts
                        .copies
                        .values()
                        .any(|c| c.state == CopyState::Pending)
                })
                .cloned()
                .collect()
        });
        for s in &unfinished {
            tracing::info!(snapshot = %s.snapshot_id, "resuming its offsite copies");
            self.spawn_copies(s);
        }
    }

    /// `POST /api/v1/backup/snapshots/{id}/copy?repository=NAME`: copies now (again, if
    /// it failed or was done before).
    /// The record starts afresh (`pending`, no attempts, no error) and the job is
    /// returned at once. Errors: `SnapshotNotFound`, an unknown repository, or `Busy`
    /// while a task for the pair is alive, copying or waiting for its next attempt.
    pub fn start_copy(
        self: &Arc<Self>,
        snapshot_id: &str,
        repository: &str,
    ) -> Result<Job, ManagerError> {
        let snapshot = self.store.get(snapshot_id)?;
        let repo = self.repos.get(repository)?;
        // Copying, or waiting to retry: a second task would make a second copy.
        let claim = self
            .copies_running
            .claim(snapshot_id, repository)
            .ok_or_else(|| ManagerError::Busy {
                app_id: snapshot.app_id.clone(),
                operation: format!("copy to `{repository}` (copying or waiting to retry)"),
            })?;
        self.set_copy(snapshot_id, repository, |c| {
            *c = new_copy(CopyState::Pending)
        });
        let job = self.jobs.create("copy", &snapshot.app_id);
        self.spawn_copy(snapshot.snapshot_id, repo, job.clone(), claim);
        Ok(job)
    }

    /// Runs `copy_with_retries` in a task the CLI can wait for (`offsite_finished`). The
    /// claim moves into the task and is released when the task ends, however it ends.
    fn spawn_copy(
        self: &Arc<Self>,
        snapshot_id: String,
        repo: RepositoryConfig,
        job: Job,
        claim: Claim,
    ) {
        let this = Arc::clone(self);
        self.track(tokio::spawn(async move {
            let _claim = claim;
            this.copy_with_retries(&snapshot_id, &repo, &job).await;
        }));
    }

    /// Keeps `handle` for `offsite_finished`, dropping the handles of tasks already
    /// finished so that a long-running service does not collect them for ever.
    fn track(&self, handle: tokio::task::JoinHandle<()>) {
        let mut running = self.offsite_tasks.lock().expect("offsite tasks");
        running.retain(|h| !h.is_finished());
        running.push(handle);
    }

    /// Waits for every copy and prune started so far (the CLI waits before it exits).
    /// A copy whose attempt fails is not retried here: it stays `pending`, and the
    /// service retries it at its next start.
    /// From this call on, for the rest of the process and every copy, a failed attempt
    /// is left `pending` (this is the CLI's last step). Tasks started while it waits (a
    /// prune after a forget) are waited for too.
    pub async fn offsite_finished(&self) {
        self.retry_in_service.store(true, Ordering::SeqCst);
        loop {
            let handles: Vec<_> =
                std::mem::take(&mut *self.offsite_tasks.lock().expect("offsite tasks"));
            if handles.is_empty() {
                return;
            }
            // A copy may start a prune (its retention forgot something): wait for it too.
            for h in handles {
                let _ = h.await;
            }
        }
    }

    /// Starts a prune of `repository` as a job (kind `prune`): what forgotten snapshots
    /// left unused is marked, and what an earlier prune marked long enough ago deleted.
    /// Returns the job at once (an unknown repository is the only error); the prune waits
    /// for the offsite slot, and its job's result is the prune's report.
    pub fn start_prune(self: &Arc<Self>, repository: &str) -> Result<Job, ManagerError> {
        let repo = self.repos.get(repository)?;
        refuse_append_only(&repo)?;
        self.forget_browsed_copy(repository);
        let job = self.jobs.create("prune", "");
        let (this, job2) = (Arc::clone(self), job.clone());
        self.track(tokio::spawn(async move {
            // Never beside a copy of this process: the prune's plan would not see the
            // packs the copy is writing. (Other servers are covered by keep-delete.)
            let _slot = this.offsite_slot.acquire().await.expect("offsite slot");
            job2.step(&format!("pruning `{}`", repo.name));
            let name = repo.name.clone();
            match blocking("prune task", move || offsite::prune(&repo)).await {
                Ok(p) => {
                    tracing::info!(repository = %name, marked = p.packs_marked, deleted = p.packs_deleted,
                        before = p.bytes_before, after = p.bytes_after, "repository pruned");
                    job2.succeed(serde_json::to_value(&p).expect("prune report serializes"));
                }
                Err(e) => {
                    tracing::warn!(repository = %name, "prune failed: {e}");
                    job2.fail(Arc::new(e));
                }
            }
        }));
        Ok(job)
    }

    /// Starts a check of `repository` as a job (kind `check`); its result lists what is
    /// wrong, if anything. `read_data` downloads and checks every pack.
    /// Returns the job at once (an unknown repository is the only error). A check does
    /// not wait for copies or prunes, as it takes no offsite slot.
    pub fn start_check(
        self: &Arc<Self>,
        repository: &str,
        read_data: bool,
    ) -> Result<Job, ManagerError> {
        let repo = self.repos.get(repository)?;
        let job = self.jobs.create("check", "");
        let (this, job2) = (Arc::clone(self), job.clone());
        self.track(tokio::spawn(async move {
            job2.step(&format!("checking `{}`", repo.name));
            // Reading every pack back is heavy work (network, inflate, hashing): it waits
            // its turn like a backup or a verify, so repeated requests cannot pile up.
            let _slot = match read_data {
                true => Some(this.gate.heavy_slot(Some(&job2)).await),
                false => None,
            };
            match blocking("check task", move || offsite::check(&repo, read_data)).await {
                Ok(c) => job2.succeed(serde_json::to_value(&c).expect("check report serializes")),
                Err(e) => job2.fail(Arc::new(e)),
            }
        }));
        Ok(job)
    }

    /// The life of one copy task: up to `offsite_attempts` attempts, each holding the
    /// offsite slot, with the copy's record and `job` kept up to date.
    ///
    /// Each attempt first asks the quota bound to the app's copies in the repository; a
    /// denial fails the copy at once (`failed`, no retry: no attempt changes the answer).
    /// A success is `done`, and then — with the slot released — come the quota's
    /// evictions and the repository's retention (`after_copy`). A shutdown leaves the
    /// copy `pending` for the next start. Any other failure is `pending` with its error
    /// until the last attempt, which is `failed` and raises an alert. Between attempts the
    /// slot is free for other copies, and the wait grows 4× from `offsite_retry_secs`,
    /// at most a day; under the CLI (`offsite_finished`) there is no wait, the copy stays
    /// `pending`. A snapshot deleted meanwhile ends the task with `SnapshotNotFound`.
    async fn copy_with_retries(
        self: &Arc<Self>,
        snapshot_id: &str,
        repo: &RepositoryConfig,
        job: &Job,
    ) {
        // Waits between attempts grow 4× from `offsite_retry_secs`.
        let base = self.config.offsite_retry_secs.max(1);
        let attempts = self.config.offsite_attempts.max(1);
        let mut evict = Vec::new();
        for attempt in 1..=attempts {
            // One copy at a time: each inflates on every core and fills the uplink.
            // A cancel ends the wait for the slot too (another copy may hold it for hours).
            let _slot = tokio::select! {
                slot = self.offsite_slot.acquire() => slot.expect("offsite slot"),
                _ = job.cancel_asked() => return self.copy_cancelled(snapshot_id, repo, job),
            };
            if job.cancel_requested() {
                return self.copy_cancelled(snapshot_id, repo, job);
            }
            let Ok(snapshot) = self.store.get(snapshot_id) else {
                job.fail(Arc::new(ManagerError::SnapshotNotFound(snapshot_id.into())));
                return;
            };
            self.set_copy(snapshot_id, &repo.name, |c| {
                c.state = CopyState::Copying;
                c.attempts = attempt;
            });
            let admitted = match self
                .rules()
                .quota_admit_at(
                    &snapshot.app_id,
                    &repo.name,
                    snapshot.facts.tar_bytes.unwrap_or(snapshot.size_bytes),
                )
                .await
            {
                Ok(ids) => Ok(ids),
                // The quota bound to the repository refuses it: no retry changes that.
                Err(e @ ManagerError::QuotaDenied { .. }) => {
                    tracing::warn!(snapshot = %snapshot_id, repository = %repo.name, "offsite copy refused: {e}");
                    self.set_copy(snapshot_id, &repo.name, |c| {
                        c.state = CopyState::Failed;
                        c.error = Some(e.to_string());
                    });
                    self.metrics.copy_ended(&repo.name, false);
                    job.fail(Arc::new(e));
                    return;
                }
                Err(e) => Err(e),
            };
            job.step(&format!("copying to `{}` (attempt {attempt})", repo.name));
            let result = match admitted {
                Ok(ids) => {
                    evict = ids;
                    self.copy_once(&snapshot, repo, job, attempt > 1).await
                }
                Err(e) => Err(e),
            };
            self.metrics.copy_ended(&repo.name, result.is_ok());
            let error = match result.map_err(|e| e.or_cancelled(job)) {
                Ok(copied) => {
                    self.set_copy(snapshot_id, &repo.name, |c| {
                        c.state = CopyState::Done;
                        c.error = None;
                        c.repository_snapshot = Some(copied.repository_snapshot.clone());
                        c.bytes_uploaded = Some(copied.bytes_uploaded);
                    });
                    tracing::info!(snapshot = %snapshot_id, repository = %repo.name,
                        read = copied.bytes_read, uploaded = copied.bytes_uploaded, "offsite copy done");
                    drop(_slot);
                    // The copy is complete: now the repository's quota evictions and
                    // retention (never the other way round).
                    let (forgotten, retention) =
                        self.after_copy(&snapshot.app_id, repo, evict).await;
                    job.succeed(serde_json::json!({
                        "snapshot_id": snapshot_id,
                        "repository": repo.name,
                        "repository_snapshot": copied.repository_snapshot,
                        "bytes_read": copied.bytes_read,
                        "bytes_uploaded": copied.bytes_uploaded,
                        "format": copied.format,
                        "evicted": forgotten,
                        "retention": retention,
                    }));
                    return;
                }
                Err(ManagerError::Cancelled(_)) => {
                    return self.copy_cancelled(snapshot_id, repo, job);
                }
                Err(ManagerError::ShuttingDown) => {
                    // Not a failure: the next start resumes it.
                    self.set_copy(snapshot_id, &repo.name, |c| c.state = CopyState::Pending);
                    job.fail(Arc::new(ManagerError::ShuttingDown));
                    return;
                }
                Err(e) => e,
            };
            tracing::warn!(snapshot = %snapshot_id, repository = %repo.name, attempt, "offsite copy failed: {error}");
            let last = attempt == attempts;
            self.set_copy(snapshot_id, &repo.name, |c| {
                c.state = if last {
                    CopyState::Failed
                } else {
                    CopyState::Pending
                };
                c.error = Some(error.to_string());
            });
            if last {
                let mut notice = crate::notify::Notice::new(
                    crate::notify::Event::OffsiteFailed,
                    Some(&snapshot.app_id),
                    format!(
                        "Offsite copy of {} to {} failed",
                        snapshot.app_id, repo.name
                    ),
                    error.to_string(),
                );
                notice.snapshot = Some(snapshot_id.to_string());
                self.notifier.send(notice);
                job.fail(Arc::new(error));
                return;
            }
            drop(_slot);
            if self.retry_in_service.load(Ordering::SeqCst) {
                tracing::warn!(snapshot = %snapshot_id, repository = %repo.name,
                    "offsite copy left pending: the service retries it at its next start");
                job.fail(Arc::new(error));
                return;
            }
            // At most a day between attempts, however many the config allows.
            let wait = base
                .saturating_mul(4u64.saturating_pow(attempt - 1))
                .min(86_400);
            job.step(&format!(
                "attempt {attempt} failed, retrying in {wait} s: {error}"
            ));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
                _ = job.cancel_asked() => return self.copy_cancelled(snapshot_id, repo, job),
            }
        }
    }

    /// A copy whose job was cancelled: recorded `failed` with why (nothing retries it;
    /// a new copy can be asked for), the job `Cancelled`. What the attempt uploaded is
    /// unreferenced data the repository's next prune removes.
    fn copy_cancelled(&self, snapshot_id: &str, repo: &RepositoryConfig, job: &Job) {
        let error = ManagerError::Cancelled(job.info().kind);
        tracing::info!(snapshot = %snapshot_id, repository = %repo.name, "offsite copy cancelled");
        self.set_copy(snapshot_id, &repo.name, |c| {
            c.state = CopyState::Failed;
            c.error = Some(error.to_string());
        });
        job.fail(Arc::new(error));
    }

    /// After a copy: the evictions its quota asked for, then the repository's retention.
    /// Failures are logged, never the copy's. Returns what was evicted and the retention
    /// report, for the job's result.
    /// Snapshots pinned by now are spared the evictions. The retention report is `None`
    /// when no retention is bound to the app's copies there, or when the pass could not
    /// run (a policy that traps still gives a report, with its error).
    async fn after_copy(
        self: &Arc<Self>,
        app_id: &str,
        repo: &RepositoryConfig,
        evict: Vec<String>,
    ) -> (Vec<String>, Option<super::rules::RetentionReport>) {
        if repo.append_only {
            // Forgetting is the admin machine's work there (`appsnap repo forget`).
            if !evict.is_empty() {
                tracing::warn!(app = app_id, repository = %repo.name, "the quota asks to forget {evict:?}, but the repository is append-only: its admin must");
            }
            return (Vec::new(), None);
        }
        let pinned = self.store.pinned_ids();
        let evict: Vec<String> = evict
            .into_iter()
            .filter(|id| !pinned.contains(id))
            .collect();
        if let Err(e) = self.forget_at(repo, evict.clone()).await {
            tracing::error!(app = app_id, repository = %repo.name, "quota eviction failed: {e}");
        }
        match self.retention_at(app_id, &repo.name, false).await {
            Ok(r) if r.policy.is_some() => (evict, Some(r)),
            Ok(_) => (evict, None),
            Err(e) => {
                tracing::error!(app = app_id, repository = %repo.name, "retention after copy failed: {e}");
                (evict, None)
            }
        }
    }

    /// One attempt: streams the local archive's tar stream (inflated on `threads`
    /// threads) into the repository, on a blocking thread, with a description that lets
    /// the copy be listed, checked and restored with nothing else of this server left.
    /// `repair` (every attempt after the first) rebuilds the repository's index first, in
    /// case an earlier attempt was cut short. A snapshot without the tar stream's sha256
    /// is verified and hashed once before its first copy. A shutdown is `ShuttingDown`.
    async fn copy_once(
        &self,
        snapshot: &Snapshot,
        repo: &RepositoryConfig,
        job: &Job,
        repair: bool,
    ) -> Result<offsite::Copied, ManagerError> {
        let tar_sha256 = match &snapshot.facts.tar_sha256 {
            Some(sha) => sha.clone(),
            None => self.record_tar_sha256(snapshot, job).await?,
        };
        let tar_bytes = match snapshot.facts.tar_bytes {
            Some(b) => b,
            None => self
                .get(&snapshot.snapshot_id)?
                .facts
                .tar_bytes
                .unwrap_or(0),
        };
        let description = Description {
            appsnap: 1,
            app_id: snapshot.app_id.clone(),
            snapshot_id: snapshot.snapshot_id.clone(),
            created_at: snapshot.facts.created_at,
            tar_sha256,
            tar_bytes,
            entries: snapshot.facts.entries,
            mounts: snapshot.mounts.clone(),
            origin: snapshot.facts.origin,
            note: snapshot.facts.note.clone(),
            root_id: Some(self.store.root_id().to_string()),
            format: offsite::Format::Tar,
            pinned: snapshot.facts.pinned,
        };
        // The entry index goes with the copy, so that the copy can be browsed; one that
        // cannot be made or read only costs that (and the copy is one tar file: a tree is
        // planned from the index).
        let index = match self.index_of(snapshot).await {
            Ok(loaded) => {
                let at = archive::index::path_for(Path::new(&snapshot.file_path));
                let file = tokio::fs::read(&at).await.map_err(|e| e.to_string());
                file.map(|file| (file, loaded))
            }
            Err(e) => Err(e.to_string()),
        };
        let (index, loaded) = match index {
            Ok((file, loaded)) => (Some(file), Some(loaded)),
            Err(e) => {
                tracing::warn!(snapshot = %snapshot.snapshot_id, "the copy goes without its entry index (it cannot be browsed): {e}");
                (None, None)
            }
        };
        job.total(tar_bytes);
        let progress = Arc::new(offsite::Progress::default());
        let (path, threads, cancel, repo) = (
            PathBuf::from(&snapshot.file_path),
            self.config.threads(),
            self.gate.new_cancel(Some(job)),
            repo.clone(),
        );
        let (sha256, scratch) = (snapshot.sha256.clone(), self.store.state_dir());
        let ticker = spawn_progress(job.clone(), job.info().step, Arc::clone(&progress));
        let copied = tokio::task::spawn_blocking(move || {
            // An index that cannot be read whole only costs the tree.
            let plan = loaded.as_ref().and_then(|index| {
                offsite::tree::plan(index, description.tar_bytes)
                    .inspect_err(|e| tracing::warn!(repository = %repo.name, "copied as one tar file: the entry index: {e}"))
                    .ok()
                    .flatten()
            });
            let copy = |input, index| {
                let cancel = Some(cancel.clone());
                offsite::copy(&repo, &description, index, input, &progress, cancel, repair)
            };
            let as_tar = |index: Option<Vec<u8>>| {
                let tar =
                    archive::read::open_tar_stream(&path, threads).map_err(OffsiteError::Local)?;
                copy(offsite::Input::Tar(tar), index)
            };
            let (Some(plan), Some(loaded)) = (plan, loaded) else {
                return as_tar(index);
            };
            // The tree is read from many places of the archive: its sha256 first proves
            // it is the file whose stream the description names.
            archive::check_sha256(&path, &sha256)
                .map_err(|e| OffsiteError::Local(io::Error::other(e.to_string())))?;
            let input = offsite::Input::Tree {
                local: Arc::new(archive::index::Local {
                    archive: path.clone(),
                    index: loaded,
                }),
                plan,
                scratch,
            };
            let copied = copy(input, index.clone());
            match copied {
                Err(OffsiteError::NotATree(why)) => {
                    tracing::warn!(repository = %repo.name, "copied as one tar file instead: {why}");
                    as_tar(index)
                }
                other => other,
            }
        })
        .await;
        ticker.abort();
        match copied {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(OffsiteError::Cancelled)) => Err(ManagerError::ShuttingDown),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ManagerError::Io {
                context: "copy task".into(),
                source: io::Error::other(e.to_string()),
            }),
        }
    }

    /// For a snapshot without the tar stream's sha256 (an import, an older backup, a
    /// backup made with no repository configured, a pre-copy assembly): verify it (the
    /// archive's own checksum, and a full read unless it was checked before), then hash
    /// its stream once, and record both the sha256 and the length.
    /// So the description's sha256 is that of a checked archive: one that fails either
    /// read is `Corrupt`, and the copy's attempt fails with it.
    async fn record_tar_sha256(
        &self,
        snapshot: &Snapshot,
        job: &Job,
    ) -> Result<String, ManagerError> {
        job.step("verifying the local archive before its first copy");
        // A checked archive (a pre-copy backup's, say) needs only its sha256 to prove it
        // is the file that was checked.
        match snapshot.checked() {
            Some(checked) => {
                self.verify.checksum(snapshot, checked).await?;
            }
            None => {
                let (_, new) = self
                    .verify
                    .file(snapshot, job, self.gate.new_cancel(Some(job)))
                    .await?;
                self.store.record_check(&snapshot.snapshot_id, new);
            }
        }
        let (path, threads) = (PathBuf::from(&snapshot.file_path), self.config.threads());
        let (sha, len) = tokio::task::spawn_blocking(move || {
            let mut tar = archive::read::open_tar_stream(&path, threads)?;
            let mut hash = HashWriter::default();
            let len = io::copy(&mut tar, &mut hash)?;
            Ok::<_, io::Error>((hash.hex(), len))
        })
        .await
        .map_err(|e| ManagerError::Io {
            context: "hashing task".into(),
            source: io::Error::other(e.to_string()),
        })?
        .map_err(|e| ManagerError::Corrupt(e.to_string()))?;
        self.store.update(&snapshot.snapshot_id, |s| {
            s.facts.tar_sha256 = Some(sha.clone());
            s.facts.tar_bytes = Some(len);
        })?;
        Ok(sha)
    }

    /// Changes one copy's record (created if missing), stamping `updated_at`.
    /// A snapshot deleted meanwhile has nothing to change. A catalog that cannot be saved
    /// is only logged, never the copy's error: the copy itself goes on.
    fn set_copy(&self, snapshot_id: &str, repository: &str, change: impl FnOnce(&mut Copy)) {
        let saved = self.store.update(snapshot_id, |s| {
            let copy = s
                .facts
                .copies
                .entry(repository.to_string())
                .or_insert_with(|| new_copy(CopyState::Pending));
            change(copy);
            copy.updated_at = Utc::now();
        });
        if let Err(e) = saved {
            tracing::error!(snapshot = %snapshot_id, "cannot save the copy state: {e}");
        }
    }

    /// Deletes a snapshot where `location` says: `local` (the archive, as `delete`), a
    /// repository's name (its copies there are forgotten, and a prune job starts), or
    /// `all`. A location that does not hold it is 404, and nothing is deleted.
    ///
    /// Only this server's copies are forgotten. A named repository holding only other
    /// servers' copies of the id is `OffsiteError::NotOurs`, naming them (holding none:
    /// `OffsiteError::SnapshotNotFound`). With `all`, repositories without a copy are
    /// passed over, the local archive goes last, and the call is 404 only when no
    /// location held the snapshot. Repositories are handled in order and an error stops
    /// there: those before it stay forgotten. Each prune runs as a job of its own; this
    /// does not wait for it.
    pub async fn delete_at(
        self: &Arc<Self>,
        snapshot_id: &str,
        location: &str,
    ) -> Result<(), ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        let repos: Vec<RepositoryConfig> = match location {
            "local" => Vec::new(),
            "all" => self.repos.all().to_vec(),
            name => vec![self.repos.get(name)?],
        };
        let local = self.store.get(snapshot_id).ok();
        if location == "local" && local.is_none() {
            return Err(ManagerError::SnapshotNotFound(snapshot_id.into()));
        }
        // Refused before anything changes: under `all`, the local archive must not go
        // while a copy that cannot be forgotten stays behind unbeknownst to the user.
        for repo in repos.iter().filter(|r| r.append_only) {
            if location == "all" {
                let (own, _) = self.repos.copies_of(&self.store, &repo.name, None).await?;
                if !own.iter().any(|r| r.snapshot_id == snapshot_id) {
                    continue;
                }
            }
            refuse_append_only(repo)?;
        }
        let mut forgotten = 0;
        for repo in repos {
            let (own, others) = self.repos.copies_of(&self.store, &repo.name, None).await?;
            let ids: Vec<String> = own
                .iter()
                .filter(|r| r.snapshot_id == snapshot_id)
                .map(|r| r.repository_snapshot.clone())
                .collect();
            if ids.is_empty() && location != "all" {
                let others: Vec<&str> = others
                    .iter()
                    .filter(|r| r.snapshot_id == snapshot_id)
                    .map(|r| r.repository_snapshot.as_str())
                    .collect();
                return Err(match others.is_empty() {
                    true => OffsiteError::SnapshotNotFound {
                        name: repo.name,
                        snapshot_id: snapshot_id.into(),
                    },
                    false => OffsiteError::NotOurs {
                        name: repo.name,
                        snapshot_id: snapshot_id.into(),
                        others: others.join(", "),
                    },
                }
                .into());
            }
            let n = self.repos.forget_exact(&repo, ids).await?;
            if n > 0 {
                tracing::info!(snapshot = %snapshot_id, repository = %repo.name, copies = n, "offsite copies forgotten");
                drop_copy_record(&self.store, snapshot_id, &repo.name);
                self.start_prune(&repo.name)?;
            }
            forgotten += n;
        }
        match location {
            "local" => self.store.delete(snapshot_id),
            "all" if local.is_some() => self.store.delete(snapshot_id),
            "all" if forgotten == 0 => Err(ManagerError::SnapshotNotFound(snapshot_id.into())),
            _ => Ok(()),
        }
    }

    /// Runs the retention policy bound to the app's copies in `repository` (after each
    /// copy there, and on demand). The policy is shown what the repository holds of the
    /// app, also copies other servers made; pins of local snapshots count there too. What
    /// it deletes is forgotten in the repository, and a prune follows.
    ///
    /// Errors: `InvalidId`, an unknown repository, a binding that cannot be used, a
    /// repository that cannot be listed, or a forget that fails (then no prune starts).
    /// The prune is a job of its own: this returns before it ends.
    pub async fn retention_at(
        self: &Arc<Self>,
        app_id: &str,
        repository: &str,
        dry_run: bool,
    ) -> Result<RetentionReport, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        let repo = self.repos.get(repository)?;
        if !dry_run {
            refuse_append_only(&repo)?;
        }
        let binding = self
            .policies
            .effective_at(app_id, Kind::Retention, repository);
        let shown = match &binding {
            // No policy: the repository is not even read.
            None => Vec::new(),
            Some(_) => self.rules().remote_infos(app_id, repository).await?,
        };
        let mut report = self.rules().judge(app_id, binding, &shown, dry_run).await?;
        report.repository = Some(repo.name.clone());
        if dry_run || report.deleted.is_empty() {
            return Ok(report);
        }
        // A pin set since the policy decided still protects.
        let pinned = self.store.pinned_ids();
        let ids: Vec<String> = report
            .deleted
            .iter()
            .map(|d| d.snapshot_id.clone())
            .filter(|id| !pinned.contains(id))
            .collect();
        self.forget_at(&repo, ids).await?;
        Ok(report)
    }

    /// Forgets this server's copies of `snapshot_ids` in `repo` (a policy decided so;
    /// another server's copies of the same ids stay), drops their copy records, and
    /// starts a prune.
    /// Ids the repository holds no copy of are passed over. The repository is listed
    /// first, even for one id; an empty `snapshot_ids` reads nothing.
    pub(super) async fn forget_at(
        self: &Arc<Self>,
        repo: &RepositoryConfig,
        snapshot_ids: Vec<String>,
    ) -> Result<(), ManagerError> {
        if self.repos.forget(&self.store, repo, &snapshot_ids).await? > 0 {
            self.start_prune(&repo.name)?;
        }
        Ok(())
    }
}

/// `AppendOnly` for a repository this server only adds to: forgets and prunes there are
/// refused before any work starts (the storage would refuse them half-way otherwise).
fn refuse_append_only(repo: &RepositoryConfig) -> Result<(), ManagerError> {
    match repo.append_only {
        true => Err(OffsiteError::AppendOnly(repo.name.clone()).into()),
        false => Ok(()),
    }
}

/// Mirrors a copy's counters into its job every half second: the tar stream read as
/// `bytes_done`, what went to the storage in the step's text.
/// It never ends by itself: the caller aborts it once the copy returns. The step text is
/// only rewritten when the uploaded count changed.
fn spawn_progress(
    job: Job,
    step: String,
    progress: Arc<offsite::Progress>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut shown = 0;
        loop {
            tick.tick().await;
            job.progress(progress.bytes_read.load(Ordering::Relaxed));
            let uploaded = progress.bytes_uploaded.load(Ordering::Relaxed);
            if uploaded != shown {
                shown = uploaded;
                job.step(&format!("{step}: {uploaded} bytes uploaded"));
            }
        }
    })
}

/// A sink that only hashes: `io::copy` into it gives a stream's sha256 and length
/// without holding the stream.
#[derive(Default)]
struct HashWriter(sha2::Sha256);

impl HashWriter {
    fn hex(self) -> String {
        use sha2::Digest;
        archive::hex(&self.0.finalize())
    }
}

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest;
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

//! Snapshots in and out: verification, download (a plain file stream, see the API),
//! import, and fetch (a repository's copy brought back as a local snapshot) — how an app
//! moves between servers.
//!
//! Nothing an archive says about itself (its ids, mounts, date) is believed before it is
//! checked, and nothing is listed before a full read under the restore's own rules: an
//! imported archive, once listed, is one a restore accepts. Neither a verify nor an
//! import takes an app's lock — they read archives and touch no app — but both wait for
//! a heavy slot. An import is listed under the catalog lock (`Store::insert_checked`),
//! which is what keeps two archives, or two records, from ever sharing one snapshot id.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::BackupManager;
use super::error::{ManagerError, io_err};
use super::verify::{SetOnDrop, check_targets};
use crate::archive::{self, Verified, gzip::ParallelGzip, walk::ChunkSink};
use crate::catalog::{
    ARCHIVE_SUFFIX, ArchiveMeta, Copy, CopyState, Facts, PARTIAL_SUFFIX, Snapshot,
};
use crate::ids;
use crate::jobs::Job;
use crate::offsite::{self, OffsiteError, RemoteSnapshot};

/// Removes a temporary file however its owner ends (finished, failed, or dropped).
/// Errors are ignored: after a successful import the file was renamed into place and
/// nothing is left to remove. A crash leaves it to `Store::open`, which removes every
/// `.partial` file in the state folder at the next start.
pub(super) struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// How [`BackupManager::adopt`] lists an archive.
#[derive(Default)]
pub(super) struct Adopt {
    /// List it under this app instead of the one its metadata names (import).
    pub app_override: Option<String>,
    /// The snapshot id its metadata must name (a fetched copy).
    pub expect_id: Option<String>,
    /// The local record whose (damaged) archive this one replaces: a fetched copy of
    /// a local snapshot. The record's server facts stay as they are.
    pub replace: Option<Snapshot>,
    /// The tar stream's sha256, when the caller has checked it (a fetch, against the
    /// copy's description). Recorded, so that a later offsite copy need not hash the
    /// stream again.
    pub tar_sha256: Option<String>,
    /// Copy records to list with the archive (a fetch: `done` in the repository it came
    /// from). For a replacement they are merged over the listed record's own copies.
    pub copies: std::collections::BTreeMap<String, crate::catalog::Copy>,
    /// The job the check runs for (a fetch): its cancel stops the check.
    pub job: Option<Job>,
}

impl BackupManager {
    /// Checksum, then a full read under the restore's rules. Nothing is written but the
    /// record of the check (`facts.checked`, when it differs from the one listed), which
    /// lets the next restore of the same file skip its own full read.
    ///
    /// Runs as a job of kind `verify` in the caller's future, once a heavy slot is free;
    /// the caller dropping that future stops the read at its next chunk and fails the job
    /// with `Abandoned`. A malformed or unknown id fails before any job exists; an
    /// archive that fails the check (damaged, missing, or not the tar bytes and entries
    /// the backup recorded) is `Corrupt`, and the job records the same error the caller
    /// gets.
    pub async fn verify(
        &self,
        snapshot_id: &str,
    ) -> Result<(Snapshot, Verified), std::sync::Arc<ManagerError>> {
        let snapshot = self.store.get(snapshot_id)?;
        let job = self.jobs.create("verify", &snapshot.app_id);
        let _abandoned =
            job.fail_if_dropped(std::sync::Arc::new(ManagerError::Abandoned("verify")));
        let _slot = self.gate.heavy_slot(Some(&job)).await;
        let result = self
            .verify
            .file(&snapshot, &job, self.gate.new_cancel(Some(&job)))
            .await
            .map(|(verified, new)| {
                self.store.record_check(&snapshot.snapshot_id, new);
                verified
            })
            .map_err(|e| std::sync::Arc::new(e.or_cancelled(&job)));
        match &result {
            Ok(v) => {
                job.succeed(serde_json::json!({"entries": v.entries, "tar_bytes": v.tar_bytes}))
            }
            Err(e) => job.fail(e.clone()),
        }
        Ok((snapshot, result?))
    }

    /// Imports the `.tar.gz` streamed in `body` (an upload) as a snapshot of the app its
    /// metadata names, or of `app_override`. The snapshot keeps its id; it is listed as
    /// `imported`, and as of now if its date is more than five minutes in the future.
    ///
    /// The body is written to `.appsnap/import-*.partial` under the backup root (the same
    /// filesystem as the app folders, so the final move is an atomic rename) and removed
    /// on every outcome, the client leaving mid-upload included. Errors: `InvalidId` for
    /// `app_override`; `Corrupt` when the stream breaks or the archive does not check
    /// out; `TooLarge` as soon as the body passes `max_import_bytes`; `SnapshotExists`
    /// when the id is listed, or its archive file exists, already; `NoSpace` or `Io`
    /// from the disk.
    pub async fn import<S, E>(
        &self,
        body: S,
        app_override: Option<&str>,
    ) -> Result<Snapshot, ManagerError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if let Some(app) = app_override {
            ids::validate("app id", app)?;
        }
        let tmp = self.store.state_dir().join(format!(
            "import-{:08x}{PARTIAL_SUFFIX}",
            rand::random::<u32>()
        ));
        // A guard, not a line after the await: when the client disconnects, axum drops
        // this future mid-upload and only destructors still run.
        let _cleanup = RemoveOnDrop(tmp.clone());
        self.import_into(&tmp, body, app_override).await
    }

    /// Writes `body` to `tmp` (created new, mode 0600), hashing it on the way, then syncs
    /// it and hands it to `adopt`. The limit is checked per chunk, so an oversized upload
    /// stops there rather than filling the disk first.
    async fn import_into<S, E>(
        &self,
        tmp: &std::path::Path,
        mut body: S,
        app_override: Option<&str>,
    ) -> Result<Snapshot, ManagerError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.config.max_import_bytes;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_err("cannot create the import file"))?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ManagerError::Corrupt(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(ManagerError::TooLarge(limit));
            }
            hash.update(&chunk);
            // Small blocking writes between awaits: the upload arrives slower than a disk.
            file.write_all(&chunk)
                .map_err(io_err("cannot write the import file"))?;
        }
        file.sync_all()
            .map_err(io_err("cannot write the import file"))?;
        drop(file);
        let sha256 = archive::hex(&hash.finalize());
        let how = Adopt {
            app_override: app_override.map(str::to_string),
            ..Adopt::default()
        };
        self.adopt(tmp, sha256, size, how).await
    }

    /// Checks an archive written to `tmp` (by an upload or a fetch) like any import —
    /// its metadata entry, then a full read under the restore's rules — and lists it.
    /// `sha256` and `size` describe the compressed file as written.
    ///
    /// The read runs on a blocking thread, holding a heavy slot; only then is the catalog
    /// lock taken, to decide and to move the file into place (rename, then a sync of the
    /// app folder) in one step. The archive is filed as `<app>/<snapshot id>.tar.gz`; a new
    /// record gets the server facts of an import (origin `imported`, no pin). It is refused
    /// with `SnapshotExists` when the id is listed, or its file exists, unless `how`
    /// replaces exactly the record still listed. A file that fails the check is `Corrupt`
    /// and a shutdown is `ShuttingDown`; `tmp` is left for the caller to remove.
    pub(super) async fn adopt(
        &self,
        tmp: &std::path::Path,
        sha256: String,
        size: u64,
        how: Adopt,
    ) -> Result<Snapshot, ManagerError> {
        // A replacement is checked under the rules of the snapshot it replaces.
        let (path, threads, opts) = (
            tmp.to_path_buf(),
            self.config.threads(),
            self.verify
                .extract_options(how.replace.as_ref(), self.gate.new_cancel(how.job.as_ref())),
        );
        // A client that leaves mid-verify stops it (the file is removed by the caller).
        let _abandoned = SetOnDrop(opts.cancel.clone());
        let _slot = self.gate.heavy_slot(None).await;
        let expect = how.expect_id.clone();
        let (meta, verified) = tokio::task::spawn_blocking(move || {
            let bytes = archive::read_metadata(&path)?;
            let not_ours = |reason: String| archive::ArchiveError::NotASnapshot {
                path: path.clone(),
                reason,
            };
            let meta: ArchiveMeta = serde_json::from_slice(&bytes)
                .map_err(|e| not_ours(format!("bad appsnap.json: {e}")))?;
            // Nothing the metadata says is believed before it is checked.
            for (what, id) in [("app id", &meta.app_id), ("snapshot id", &meta.snapshot_id)] {
                ids::validate(what, id).map_err(|e| not_ours(e.to_string()))?;
            }
            crate::model::check_mounts(&meta.mounts).map_err(not_ours)?;
            if let Some(id) = &expect
                && &meta.snapshot_id != id
            {
                return Err(not_ours(format!(
                    "it holds snapshot `{}`, not `{id}`",
                    meta.snapshot_id
                )));
            }
            let verified = archive::verify(
                &path,
                None,
                &check_targets(&meta.mounts),
                threads,
                &opts,
                &|_| {},
            )?;
            Ok::<_, archive::ArchiveError>((meta, verified))
        })
        .await
        .map_err(|e| ManagerError::Corrupt(format!("verification task: {e}")))??;

        let app_id = match &how.replace {
            Some(old) => old.app_id.clone(),
            None => how.app_override.unwrap_or(meta.app_id),
        };
        ids::validate("app id", &app_id)?;
        ids::validate("snapshot id", &meta.snapshot_id)?;
        let dir = self.store.app_dir(&app_id);
        fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        let final_path = dir.join(format!("{}{ARCHIVE_SUFFIX}", meta.snapshot_id));
        // A snapshot dated in the future would rank as "the newest" for every policy
        // (keep-last would keep it and delete each fresh backup): it is listed as of now.
        let now = chrono::Utc::now();
        let mut warnings = Vec::new();
        let created_at = if meta.created_at > now + chrono::Duration::minutes(5) {
            warnings.push(format!(
                "the archive is dated {}, in the future; listed as of its import",
                meta.created_at.to_rfc3339()
            ));
            now
        } else {
            meta.created_at
        };
        let snapshot_sha = sha256.clone();
        let snapshot = Snapshot {
            snapshot_id: meta.snapshot_id.clone(),
            app_id,
            size_bytes: size,
            file_path: final_path.to_string_lossy().into_owned(),
            sha256,
            mounts: meta.mounts,
            facts: Facts {
                warnings,
                // What the full read saw: a later verify insists on the same.
                tar_bytes: Some(verified.tar_bytes),
                entries: Some(verified.entries),
                tar_sha256: how.tar_sha256,
                copies: how.copies,
                checked: Some(crate::catalog::Checked::of(snapshot_sha, &verified)),
                ..Facts::imported(created_at, meta.note)
            },
            locations: Vec::new(),
        };
        let id = snapshot.snapshot_id.clone();
        let decide = |listed: Option<&Snapshot>| match (how.replace, listed) {
            (None, None) if !final_path.exists() => Ok(snapshot),
            // The record it replaces, still about the file found damaged: every server
            // fact stays; only the file and what describes the file change.
            (Some(old), Some(listed))
                if listed.sha256 == old.sha256 && listed.file_path == snapshot.file_path =>
            {
                let mut copies = listed.facts.copies.clone();
                copies.extend(snapshot.facts.copies);
                let mut kept = listed.clone();
                kept.size_bytes = snapshot.size_bytes;
                kept.sha256 = snapshot.sha256;
                kept.facts.checked = snapshot.facts.checked;
                kept.facts.copies = copies;
                Ok(kept)
            }
            // Listed meanwhile, changed meanwhile, or another app's: never two archives
            // (or two records) for one id.
            _ => Err(ManagerError::SnapshotExists(snapshot.snapshot_id)),
        };
        let place = || {
            fs::rename(tmp, &final_path).map_err(io_err("cannot move the import into place"))?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("cannot sync the app folder"))
        };
        let snapshot = self.store.insert_checked(&id, decide, place)?;
        tracing::info!(snapshot = %snapshot.snapshot_id, app = %snapshot.app_id, bytes = size, "snapshot imported");
        Ok(snapshot)
    }
}

/// Fetching a repository's copy back as a local snapshot.
impl BackupManager {
    /// `POST /api/v1/backup/snapshots/{id}/fetch[?from=NAME]`, and a download of a
    /// snapshot that is not held locally: fetches the newest copy (of `from`, or of the
    /// first repository holding one) into the backup root as a local snapshot, as a job
    /// of kind `fetch`. A local archive of the same id is kept when it checks out; a
    /// damaged one is replaced only by the tar stream its record names, once the fetched
    /// archive is complete and checked (a way to mend it), and its record keeps every
    /// server fact (origin, warnings, pin, note, date).
    ///
    /// The copy is found (and a missing one refused) before anything starts; then the
    /// app's lock is taken, as a restore fetching the same copy would share its file.
    /// Only the lock: a fetch writes nothing of the app's, so an unrepaired journal does
    /// not stop it. `Busy` while another operation holds it. The lock is held until the
    /// fetch ends; the outcome is in the job and in `done`.
    pub async fn start_fetch(
        self: &Arc<Self>,
        snapshot_id: &str,
        from: Option<&str>,
    ) -> Result<super::Started<Snapshot>, ManagerError> {
        let remote = self.repos.find(&self.store, from, snapshot_id).await?;
        // One operation per app: a restore fetching the same copy would share its file.
        let lock = self.gate.lock(&remote.app_id, "fetch")?;
        let job = self.jobs.create("fetch", &remote.app_id);
        let (this, job2) = (Arc::clone(self), job.clone());
        let done = tokio::spawn(async move {
            let _lock = lock;
            let result = this
                .fetch(&remote, &job2)
                .await
                .map_err(|e| Arc::new(e.or_cancelled(&job2)));
            match &result {
                Ok(s) => {
                    tracing::info!(snapshot = %s.snapshot_id, repository = %remote.repository, "fetched from the repository");
                    job2.succeed(serde_json::to_value(s).expect("snapshot serializes"));
                }
                Err(e) => {
                    tracing::warn!(snapshot = %remote.snapshot_id, repository = %remote.repository, "fetch failed: {e}");
                    job2.fail(e.clone());
                }
            }
            result
        });
        Ok(super::Started { job, done })
    }

    /// Fetches a repository's copy into the backup root as a local snapshot: the tar
    /// stream is compressed as it arrives into a temporary file, its length and sha256
    /// must be what the backup recorded, and the archive is then checked like an import
    /// before it is listed (replacing the local archive of the same id, if any). The app
    /// is not touched here.
    ///
    /// The caller holds the app's lock. The archive is written, on a blocking thread and
    /// with the backup's compression level and threads, to `.appsnap/fetch-<id>.partial`,
    /// which is removed on every outcome. Errors: `Offsite(Mismatch)` when the bytes
    /// differ from the description, or when a damaged local archive would be replaced by
    /// another tar stream; a repository error; `ShuttingDown`; `NoSpace` or `Io` from the
    /// disk; then what `adopt` refuses. A fetched snapshot with no local record is
    /// listed as `imported`, its copy `done` in the repository it came from.
    pub(super) async fn fetch(
        &self,
        remote: &RemoteSnapshot,
        job: &Job,
    ) -> Result<Snapshot, ManagerError> {
        let repo = self.repos.get(&remote.repository)?;
        // A local snapshot of that id is this server's record: a copy never replaces an
        // archive that still checks out, and replaces a damaged one only when it is the
        // same tar stream the record names (never merely what the repository says).
        let local = match self.store.get(&remote.snapshot_id) {
            Ok(local) => Some(local),
            Err(ManagerError::SnapshotNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(local) = &local {
            job.step("checking the local archive");
            let (path, sha) = (PathBuf::from(&local.file_path), local.sha256.clone());
            let intact = tokio::task::spawn_blocking(move || archive::check_sha256(&path, &sha))
                .await
                .is_ok_and(|r| r.is_ok());
            if intact {
                tracing::info!(snapshot = %local.snapshot_id,
                    "the local archive checks out: kept, nothing fetched");
                return Ok(local.clone());
            }
            if local.facts.tar_sha256.as_deref() != Some(remote.tar_sha256.as_str()) {
                return Err(OffsiteError::Mismatch {
                    name: repo.name.clone(),
                    snapshot_id: remote.snapshot_id.clone(),
                    reason: format!(
                        "the local archive is damaged, and the repository's copy is not the \
                         snapshot this server recorded (tar sha256 {} here, {} there); \
                         nothing was replaced",
                        local.facts.tar_sha256.as_deref().unwrap_or("not recorded"),
                        remote.tar_sha256
                    ),
                }
                .into());
            }
        }
        job.step(&format!("fetching from repository `{}`", repo.name));
        job.total(remote.tar_bytes);
        let tmp = offsite::fetch_path(&self.store.state_dir(), &remote.snapshot_id);
        let _cleanup = RemoveOnDrop(tmp.clone());
        let (level, threads, cancel) = (
            self.config.compression_level,
            self.config.threads(),
            self.gate.new_cancel(Some(job)),
        );
        let (remote2, tmp2, job2) = (remote.clone(), tmp.clone(), job.clone());
        let written = tokio::task::spawn_blocking(move || {
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp2)
                .map_err(OffsiteError::Local)?;
            let gz = ParallelGzip::new(file, level, threads, 1 << 20);
            let progress = |b| job2.progress(b);
            let mut sink = ChunkSink::new(gz, &progress);
            sink.cancel = Some(cancel.clone());
            let dumped = offsite::dump(&repo, &remote2, &mut SinkWriter(&mut sink));
            let bytes = sink.bytes;
            let finished = sink.finish();
            if archive::cancelled(&Some(cancel)) {
                return Err(OffsiteError::Cancelled);
            }
            // When both failed, the writer's error is the cause (a full disk, say): the
            // dump's only says that the pipeline stopped.
            let (written, file) = match (dumped, finished) {
                (_, Err(e)) => return Err(OffsiteError::Local(e)),
                (Err(e), Ok(_)) => return Err(e),
                (Ok(_), Ok(finished)) => finished,
            };
            file.sync_all().map_err(OffsiteError::Local)?;
            let mismatch = |reason: String| OffsiteError::Mismatch {
                name: repo.name.clone(),
                snapshot_id: remote2.snapshot_id.clone(),
                reason,
            };
            if bytes != remote2.tar_bytes {
                return Err(mismatch(format!(
                    "{bytes} bytes came back, the backup wrote {}",
                    remote2.tar_bytes
                )));
            }
            // A fetch compresses every byte itself, so the stream's hash is always known.
            let sha = written
                .raw_sha256
                .map(|h| archive::hex(&h))
                .unwrap_or_default();
            if sha != remote2.tar_sha256 {
                return Err(mismatch(format!(
                    "its sha256 is {sha}, the backup recorded {}",
                    remote2.tar_sha256
                )));
            }
            Ok(written)
        })
        .await
        .map_err(|e| ManagerError::Io {
            context: "fetch task".into(),
            source: io::Error::other(e.to_string()),
        })?
        .map_err(|e| match e {
            OffsiteError::Cancelled => ManagerError::ShuttingDown,
            OffsiteError::Local(e) => super::error::io_err("cannot write the fetched copy")(e),
            other => other.into(),
        })?;
        job.step("checking the fetched copy");
        let adopted = self
            .adopt(
                &tmp,
                archive::hex(&written.sha256),
                written.compressed_bytes,
                super::transfer::Adopt {
                    // Filed under the app the copy's description names: an import
                    // filed elsewhere (`?app_id=`) was copied under its new app, while
                    // its archive names the old one. The tar stream's sha256, checked
                    // above against the description, binds the two.
                    app_override: Some(remote.app_id.clone()),
                    expect_id: Some(remote.snapshot_id.clone()),
                    replace: local,
                    tar_sha256: Some(remote.tar_sha256.clone()),
                    copies: [(
                        remote.repository.clone(),
                        Copy {
                            state: CopyState::Done,
                            attempts: 0,
                            error: None,
                            repository_snapshot: Some(remote.repository_snapshot.clone()),
                            bytes_uploaded: None,
                            updated_at: chrono::Utc::now(),
                        },
                    )]
                    .into(),
                    job: Some(job.clone()),
                },
            )
            .await?;
        Ok(adopted)
    }
}

/// `io::Write` over the gzip pipeline's producer end. A failed write carries no cause:
/// `ChunkSink` only knows that the pipeline stopped. The cause (the writer's first I/O
/// error) is what `ChunkSink::finish` returns, and a cancellation shows in the cancel
/// flag. `flush` does nothing: `finish` drains the pipeline.
struct SinkWriter<'a, 'p, W>(&'a mut ChunkSink<'p, W>);

impl<W: io::Write + Send + 'static> io::Write for SinkWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write(buf)
            .map_err(|_| io::Error::other("the archive pipeline stopped (see the next error)"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

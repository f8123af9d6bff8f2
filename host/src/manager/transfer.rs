//! Snapshots in and out: verification, download (a plain file stream, see the API) and
//! import — how an app moves between servers.
//!
//! Nothing an archive says about itself (its ids, mounts, date) is believed before it is
//! checked, and nothing is listed before a full read under the restore's own rules: an
//! imported archive, once listed, is one a restore accepts. Neither a verify nor an
//! import takes an app's lock — they read archives and touch no app — but both wait for
//! a heavy slot. An import is listed under the catalog lock (`Store::insert_checked`),
//! which is what keeps two archives, or two records, from ever sharing one snapshot id.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::error::io_err;
use super::verify::{SetOnDrop, check_targets};
use super::{BackupManager, ManagerError};
use crate::archive::{self, Verified};
use crate::catalog::{ARCHIVE_SUFFIX, ArchiveMeta, Facts, PARTIAL_SUFFIX, Snapshot};
use crate::ids;

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
        let snapshot = self.get(snapshot_id)?;
        let job = self.jobs.create("verify", &snapshot.app_id);
        let _abandoned =
            job.fail_if_dropped(std::sync::Arc::new(ManagerError::Abandoned("verify")));
        let _slot = self.gate.heavy_slot(Some(&job)).await;
        let result = self
            .verify
            .file(&snapshot, &job, self.gate.new_cancel())
            .await
            .map(|(verified, new)| {
                self.store.record_check(&snapshot.snapshot_id, new);
                verified
            })
            .map_err(std::sync::Arc::new);
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
                .extract_options(how.replace.as_ref(), self.gate.new_cancel()),
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

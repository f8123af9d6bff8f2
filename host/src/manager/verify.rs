//! Verify: is an archive one a restore may use?
//!
//! Two strengths, both read-only:
//! - [`Verify::file`]: the checksum, then every entry read under the restore's own rules
//!   (no `..`, no absolute paths, no links out, sizes checked, entry limits), against
//!   what the writer recorded (tar bytes, entries), so an archive cut at a gzip member
//!   boundary cannot pass for a shorter one;
//! - [`Verify::checksum`]: for an archive that passed a full check before
//!   ([`Checked`]), only its sha256, which proves it is the file that was checked.
//!
//! [`Verify::extract_options`] is the one place that says what an extraction of a
//! snapshot may recreate; verify and restore use the same options, so a verified archive
//! is one the restore accepts.

use std::path::PathBuf;

use super::error::ManagerError;
use crate::archive::{self, Verified, extract};
use crate::catalog::{Checked, Origin, Snapshot};
use crate::config::Config;
use crate::jobs::Job;

/// The operator's extraction rules, read once from the configuration.
pub struct Verify {
    /// Device nodes from imported snapshots (`restore_devices`).
    devices: bool,
    /// `trusted.*`/`security.*` xattrs from imported snapshots.
    privileged_xattrs: bool,
    /// Entries an archive may hold (`max_archive_entries`).
    max_entries: u64,
    /// Inflate threads.
    threads: usize,
}

impl Verify {
    pub fn new(config: &Config) -> Verify {
        Verify {
            devices: config.restore_devices,
            privileged_xattrs: config.restore_privileged_xattrs,
            max_entries: config.max_archive_entries,
            threads: config.threads(),
        }
    }

    /// What extraction may recreate: device nodes and privileged extended attributes
    /// come back from snapshots this server made, and from others (imports, or an
    /// archive not listed yet: `None`) only when the operator allows them. An archive
    /// holds at most `max_archive_entries`, or as many as this server's backup recorded.
    /// `cancel` stops the work at its next chunk.
    pub fn extract_options(
        &self,
        snapshot: Option<&Snapshot>,
        cancel: archive::Cancel,
    ) -> extract::Options {
        let made_here = snapshot.is_some_and(|s| s.facts.origin != Origin::Imported);
        let recorded = snapshot
            .filter(|_| made_here)
            .and_then(|s| s.facts.entries)
            .unwrap_or(0);
        extract::Options {
            allow_devices: made_here || self.devices,
            privileged_xattrs: made_here || self.privileged_xattrs,
            dry_run: false,
            cancel: Some(cancel),
            max_entries: Some(self.max_entries.max(recorded)),
        }
    }

    /// The full check of `snapshot`'s archive, with progress in `job`. Returns what it
    /// saw and, when that differs from what the record holds, the [`Checked`] to record
    /// (so the next restore of the same file needs only the checksum). A caller that
    /// goes away (its future dropped) stops the read at its next chunk.
    pub async fn file(
        &self,
        snapshot: &Snapshot,
        job: &Job,
        cancel: archive::Cancel,
    ) -> Result<(Verified, Option<Checked>), ManagerError> {
        let path = PathBuf::from(&snapshot.file_path);
        let sha = snapshot.sha256.clone();
        let targets = check_targets(&snapshot.mounts);
        let (threads, opts, job) = (
            self.threads,
            self.extract_options(Some(snapshot), cancel),
            job.clone(),
        );
        let _abandoned = SetOnDrop(opts.cancel.clone());
        let verified = tokio::task::spawn_blocking(move || {
            archive::verify(&path, Some(&sha), &targets, threads, &opts, &|b| {
                job.progress(b)
            })
        })
        .await
        .map_err(|e| ManagerError::Corrupt(format!("verification task: {e}")))?
        .map_err(|e| match ManagerError::from(e) {
            // A missing file is not corruption of the archive, but it is unusable all the same.
            ManagerError::Archive(e) => ManagerError::Corrupt(e.to_string()),
            other => other,
        })?;
        // What the writer recorded is what a complete archive holds.
        let recorded = [
            ("tar bytes", snapshot.facts.tar_bytes, verified.tar_bytes),
            ("entries", snapshot.facts.entries, verified.entries),
        ];
        for (what, recorded, found) in recorded {
            if let Some(recorded) = recorded
                && recorded != found
            {
                return Err(ManagerError::Corrupt(format!(
                    "the archive holds {found} {what}, the backup wrote {recorded}"
                )));
            }
        }
        let checked = Checked::of(snapshot.sha256.clone(), &verified);
        let new = (snapshot.checked() != Some(&checked)).then_some(checked);
        Ok((verified, new))
    }

    /// A restore's check of an archive that passed the full check before: its sha256
    /// must still be the one checked, which proves it is the same file; what that check
    /// saw is taken from the record.
    pub async fn checksum(
        &self,
        snapshot: &Snapshot,
        checked: &Checked,
    ) -> Result<Verified, ManagerError> {
        let (path, sha) = (PathBuf::from(&snapshot.file_path), checked.sha256.clone());
        tokio::task::spawn_blocking(move || archive::check_sha256(&path, &sha))
            .await
            .map_err(|e| ManagerError::Corrupt(format!("checksum task: {e}")))?
            // Unreadable or changed, the file is unusable (as `file` says it).
            .map_err(|e| ManagerError::Corrupt(e.to_string()))?;
        Ok(checked.verified())
    }
}

/// Mount folders of a snapshot, as verification targets (nothing is written).
pub fn check_targets(mounts: &[crate::model::Mount]) -> Vec<extract::Target> {
    mounts
        .iter()
        .map(|m| extract::Target {
            archive_dir: m.archive_dir.clone(),
            path: PathBuf::new(),
            reserved: None,
            discard: false,
            file_root: false,
        })
        .collect()
}

/// Sets a cancel flag when dropped: work still running for a dropped future stops.
pub struct SetOnDrop(pub Option<archive::Cancel>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

//! The catalog: every snapshot's metadata in `{backup_root}/snapshots.json`.
//!
//! The file is a cache of what the archives say about themselves: it is written
//! atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves the old
//! or the new version and never half of one, and it can always be rebuilt from the
//! archives' first entries (`appsnap reindex`). At start-up it is reconciled with the disk:
//! entries whose archive is gone are dropped, archives it does not know are added.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive;
use crate::archive::sha256_file;
use crate::model::Mount;

pub const CATALOG_FILE: &str = "snapshots.json";
pub const ARCHIVE_SUFFIX: &str = ".tar.gz";
/// In-progress archives: `.{snapshot_id}.tar.gz.partial`, removed at start-up.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Beside each archive, `{snapshot_id}.meta.json`: what the catalog knows that the archive
/// cannot say about itself (origin, pin, edited note, warnings, sizes), so that a rebuild
/// of the catalog (`reindex`, a corrupt `snapshots.json`) keeps it.
pub const SIDECAR_SUFFIX: &str = ".meta.json";

/// Errors of the snapshot catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file could not be written; the previous version is still in place.
    #[error("cannot write the catalog {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The backup root could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a snapshot was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Manual,
    Scheduled,
    PreRestore,
    Imported,
}

/// A snapshot as listed by the API: what the archive file is (its id, app folder, size,
/// sha256, mounts — read from the file and checked) and, flattened into the same JSON
/// object, the server's own [`Facts`] about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub app_id: String,
    /// Size of the archive file.
    pub size_bytes: u64,
    pub file_path: String,
    /// sha256 of the whole archive file, hex.
    pub sha256: String,
    pub mounts: Vec<Mount>,
    #[serde(flatten)]
    pub facts: Facts,
    /// Where the snapshot can be restored from: `local` (this server's archive) and the
    /// repositories holding a complete copy. Derived from `facts.copies`.
    #[serde(default)]
    pub locations: Vec<String>,
}

/// What this server knows about a snapshot and the archive cannot say about itself, or
/// says but is never believed on. One home: this struct is the sidecar beside each
/// archive (`{id}.meta.json`) and, flattened, part of the catalog's record, so a rebuild
/// of the catalog takes every one of these from the sidecar and none from the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Facts {
    /// When the snapshot was taken (RFC 3339, UTC), or, for an import dated in the
    /// future, when it was imported: the date every policy ranks it by.
    pub created_at: DateTime<Utc>,
    /// Why this server holds it. A snapshot found without a sidecar is `imported`,
    /// whatever its archive claims: a rebuild can lose a privilege, never grant one.
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Never deleted by a policy or a count rule.
    #[serde(default)]
    pub pinned: bool,
    /// Files skipped or changed while archiving (empty for a clean snapshot).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Length of the uncompressed tar stream and its number of entries, as the writer
    /// produced them: verify insists on both, so an archive cut at a gzip member boundary
    /// cannot pass for a shorter one. Absent when unknown (imports, older snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// sha256 of the uncompressed tar stream (hex), recorded by the writer: an offsite
    /// copy holds that stream, and a copy fetched back must match it. Absent when no
    /// repository was configured at backup time, or when an assembly reused members: the
    /// first copy records it (`Manager::record_tar_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_sha256: Option<String>,
    /// The offsite copy in each configured repository, by repository name.
    #[serde(default)]
    pub copies: BTreeMap<String, Copy>,
    /// The archive passed the structural check, while its file had this sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<Checked>,
    /// How the backup kept the app down: absent for imports, fetches and older snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<Downtime>,
}

/// How long a backup kept the app down, and what it read meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Downtime {
    /// The backup's mode: `stop`, `precopy` or `live` (never down).
    pub mode: crate::config::BackupMode,
    /// From the stop of the containers until they run again (0: none was running).
    pub downtime_ms: u64,
    /// Passes over the data: 1, or 2 for a pre-copy (one with the app running, one
    /// stopped).
    pub passes: u32,
    /// Entries and file bytes read while the app was stopped: everything in stop mode;
    /// in pre-copy mode only what changed during the first pass (or just before it).
    pub stopped_entries: u64,
    pub stopped_bytes: u64,
}

impl Facts {
    /// What a server knows of an archive it did not make and has no sidecar for: the
    /// archive's date and first note, and nothing else.
    pub fn imported(created_at: DateTime<Utc>, note: Option<String>) -> Facts {
        Facts {
            created_at,
            origin: Origin::Imported,
            note,
            pinned: false,
            warnings: Vec::new(),
            tar_bytes: None,
            entries: None,
            tar_sha256: None,
            copies: BTreeMap::new(),
            checked: None,
            downtime: None,
        }
    }
}

/// An archive whose every entry was read under the restore's rules: by this server's
/// backup as it wrote it, or by one full verify (import, fetch, restore, `verify`). Bound
/// to the file's sha256 then: a restore that finds the same sha256 skips a second full
/// read before it stops the app. (The extraction applies the same rules again; the check
/// only spares the app the downtime of an archive that would fail.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checked {
    pub sha256: String,
    pub tar_bytes: u64,
    pub entries: u64,
    /// What a restore of each mount's files allocates ([`archive::allocation`]), in
    /// `mounts` order: the restore's space check.
    pub stored: Vec<u64>,
    /// Entries per mount, in `mounts` order: a mount with none is left alone by a
    /// restore. Absent in records older than it, which are then checked again.
    #[serde(default)]
    pub mount_entries: Vec<u64>,
}

impl Checked {
    /// What a full verify of the file whose sha256 is `sha256` saw.
    pub fn of(sha256: String, v: &archive::Verified) -> Checked {
        Checked {
            sha256,
            tar_bytes: v.tar_bytes,
            entries: v.entries,
            stored: v.stored.clone(),
            mount_entries: v.mount_entries.clone(),
        }
    }

    /// What a full verify would see again (the file still having that sha256).
    pub fn verified(&self) -> archive::Verified {
        archive::Verified {
            entries: self.entries,
            tar_bytes: self.tar_bytes,
            stored: self.stored.clone(),
            mount_entries: self.mount_entries.clone(),
        }
    }
}

impl Snapshot {
    /// What the structural check recorded, if it holds for the recorded sha256.
    pub fn checked(&self) -> Option<&Checked> {
        self.facts.checked.as_ref().filter(|c| {
            c.sha256 == self.sha256
                && c.stored.len() == self.mounts.len()
                && c.mount_entries.len() == self.mounts.len()
        })
    }

    /// Recomputes `locations` from `copies` (call after changing either).
    pub fn refresh_locations(&mut self) {
        self.locations = std::iter::once("local".to_string())
            .chain(
                self.facts
                    .copies
                    .iter()
                    .filter(|(_, c)| c.state == CopyState::Done)
                    .map(|(name, _)| name.clone()),
            )
            .collect();
    }
}

/// Where an offsite copy of a snapshot stands in one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Waiting for its turn, or for its next attempt after a failure.
    Pending,
    Copying,
    Done,
    /// Gave up after its attempts; `POST …/copy` tries again.
    Failed,
}

/// One snapshot's copy in one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Copy {
    pub state: CopyState,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The repository's (restic) snapshot id of the copy, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_snapshot: Option<String>,
    /// Bytes the copy added to the repository after deduplication and compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<u64>,
    pub updated_at: DateTime<Utc>,
}

/// What every archive says about itself in its first entry, `appsnap.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveMeta {
    /// Format of this entry and of the archive's layout.
    pub format: u32,
    pub appsnap_version: String,
    pub snapshot_id: String,
    pub app_id: String,
    pub created_at: DateTime<Utc>,
    pub mounts: Vec<Mount>,
    pub origin: Origin,
    #[serde(default)]
    pub note: Option<String>,
}

/// Where the sidecar of the archive at `archive` lives.
pub fn sidecar_path(archive: &Path) -> PathBuf {
    let name = archive.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(ARCHIVE_SUFFIX).unwrap_or(&name);
    archive.with_file_name(format!("{stem}{SIDECAR_SUFFIX}"))
}

/// Writes `s`'s [`Facts`] beside its archive (atomically).
pub fn write_sidecar(s: &Snapshot) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(&s.facts).expect("facts serialize");
    write_atomic(&sidecar_path(Path::new(&s.file_path)), &bytes)
}

/// The sidecar of the archive at `path`, if there is one: `Ok(None)` when there is
/// none, `Err` when it cannot be read as one. A sidecar from before `origin` was kept
/// there reads as `imported` (the start-up migration writes the catalog's origin first,
/// see [`Catalog::open`]); one from before `created_at` was kept takes `archive_date`.
fn read_sidecar(
    path: &Path,
    archive_date: DateTime<Utc>,
) -> Result<Option<Facts>, serde_json::Error> {
    let Ok(bytes) = fs::read(sidecar_path(path)) else {
        return Ok(None);
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)?;
    if let Some(fields) = value.as_object_mut() {
        fields.entry("origin").or_insert("imported".into());
        fields
            .entry("created_at")
            .or_insert(serde_json::to_value(archive_date).expect("a date serializes"));
    }
    serde_json::from_value(value).map(Some)
}

/// Whether the sidecar of the archive at `path` records the snapshot's origin (those of
/// older versions do not).
fn sidecar_has_origin(path: &Path) -> bool {
    fs::read(sidecar_path(path))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("origin").is_some())
}

pub struct Catalog {
    root: PathBuf,
    /// By snapshot id. Ids start with their creation time, so this is also time order.
    snapshots: BTreeMap<String, Snapshot>,
}

impl Catalog {
    /// Loads the catalog and reconciles it with the archives on disk. A corrupt catalog
    /// file is kept aside (`snapshots.json.corrupt`) and rebuilt from the archives.
    pub fn open(root: &Path) -> Result<Catalog, CatalogError> {
        let path = root.join(CATALOG_FILE);
        let snapshots = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Snapshot>>(&bytes) {
                Ok(list) => list
                    .into_iter()
                    .map(|s| (s.snapshot_id.clone(), s))
                    .collect(),
                Err(e) => {
                    let aside = root.join(format!("{CATALOG_FILE}.corrupt"));
                    tracing::error!(
                        "catalog {} is corrupt ({e}); kept as {} and rebuilt from the archives",
                        path.display(),
                        aside.display()
                    );
                    let _ = fs::rename(&path, &aside);
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        let mut catalog = Catalog {
            root: root.to_path_buf(),
            snapshots,
        };
        catalog.migrate_sidecars();
        if catalog.reconcile()? {
            catalog.save()?;
        }
        Ok(catalog)
    }

    /// Writes the sidecar of every listed snapshot that has none, or one from before the
    /// sidecar held the server's own facts (`origin`): snapshots made before sidecars
    /// existed would otherwise lose their pin and note, and every older one its origin,
    /// at the first rebuild. Runs at every open, before anything can rebuild; a failure
    /// is logged and tried again at the next open.
    fn migrate_sidecars(&self) {
        for s in self.snapshots.values() {
            let path = sidecar_path(Path::new(&s.file_path));
            let archive = Path::new(&s.file_path);
            if sidecar_has_origin(archive) || !archive.is_file() {
                continue;
            }
            match write_sidecar(s) {
                Ok(()) => tracing::info!(
                    "snapshot {}: its pin, note and origin are now kept beside its archive",
                    s.snapshot_id
                ),
                Err(e) => tracing::warn!(
                    "snapshot {}: cannot write its sidecar {}: {e}",
                    s.snapshot_id,
                    path.display()
                ),
            }
        }
    }

    /// Drops entries whose archive is gone and adds archives the catalog lacks. Returns
    /// whether anything changed.
    pub fn reconcile(&mut self) -> Result<bool, CatalogError> {
        let mut changed = false;
        self.snapshots.retain(|id, s| {
            let exists = Path::new(&s.file_path).is_file();
            if !exists {
                tracing::warn!(
                    "snapshot {id}: archive {} is gone; dropped from the catalog",
                    s.file_path
                );
                changed = true;
            }
            exists
        });
        for path in self.archives_on_disk()? {
            let known = self
                .snapshots
                .values()
                .any(|s| Path::new(&s.file_path) == path);
            if known {
                continue;
            }
            match snapshot_from_archive(&path) {
                Ok(s) if self.snapshots.contains_key(&s.snapshot_id) => tracing::warn!(
                    "{} ignored: snapshot {} is already listed from {}",
                    path.display(),
                    s.snapshot_id,
                    self.snapshots[&s.snapshot_id].file_path
                ),
                Ok(s) => {
                    tracing::info!(
                        "snapshot {}: found on disk, added to the catalog",
                        s.snapshot_id
                    );
                    self.snapshots.insert(s.snapshot_id.clone(), s);
                    changed = true;
                }
                Err(e) => tracing::warn!("{} ignored: {e}", path.display()),
            }
        }
        Ok(changed)
    }

    /// Forgets everything and reads every archive's metadata again.
    pub fn rebuild(&mut self) -> Result<usize, CatalogError> {
        self.snapshots.clear();
        self.reconcile()?;
        self.save()?;
        Ok(self.snapshots.len())
    }

    /// `{root}/{app}/{snapshot}.tar.gz` for every app folder.
    fn archives_on_disk(&self) -> Result<Vec<PathBuf>, CatalogError> {
        let mut out = Vec::new();
        let read = |path: &Path| {
            fs::read_dir(path).map_err(|source| CatalogError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        for app in read(&self.root)?.flatten() {
            let name = app.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !app.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for file in read(&app.path())?.flatten() {
                let fname = file.file_name();
                let fname = fname.to_string_lossy();
                if !fname.starts_with('.') && fname.ends_with(ARCHIVE_SUFFIX) {
                    out.push(file.path());
                }
            }
        }
        Ok(out)
    }

    /// Writes the whole catalog atomically.
    pub fn save(&self) -> Result<(), CatalogError> {
        let path = self.root.join(CATALOG_FILE);
        let list: Vec<&Snapshot> = self.snapshots.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).expect("snapshots serialize");
        write_atomic(&path, &bytes).map_err(|source| CatalogError::Write { path, source })
    }

    pub fn get(&self, id: &str) -> Option<&Snapshot> {
        self.snapshots.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Snapshot> {
        self.snapshots.get_mut(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.snapshots.contains_key(id)
    }

    pub fn insert(&mut self, mut s: Snapshot) {
        s.refresh_locations();
        self.snapshots.insert(s.snapshot_id.clone(), s);
    }

    pub fn remove(&mut self, id: &str) -> Option<Snapshot> {
        self.snapshots.remove(id)
    }

    /// Newest first, optionally of one app.
    pub fn list(&self, app_id: Option<&str>) -> Vec<&Snapshot> {
        let mut list: Vec<&Snapshot> = self
            .snapshots
            .values()
            .filter(|s| app_id.is_none_or(|a| s.app_id == a))
            .collect();
        list.sort_by(|a, b| {
            b.facts
                .created_at
                .cmp(&a.facts.created_at)
                .then_with(|| b.snapshot_id.cmp(&a.snapshot_id))
        });
        list
    }

    pub fn all(&self) -> impl Iterator<Item = &Snapshot> {
        self.snapshots.values()
    }
}

/// A catalog entry from an archive alone: metadata from its first entry, size and
/// checksum from the file (which costs one full read). The folder names the app (an
/// import may file a snapshot under another app than the one it was taken of); the file
/// name must be the snapshot id the archive carries.
pub fn snapshot_from_archive(path: &Path) -> Result<Snapshot, archive::ArchiveError> {
    let not_ours = |reason: String| archive::ArchiveError::NotASnapshot {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = archive::read_metadata(path)?;
    let meta: ArchiveMeta =
        serde_json::from_slice(&bytes).map_err(|e| not_ours(format!("bad appsnap.json: {e}")))?;
    crate::model::check_mounts(&meta.mounts).map_err(not_ours)?;
    let expected = format!("{}{ARCHIVE_SUFFIX}", meta.snapshot_id);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(not_ours(format!("its metadata names {expected}")));
    }
    let app_id = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| crate::ids::validate("app id", n).is_ok())
        .ok_or_else(|| not_ours("its folder is not an app id".into()))?
        .to_string();
    let (sha256, size_bytes) = sha256_file(path).map_err(|source| archive::ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let facts = read_sidecar(path, meta.created_at)
        .inspect_err(|e| tracing::warn!("{}: unreadable sidecar ignored: {e}", path.display()))
        .ok()
        .flatten()
        // The archive's `origin` is a claim (an import can say `manual`): without what
        // this server wrote, the snapshot is an import. Its first note is all it keeps.
        .unwrap_or_else(|| Facts::imported(meta.created_at, meta.note));
    let mut snapshot = Snapshot {
        snapshot_id: meta.snapshot_id,
        app_id,
        size_bytes,
        file_path: path.to_string_lossy().into_owned(),
        sha256,
        mounts: meta.mounts,
        facts,
        locations: Vec::new(),
    };
    snapshot.refresh_locations();
    Ok(snapshot)
}

/// temp + fsync + rename + fsync(dir): readers see the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An archive under `root/app/` whose `appsnap.json` claims `origin`, for the unit tests
/// of the catalog and the store.
#[cfg(test)]
pub(crate) fn test_archive(root: &Path, id: &str, origin: &str) -> PathBuf {
    let dir = root.join("app");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{id}{ARCHIVE_SUFFIX}"));
    let meta = format!(
        r#"{{"format":1,"appsnap_version":"0","snapshot_id":"{id}","app_id":"app",
        "created_at":"2026-01-01T00:00:00Z","mounts":[],"origin":"{origin}"}}"#
    );
    let file = File::create(&path).unwrap();
    let opts = archive::Options::default();
    archive::write(file, meta.as_bytes(), &[], &opts, &|_| {}).unwrap();
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_archive as archive_claiming;

    #[test]
    fn a_rebuild_takes_the_origin_from_the_server_never_from_the_archive() {
        let root = tempfile::tempdir().unwrap();
        // An import that claims to be an own snapshot, with the sidecar the import wrote.
        let imported = archive_claiming(root.path(), "snapshot_a", "manual");
        let mut s = snapshot_from_archive(&imported).unwrap();
        s.facts.origin = Origin::Imported;
        write_sidecar(&s).unwrap();
        // An own snapshot whose sidecar is lost: it loses its privileges, gains none.
        archive_claiming(root.path(), "snapshot_b", "manual");
        // An own snapshot with its sidecar.
        let own = archive_claiming(root.path(), "snapshot_c", "scheduled");
        let mut s = snapshot_from_archive(&own).unwrap();
        s.facts.origin = Origin::Scheduled;
        s.facts.pinned = true;
        write_sidecar(&s).unwrap();

        let mut catalog = Catalog::open(root.path()).unwrap();
        assert_eq!(catalog.rebuild().unwrap(), 3);
        let origin = |id: &str| catalog.get(id).unwrap().facts.origin;
        assert_eq!(origin("snapshot_a"), Origin::Imported);
        assert_eq!(origin("snapshot_b"), Origin::Imported);
        assert_eq!(origin("snapshot_c"), Origin::Scheduled);
        assert!(catalog.get("snapshot_c").unwrap().facts.pinned);
    }

    #[test]
    fn opening_writes_the_sidecars_an_older_version_did_not() {
        let root = tempfile::tempdir().unwrap();
        let path = archive_claiming(root.path(), "snapshot_a", "manual");
        let mut s = snapshot_from_archive(&path).unwrap();
        s.facts.origin = Origin::Manual;
        s.facts.pinned = true;
        s.facts.note = Some("keep".into());
        // The catalog of a version before sidecars: an entry, no sidecar.
        let bytes = serde_json::to_vec(&vec![&s]).unwrap();
        fs::write(root.path().join(CATALOG_FILE), bytes).unwrap();
        Catalog::open(root.path()).unwrap();
        fs::remove_file(root.path().join(CATALOG_FILE)).unwrap();

        let catalog = Catalog::open(root.path()).unwrap();
        let rebuilt = catalog.get("snapshot_a").unwrap();
        assert_eq!(rebuilt.facts.origin, Origin::Manual);
        assert!(rebuilt.facts.pinned);
        assert_eq!(rebuilt.facts.note.as_deref(), Some("keep"));
    }
}

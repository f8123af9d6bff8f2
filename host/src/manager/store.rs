//! The store: the backup root on disk and the only way to it.
//!
//! It owns everything under `backup_root`:
//! - the root's **mark** (`.appsnap/id`) and the process **lock** (`.appsnap/lock`), taken
//!   in [`Store::open`] before anything is read, so an unmounted backup disk is refused
//!   and two processes never share one root;
//! - the **catalog** behind one mutex, and each snapshot's **sidecar**: every read and
//!   write of a snapshot's record goes through a method here, which keeps the two in step
//!   (the sidecar first: it is what a rebuild keeps);
//! - the paths of the **journals** of interrupted operations and of partial files, and
//!   the removal of partial files left by a crash.
//!
//! It decides nothing about apps or containers; operations tell it what to record.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::error::{ManagerError, io_err};
use crate::archive;
use crate::catalog::{self, ARCHIVE_SUFFIX, Catalog, Origin, PARTIAL_SUFFIX, Snapshot};
use crate::ids;

/// Beside each archive, its entry index (see `archive::index`), made on first use.
const INDEX_SUFFIX: &str = ".index";

/// appsnap's own state under the backup root (hidden: ids cannot start with a dot).
pub const STATE_DIR: &str = ".appsnap";

/// The backup root, its catalog and its journals.
pub struct Store {
    root: PathBuf,
    catalog: Mutex<Catalog>,
    /// The root's id (`.appsnap/id`): names this server's offsite copies.
    root_id: String,
    /// Held for the store's life: one process per backup root.
    _lock: File,
}

/// How many snapshots an app has and how many bytes they hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub snapshots: u64,
    pub bytes: u64,
}

impl Store {
    /// Opens `root`: checks its mark against what `state_dir` remembers (creating and
    /// marking a root on first use), takes the process lock, removes the partial files a
    /// crash left (interrupted imports, partial archives, sidecars without an archive)
    /// and loads the catalog, reconciled with the archives on disk. Journals are left
    /// for the caller to repair ([`Store::pending_journals`]).
    pub async fn open(root: &Path, state_dir: &Path) -> Result<Store, ManagerError> {
        let root_id = mark_root(root, state_dir)?;
        let state = root.join(STATE_DIR);
        let lock = lock_root(&state.join("lock"))?;
        let entries =
            fs::read_dir(&state).map_err(io_err(format!("cannot read {}", state.display())))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with(PARTIAL_SUFFIX)
            {
                tracing::warn!("removing interrupted import {}", entry.path().display());
                let _ = fs::remove_file(entry.path());
            }
        }
        remove_partials(root);
        let at = root.to_path_buf();
        let catalog = tokio::task::spawn_blocking(move || Catalog::open(&at))
            .await
            .expect("catalog open task")?;
        Ok(Store {
            root: root.to_path_buf(),
            catalog: Mutex::new(catalog),
            root_id,
            _lock: lock,
        })
    }

    /// The backup root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root's id: what marks this server's offsite copies as its own.
    pub fn root_id(&self) -> &str {
        &self.root_id
    }

    /// `.appsnap/` under the root: journals, policies, partial imports. On the backup
    /// filesystem, so a rename from it into an app's folder is atomic.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// The folder of `app_id`'s archives.
    pub fn app_dir(&self, app_id: &str) -> PathBuf {
        self.root.join(app_id)
    }

    /// Where the journal of an operation of `kind` (`backup`, `restore`) on `app_id`
    /// lives while that operation may need repair.
    pub fn journal_path(&self, app_id: &str, kind: &str) -> PathBuf {
        self.state_dir().join(format!("{app_id}.{kind}.journal"))
    }

    /// `Err(RepairPending)` while an interrupted operation of `kind` on `app_id` left its
    /// journal: a new operation must not sweep away what that journal describes.
    pub fn no_journal(&self, app_id: &str, kind: &str) -> Result<(), ManagerError> {
        let journal = self.journal_path(app_id, kind);
        if journal.exists() {
            return Err(ManagerError::RepairPending {
                app_id: app_id.into(),
                operation: kind.into(),
                journal,
            });
        }
        Ok(())
    }

    /// Outstanding journals, sorted: (app id, operation, path).
    pub fn pending_journals(&self) -> Vec<(String, String, PathBuf)> {
        let Ok(dir) = fs::read_dir(self.state_dir()) else {
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

    /// Reads the catalog under its lock. Keep `f` short: every record change waits.
    pub fn read<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.catalog.lock().expect("catalog lock"))
    }

    /// Newest first, of one app or of all.
    pub fn list(&self, app_id: Option<&str>) -> Vec<Snapshot> {
        self.read(|c| c.list(app_id).into_iter().cloned().collect())
    }

    /// The record of `snapshot_id`, or `SnapshotNotFound` (`InvalidId` for an id that
    /// could never be one).
    pub fn get(&self, snapshot_id: &str) -> Result<Snapshot, ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        self.read(|c| c.get(snapshot_id).cloned())
            .ok_or_else(|| ManagerError::SnapshotNotFound(snapshot_id.into()))
    }

    /// A new snapshot id for an archive made at `now` in `dir`: listed nowhere and not
    /// on disk.
    pub fn unique_snapshot_id(&self, dir: &Path, now: DateTime<Utc>) -> String {
        self.read(|catalog| {
            loop {
                let id = ids::new_snapshot_id(now);
                if !catalog.contains(&id) && !dir.join(format!("{id}{ARCHIVE_SUFFIX}")).exists() {
                    return id;
                }
            }
        })
    }

    /// Lists a snapshot whose archive (and sidecar) are in place. If the catalog cannot
    /// be saved, the archive is listed again at the next start from the disk.
    pub fn insert(&self, snapshot: Snapshot) -> Result<(), ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        catalog.insert(snapshot);
        Ok(catalog.save()?)
    }

    /// Under the catalog lock, lets `decide` see the record now listed under
    /// `snapshot.snapshot_id` (if any) and either refuse or give the record to list; then
    /// runs `place` (which moves the archive into place) and lists that record with its
    /// sidecar. Nobody can list the same id in between.
    pub fn insert_checked(
        &self,
        snapshot_id: &str,
        decide: impl FnOnce(Option<&Snapshot>) -> Result<Snapshot, ManagerError>,
        place: impl FnOnce() -> Result<(), ManagerError>,
    ) -> Result<Snapshot, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let snapshot = decide(catalog.get(snapshot_id))?;
        place()?;
        if let Err(e) = catalog::write_sidecar(&snapshot) {
            tracing::warn!(snapshot = %snapshot.snapshot_id, "cannot write its sidecar: {e}");
        }
        catalog.insert(snapshot.clone());
        catalog.save()?;
        Ok(snapshot)
    }

    /// Changes a snapshot's record, in its sidecar and in the catalog. A snapshot deleted
    /// meanwhile has nothing to record (`Ok(None)`). A sidecar that cannot be written is
    /// a warning: the catalog still holds the change until a rebuild.
    pub fn update(
        &self,
        snapshot_id: &str,
        change: impl FnOnce(&mut Snapshot),
    ) -> Result<Option<Snapshot>, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let Some(s) = catalog.get_mut(snapshot_id) else {
            return Ok(None);
        };
        change(s);
        s.refresh_locations();
        let out = s.clone();
        if let Err(e) = catalog::write_sidecar(&out) {
            tracing::warn!(snapshot = %snapshot_id, "cannot write its sidecar: {e}");
        }
        catalog.save()?;
        Ok(Some(out))
    }

    /// Records a full check of a snapshot's archive ([`super::verify::Verify::file`]),
    /// if it is still about the file listed now. A record that cannot be saved is only a
    /// warning: the next restore checks the archive in full again.
    pub fn record_check(&self, snapshot_id: &str, checked: Option<catalog::Checked>) {
        let Some(checked) = checked else { return };
        let saved = self.update(snapshot_id, |s| {
            if s.sha256 == checked.sha256 {
                s.facts.checked = Some(checked);
            }
        });
        if let Err(e) = saved {
            tracing::warn!(snapshot = %snapshot_id, "cannot record its check: {e}");
        }
    }

    /// Changes a snapshot's record where the change must survive a rebuild (a pin, a
    /// note): the sidecar is written first, and a failure to write it is the caller's
    /// error, with nothing changed in the catalog.
    pub fn update_durably(
        &self,
        snapshot_id: &str,
        change: impl FnOnce(&mut Snapshot),
    ) -> Result<Snapshot, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let listed = catalog
            .get(snapshot_id)
            .ok_or_else(|| ManagerError::SnapshotNotFound(snapshot_id.into()))?;
        let mut changed = listed.clone();
        change(&mut changed);
        changed.refresh_locations();
        catalog::write_sidecar(&changed).map_err(io_err(format!(
            "cannot save the record of {snapshot_id} beside its archive"
        )))?;
        catalog.insert(changed.clone());
        catalog.save()?;
        Ok(changed)
    }

    /// Changes several records in one pass: `change` says whether it changed a record,
    /// whose sidecar is then written; the catalog is saved once, when any changed.
    pub fn update_all(&self, mut change: impl FnMut(&mut Snapshot) -> bool) {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let ids: Vec<String> = catalog.all().map(|s| s.snapshot_id.clone()).collect();
        let mut changed = false;
        for id in ids {
            let s = catalog.get_mut(&id).expect("listed");
            if change(s) {
                s.refresh_locations();
                if let Err(e) = catalog::write_sidecar(s) {
                    tracing::warn!(snapshot = %id, "cannot write its sidecar: {e}");
                }
                changed = true;
            }
        }
        if changed && let Err(e) = catalog.save() {
            tracing::warn!("cannot save the catalog: {e}");
        }
    }

    /// Removes the archive, then the record: the catalog never lists a file that is gone
    /// and never forgets one that is still there.
    pub fn delete(&self, snapshot_id: &str) -> Result<(), ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        remove_snapshot(&mut catalog, snapshot_id)
    }

    /// Deletes for a decision taken earlier, outside the catalog lock (a policy, a count
    /// rule): a snapshot pinned since then (or already gone) is kept, checked here under
    /// the lock. Returns whether it was deleted.
    pub fn delete_unless_pinned(&self, snapshot_id: &str) -> Result<bool, ManagerError> {
        let mut catalog = self.catalog.lock().expect("catalog lock");
        match catalog.get(snapshot_id) {
            None => Ok(false),
            Some(s) if s.facts.pinned => {
                tracing::info!(
                    snapshot = snapshot_id,
                    "kept: pinned after the policy decided"
                );
                Ok(false)
            }
            Some(_) => remove_snapshot(&mut catalog, snapshot_id).map(|()| true),
        }
    }

    /// Rebuilds the catalog from the archives and their sidecars. Returns how many
    /// snapshots it lists.
    pub fn reindex(&self) -> Result<usize, ManagerError> {
        Ok(self.catalog.lock().expect("catalog lock").rebuild()?)
    }

    /// Ids of the pinned snapshots.
    pub fn pinned_ids(&self) -> HashSet<String> {
        self.read(|c| {
            c.all()
                .filter(|s| s.facts.pinned)
                .map(|s| s.snapshot_id.clone())
                .collect()
        })
    }

    /// Each app's newest snapshot made by a backup of this server (imports are not
    /// backups): what the staleness watch and the metrics call its last success.
    pub fn last_backups(&self) -> BTreeMap<String, DateTime<Utc>> {
        self.read(|c| {
            let mut last = BTreeMap::new();
            for s in c.all().filter(|s| s.facts.origin != Origin::Imported) {
                let newest = last.entry(s.app_id.clone()).or_insert(s.facts.created_at);
                *newest = (*newest).max(s.facts.created_at);
            }
            last
        })
    }

    /// What each app's local snapshots hold.
    pub fn usage(&self) -> BTreeMap<String, Usage> {
        self.read(|c| {
            let mut apps: BTreeMap<String, Usage> = BTreeMap::new();
            for s in c.all() {
                let a = apps.entry(s.app_id.clone()).or_default();
                a.snapshots += 1;
                a.bytes += s.size_bytes;
            }
            apps
        })
    }

    /// Free and total bytes of the backup filesystem, as appsnap may use them.
    pub fn disk(&self) -> Result<(u64, u64), ManagerError> {
        let vfs = nix::sys::statvfs::statvfs(&self.root).map_err(|e| ManagerError::Io {
            context: format!("statvfs {}", self.root.display()),
            source: e.into(),
        })?;
        let frag = vfs.fragment_size() as u64;
        Ok((
            vfs.blocks_available() as u64 * frag,
            vfs.blocks() as u64 * frag,
        ))
    }
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
    let _ = fs::remove_file(catalog::sidecar_path(Path::new(&path)));
    let _ = fs::remove_file(archive::index::path_for(Path::new(&path)));
    catalog.remove(snapshot_id);
    catalog.save()?;
    tracing::info!(snapshot = snapshot_id, "snapshot deleted");
    Ok(())
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
            } else if root.join(STATE_DIR).exists() || root.join(catalog::CATALOG_FILE).exists() {
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
            catalog::write_atomic(&mark, id.as_bytes())
                .map_err(io_err(format!("cannot write {}", mark.display())))?;
            id
        }
        Err(e) => return Err(io_err(format!("cannot read {}", mark.display()))(e)),
    };
    let remembered = fs::create_dir_all(record.parent().expect("has a parent"))
        .and_then(|()| catalog::write_atomic(&record, id.as_bytes()));
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
            } else if let Some(id) = name
                .strip_suffix(catalog::SIDECAR_SUFFIX)
                .or_else(|| name.strip_suffix(INDEX_SUFFIX))
                && !f
                    .path()
                    .with_file_name(format!("{id}{ARCHIVE_SUFFIX}"))
                    .exists()
            {
                // Written before its archive was moved into place (or left by a delete).
                tracing::warn!("removing {} without an archive", f.path().display());
                let _ = fs::remove_file(f.path());
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                // An atomic write (sidecar, index) cut short.
                let _ = fs::remove_file(f.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Facts, snapshot_from_archive};

    /// A backup root with one own snapshot of app `app`, listed; and its state dir.
    async fn root_with_one(id: &str) -> (tempfile::TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        let store = Store::open(&root, &state).await.unwrap();
        store.insert(own_snapshot(&store, id)).unwrap();
        (dir, state, store)
    }

    /// An archive written under `store`'s root, recorded as a manual backup with a
    /// sidecar, as the backup writes one.
    fn own_snapshot(store: &Store, id: &str) -> Snapshot {
        let path = catalog::test_archive(store.root(), id, "manual");
        let mut s = snapshot_from_archive(&path).unwrap();
        s.facts = Facts {
            origin: Origin::Manual,
            ..s.facts
        };
        catalog::write_sidecar(&s).unwrap();
        s
    }

    #[tokio::test]
    async fn a_pin_and_a_note_survive_a_rebuild_and_an_archive_never_grants_an_origin() {
        let (_dir, _, store) = root_with_one("snapshot_a").await;
        store
            .update_durably("snapshot_a", |s| {
                s.facts.pinned = true;
                s.facts.note = Some("before the upgrade".into());
            })
            .unwrap();
        // A second archive that claims `manual`, with no sidecar: found on disk.
        let claimed = own_snapshot(&store, "snapshot_b");
        fs::remove_file(catalog::sidecar_path(Path::new(&claimed.file_path))).unwrap();

        assert_eq!(store.reindex().unwrap(), 2);
        let a = store.get("snapshot_a").unwrap();
        assert!(a.facts.pinned);
        assert_eq!(a.facts.note.as_deref(), Some("before the upgrade"));
        assert_eq!(a.facts.origin, Origin::Manual);
        assert_eq!(
            store.get("snapshot_b").unwrap().facts.origin,
            Origin::Imported
        );
        assert_eq!(
            store.last_backups().keys().collect::<Vec<_>>(),
            ["app"],
            "the import is nobody's last backup, the own snapshot is"
        );
    }

    #[tokio::test]
    async fn a_snapshot_pinned_after_a_policy_decided_is_kept() {
        let (_dir, _, store) = root_with_one("snapshot_a").await;
        store
            .update("snapshot_a", |s| s.facts.pinned = true)
            .unwrap();
        assert!(!store.delete_unless_pinned("snapshot_a").unwrap());
        assert!(Path::new(&store.get("snapshot_a").unwrap().file_path).exists());
        store
            .update("snapshot_a", |s| s.facts.pinned = false)
            .unwrap();
        assert!(store.delete_unless_pinned("snapshot_a").unwrap());
        assert!(!store.delete_unless_pinned("snapshot_a").unwrap(), "gone");
        assert!(matches!(
            store.get("snapshot_a"),
            Err(ManagerError::SnapshotNotFound(_))
        ));
        assert!(fs::read_dir(store.app_dir("app")).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn a_refused_insert_places_nothing_and_lists_nothing() {
        let (_dir, _, store) = root_with_one("snapshot_a").await;
        let listed = store.get("snapshot_a").unwrap();
        let mut placed = false;
        let refused = store.insert_checked(
            "snapshot_a",
            |already| {
                assert_eq!(already, Some(&listed));
                Err(ManagerError::SnapshotExists("snapshot_a".into()))
            },
            || {
                placed = true;
                Ok(())
            },
        );
        assert!(matches!(refused, Err(ManagerError::SnapshotExists(_))));
        assert!(!placed);
        assert_eq!(store.list(None), vec![listed]);
    }

    #[tokio::test]
    async fn opening_removes_what_a_crash_left_and_refuses_a_second_process() {
        let (dir, state, store) = root_with_one("snapshot_a").await;
        let app = store.app_dir("app");
        fs::write(app.join(".snapshot_b.tar.gz.partial"), b"half").unwrap();
        fs::write(app.join("snapshot_c.meta.json"), b"{}").unwrap();
        fs::write(store.state_dir().join("import-1.tar.gz.partial"), b"half").unwrap();
        fs::write(store.journal_path("app", "backup"), b"{}").unwrap();
        let root = store.root().to_path_buf();

        assert!(matches!(
            Store::open(&root, &state).await,
            Err(ManagerError::RootInUse(_))
        ));
        drop(store);
        let store = Store::open(&root, &state).await.unwrap();
        let mut names: Vec<String> = fs::read_dir(&app)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["snapshot_a.meta.json", "snapshot_a.tar.gz"]);
        assert!(!store.state_dir().join("import-1.tar.gz.partial").exists());
        // Journals are the repairs' to read and remove, never the store's.
        assert_eq!(store.pending_journals().len(), 1);
        assert!(matches!(
            store.no_journal("app", "backup"),
            Err(ManagerError::RepairPending { .. })
        ));
        drop(dir);
    }

    #[tokio::test]
    async fn a_root_that_lost_its_mark_is_refused_rather_than_started_afresh() {
        let (_dir, state, store) = root_with_one("snapshot_a").await;
        let root = store.root().to_path_buf();
        drop(store);
        // As an unmounted backup disk looks: the mount point is there, empty.
        fs::remove_dir_all(&root).unwrap();
        fs::create_dir(&root).unwrap();
        match Store::open(&root, &state).await {
            Err(ManagerError::RootLost { .. }) => {}
            other => panic!("expected RootLost, got {:?}", other.map(|_| ())),
        }
        assert!(
            fs::read_dir(&root).unwrap().next().is_none(),
            "nothing written"
        );
    }
}

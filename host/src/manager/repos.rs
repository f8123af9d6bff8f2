//! Repos: the configured offsite repositories, and which copies in them are this
//! server's.
//!
//! Several servers may share one repository, and a snapshot id survives a download and
//! an import, so an id alone never says whose a copy is. This component is the one place
//! that decides it ([`Repos::copies_of`]): a copy is this server's when its description
//! names this backup root's id; a copy from before descriptions named their root counts
//! as this server's when a local snapshot records its repository id, or when this host
//! made it. Forgetting ([`Repos::forget`]) only ever touches this server's copies, and
//! finding a copy to fetch ([`Repos::find`]) prefers the tar stream the local record
//! names.
//!
//! Every repository call runs on a blocking thread (rustic_core is synchronous). Starting
//! the prune a forget calls for is the caller's: it is offsite work with its own slot.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;

use super::error::ManagerError;
use super::store::Store;
use crate::catalog::{Copy, CopyState};
use crate::ids;
use crate::offsite::{self, CopyWhen, OffsiteError, RemoteSnapshot, RepositoryConfig};

/// The repositories of the configuration, in its order.
pub struct Repos {
    list: Vec<RepositoryConfig>,
}

impl Repos {
    pub fn new(list: Vec<RepositoryConfig>) -> Repos {
        Repos { list }
    }

    /// Every configured repository, in the configuration's order (the order a search
    /// for a copy follows).
    pub fn all(&self) -> &[RepositoryConfig] {
        &self.list
    }

    /// The configured repository of that name (`OffsiteError::UnknownRepository`, a
    /// 404, otherwise). A clone: callers move it into tasks and blocking calls.
    pub fn get(&self, name: &str) -> Result<RepositoryConfig, ManagerError> {
        self.list
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| OffsiteError::UnknownRepository(name.to_string()).into())
    }

    /// `pending` for every repository that takes a copy after each backup, recorded with
    /// the new snapshot itself: a crash before the copies start leaves them `pending`,
    /// and the next start resumes them. Repositories with `copy = "manual"` owe nothing.
    pub fn owed(&self) -> BTreeMap<String, Copy> {
        self.list
            .iter()
            .filter(|r| r.copy == CopyWhen::AfterBackup)
            .map(|r| (r.name.clone(), new_copy(CopyState::Pending)))
            .collect()
    }

    /// What a repository holds (appsnap snapshots only), optionally of one app. Oldest
    /// first; other servers' copies included. Copies whose description does not hold up
    /// (ids, mounts) are left out, never believed. Errors: `InvalidId`, an unknown
    /// repository, or the repository's own (unreachable, wrong password…).
    pub async fn list(
        &self,
        repository: &str,
        app_id: Option<&str>,
    ) -> Result<Vec<RemoteSnapshot>, ManagerError> {
        if let Some(app) = app_id {
            ids::validate("app id", app)?;
        }
        let repo = self.get(repository)?;
        let app = app_id.map(str::to_string);
        blocking("listing task", move || offsite::list(&repo, app.as_deref())).await
    }

    /// The copies a repository holds (of one app when given), split into this server's
    /// and other servers' (see the module header for the rule).
    pub async fn copies_of(
        &self,
        store: &Store,
        repository: &str,
        app_id: Option<&str>,
    ) -> Result<(Vec<RemoteSnapshot>, Vec<RemoteSnapshot>), ManagerError> {
        let list = self.list(repository, app_id).await?;
        let recorded: HashSet<String> = store.read(|catalog| {
            catalog
                .all()
                .filter_map(|s| s.facts.copies.get(repository)?.repository_snapshot.clone())
                .collect()
        });
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(list.into_iter().partition(|r| match &r.root_id {
            Some(root) => root == store.root_id(),
            None => recorded.contains(&r.repository_snapshot) || r.hostname == host,
        }))
    }

    /// The newest copy of `snapshot_id` in `from`, or in the configured repositories in
    /// order. Where several servers copied the same id, the copy of the tar stream the
    /// local record names wins, then this server's own.
    /// Errors: `InvalidId`; with `from`, an unknown repository, its listing error, or
    /// `OffsiteError::SnapshotNotFound`; without, `SnapshotNotFound` (also when no
    /// repository is configured), unless a repository could not be listed: then the
    /// error of the last one that failed. A repository that fails is passed over while
    /// the others are searched.
    pub async fn find(
        &self,
        store: &Store,
        from: Option<&str>,
        snapshot_id: &str,
    ) -> Result<RemoteSnapshot, ManagerError> {
        ids::validate("snapshot id", snapshot_id)?;
        let names: Vec<String> = match from {
            Some(name) => vec![self.get(name)?.name],
            None => self.list.iter().map(|r| r.name.clone()).collect(),
        };
        let recorded_stream = store.get(snapshot_id).ok().and_then(|s| s.facts.tar_sha256);
        let mut last = ManagerError::SnapshotNotFound(snapshot_id.into());
        for name in names {
            match self.copies_of(store, &name, None).await {
                Ok((own, others)) => {
                    let best = own
                        .iter()
                        .map(|r| (r, true))
                        .chain(others.iter().map(|r| (r, false)))
                        .filter(|(r, _)| r.snapshot_id == snapshot_id)
                        .max_by_key(|(r, ours)| {
                            (
                                recorded_stream.as_deref() == Some(r.tar_sha256.as_str()),
                                *ours,
                                r.copied_at,
                            )
                        });
                    if let Some((r, _)) = best {
                        return Ok(r.clone());
                    }
                    if from.is_some() {
                        last = OffsiteError::SnapshotNotFound {
                            name,
                            snapshot_id: snapshot_id.into(),
                        }
                        .into();
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Forgets this server's copies of `snapshot_ids` in `repo` (another server's copies
    /// of the same ids stay) and drops their copy records from the local snapshots.
    /// Ids the repository holds no copy of are passed over; an empty list reads nothing.
    /// Returns how many repository snapshots were forgotten: when more than none, the
    /// caller starts a prune to free their data.
    pub async fn forget(
        &self,
        store: &Store,
        repo: &RepositoryConfig,
        snapshot_ids: &[String],
    ) -> Result<usize, ManagerError> {
        if snapshot_ids.is_empty() {
            return Ok(0);
        }
        let (own, _) = self.copies_of(store, &repo.name, None).await?;
        let (forgotten, ids): (BTreeSet<String>, Vec<String>) = own
            .into_iter()
            .filter(|r| snapshot_ids.contains(&r.snapshot_id))
            .map(|r| (r.snapshot_id, r.repository_snapshot))
            .unzip();
        let n = self.forget_exact(repo, ids).await?;
        for id in &forgotten {
            tracing::info!(snapshot = %id, repository = %repo.name, "offsite copy forgotten");
            drop_copy_record(store, id, &repo.name);
        }
        Ok(n)
    }

    /// Forgets exactly these repository snapshot ids (chosen by the caller among this
    /// server's copies). Returns how many were forgotten.
    pub async fn forget_exact(
        &self,
        repo: &RepositoryConfig,
        repository_ids: Vec<String>,
    ) -> Result<usize, ManagerError> {
        if repository_ids.is_empty() {
            return Ok(0);
        }
        let cfg = repo.clone();
        blocking("forget task", move || {
            offsite::forget(&cfg, &repository_ids)
        })
        .await
    }

    /// Bytes the repository's storage holds: every file (packs, index, snapshots, keys),
    /// from one listing of the storage. What a quota on the repository sees as its total.
    pub async fn bytes(&self, repository: &str) -> Result<u64, ManagerError> {
        let repo = self.get(repository)?;
        blocking("usage task", move || offsite::stored(&repo)).await
    }
}

/// Drops a repository's copy record from a local snapshot (its copy was forgotten). A
/// catalog that cannot be saved is logged: the copy is gone either way.
pub fn drop_copy_record(store: &Store, snapshot_id: &str, repository: &str) {
    if let Err(e) = store.update(snapshot_id, |s| {
        s.facts.copies.remove(repository);
    }) {
        tracing::error!(snapshot = %snapshot_id, "cannot save the catalog: {e}");
    }
}

/// A fresh copy record in `state`, with no attempts and no error.
pub fn new_copy(state: CopyState) -> Copy {
    Copy {
        state,
        attempts: 0,
        error: None,
        repository_snapshot: None,
        bytes_uploaded: None,
        updated_at: chrono::Utc::now(),
    }
}

/// Runs a blocking repository call (rustic_core is synchronous) off the runtime. A task
/// that panics is `Io` with `what` as its context; the call's own error is `Offsite`.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, OffsiteError> + Send + 'static,
) -> Result<T, ManagerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ManagerError::Io {
            context: what.into(),
            source: io::Error::other(e.to_string()),
        })?
        .map_err(ManagerError::from)
}

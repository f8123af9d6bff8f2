//! What a restore of a snapshot would do, computed before it is asked for, touching
//! nothing: which containers stop, where each mount goes (replaced, created, skipped and
//! why, staged while the app runs or extracted while it is stopped), the space each
//! filesystem needs and has, and how long the app was down at its last restore. The
//! console shows it before it asks the user to confirm; the API answers it too.
//!
//! It follows the restore's own plan (`target_of`, `staging_path`, `space`), so that
//! what it says is what the restore does, with one difference: it never creates a
//! volume (`LostVolume::Foresee`: the restore creates one the app lost; the preview says
//! it will). For a copy only a repository holds, the sizes are not known before it is
//! fetched: the preview says what would be fetched, and the restore checks the space
//! once it has the archive (refusing, before anything is touched, when it is short).

use std::path::PathBuf;

use serde::Serialize;

use super::{HOLDS_NOTHING, LostVolume, Space, Target, space};
use crate::archive::allocation;
use crate::manager::BackupManager;
use crate::manager::aside;
use crate::manager::error::ManagerError;

/// The pre-checks of a whole restore.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RestorePreview {
    pub app_id: String,
    pub snapshot_id: String,
    /// Containers running now: stopped for the swap, started again, waited for.
    pub stops: Vec<String>,
    /// Containers stopped now: they stay stopped.
    pub stay_stopped: Vec<String>,
    /// One per mount of the snapshot, in its order.
    pub mounts: Vec<MountPlan>,
    /// Per filesystem written to: the bytes the restored files take and the bytes free
    /// (the current data stays there, set aside, until the restore is complete).
    pub space: Vec<Space>,
    /// Whether every filesystem has the room (a restore that has not is refused, 507).
    pub fits: bool,
    /// How long the app was down at its last restore by this process, if any.
    pub last_downtime_ms: Option<u64>,
    /// Another operation holds the app now: a restore would be refused (409) until it ends.
    pub busy: Option<String>,
    /// Restoring from a repository's copy: what is fetched first (`space` is then empty:
    /// it is checked once the archive is here).
    pub fetch: Option<FetchPlan>,
}

/// The snapshot a preview is for.
pub enum PreviewOf<'a> {
    /// The local one.
    Local,
    /// Its copy in this repository (found there).
    Repository(&'a str),
    /// A copy the caller has already found (`BackupManager::find_remote`).
    Copy(Box<crate::offsite::RemoteSnapshot>),
}

/// The copy a restore fetches before anything else, checked against its checksum.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FetchPlan {
    pub repository: String,
    /// The snapshot's tar stream, in bytes (what the fetch reads, before compression).
    pub tar_bytes: u64,
    /// When and by which server it was copied.
    pub copied_at: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
}

/// Where one mount of the snapshot goes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MountPlan {
    /// `volume`, `bind` or `project`.
    pub kind: String,
    pub name: String,
    /// Where containers see it.
    pub destination: String,
    /// `replace` (the current data, set aside and dropped after the restore), `create`
    /// (a volume the app lost, made again) or `skip`.
    pub action: String,
    /// The host path written (empty when skipped).
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Extracted beside it while the app runs (`false`: a mount point, extracted while
    /// the app is stopped, which lengthens the downtime).
    pub staged: bool,
    /// Why it is skipped.
    pub why: Option<String>,
}

impl BackupManager {
    /// The pre-checks of restoring snapshot `snapshot_id` into `app_id`: the local one,
    /// or (`from`) a copy in a repository. Errors as a restore's would be, before
    /// it starts: a bad id, an unknown app, snapshot, repository or copy, a snapshot of
    /// another app.
    pub async fn restore_preview(
        &self,
        app_id: &str,
        snapshot_id: &str,
        from: PreviewOf<'_>,
    ) -> Result<RestorePreview, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        crate::ids::validate("snapshot id", snapshot_id)?;
        // What each mount's files allocate: the full check's record (the restore's own
        // figure, sparse files at their real size) when there is one, else from the index
        // (sparse files at their full length: an overestimate); unknown for a copy.
        enum Sizes {
            Checked(crate::catalog::Checked),
            Index(std::sync::Arc<crate::archive::index::Index>),
            Unknown,
        }
        let remote = match from {
            PreviewOf::Local => None,
            PreviewOf::Repository(name) => Some(
                self.repos
                    .find(&self.store, Some(name), snapshot_id)
                    .await?,
            ),
            PreviewOf::Copy(remote) => Some(*remote),
        };
        let (snapshot_app, snapshot_mounts, sizes, fetch) = match remote {
            None => {
                let snapshot = self.store.get(snapshot_id)?;
                let sizes = match snapshot.checked() {
                    Some(c) => Sizes::Checked(c.clone()),
                    None => Sizes::Index(self.index_of(&snapshot).await?),
                };
                (snapshot.app_id, snapshot.mounts, sizes, None)
            }
            Some(remote) => {
                let fetch = FetchPlan {
                    repository: remote.repository,
                    tar_bytes: remote.tar_bytes,
                    copied_at: remote.copied_at,
                    hostname: remote.hostname,
                };
                (remote.app_id, remote.mounts, Sizes::Unknown, Some(fetch))
            }
        };
        let app = self.docker.find_app(app_id).await?;
        if snapshot_app != app_id {
            return Err(ManagerError::ForeignSnapshot {
                snapshot_id: snapshot_id.into(),
                snapshot_app,
                app_id: app_id.into(),
            });
        }
        let docker_root = PathBuf::from(self.docker.root_dir().await?);
        let mut mounts = Vec::new();
        let mut written = Vec::new();
        for (i, m) in snapshot_mounts.iter().enumerate() {
            let mut plan = MountPlan {
                kind: m.kind.clone(),
                name: m.name.clone(),
                destination: m.destination.clone(),
                action: "skip".into(),
                path: PathBuf::new(),
                staged: false,
                why: None,
            };
            let (need, entries) = match &sizes {
                Sizes::Checked(c) => (c.stored[i], c.mount_entries[i]),
                Sizes::Index(index) => {
                    let (mut need, mut entries) = (0, 0);
                    for e in index.below(m.archive_dir.as_bytes()).map_err(corrupt)? {
                        need += allocation(index.entry(e).map_err(corrupt)?.size, None);
                        entries += 1;
                    }
                    (need, entries)
                }
                // Whether it holds anything is known once fetched: planned as if it did.
                Sizes::Unknown => (0, 1),
            };
            let target = if entries == 0 {
                Err(HOLDS_NOTHING.to_string())
            } else {
                (self.target_of(&app, m, &docker_root, LostVolume::Foresee)).await?
            };
            match target {
                Ok(t) => {
                    let created = matches!(t, Target::Foreseen(_));
                    plan.action = if created { "create" } else { "replace" }.into();
                    plan.path = t.path();
                }
                Err(why) => plan.why = Some(why),
            }
            if plan.action != "skip" {
                plan.staged = aside::staging_path(&plan.path, "preview").is_some();
                if fetch.is_none() {
                    written.push((plan.path.clone(), need));
                }
            }
            mounts.push(plan);
        }
        let space = space(written.into_iter())?;
        let last_downtime_ms = self
            .jobs
            .list()
            .into_iter()
            .filter(|j| j.kind == "restore" && j.app_id == app_id)
            .find_map(|j| j.result?.get("downtime_ms")?.as_u64());
        Ok(RestorePreview {
            app_id: app_id.into(),
            snapshot_id: snapshot_id.into(),
            stops: app.running().iter().map(|c| c.name.clone()).collect(),
            stay_stopped: (app.containers.iter())
                .filter(|c| !c.running)
                .map(|c| c.name.clone())
                .collect(),
            fits: space.iter().all(|s| s.need <= s.free),
            space,
            mounts,
            last_downtime_ms,
            busy: self.gate.holder(app_id),
            fetch,
        })
    }
}

fn corrupt(e: std::io::Error) -> ManagerError {
    ManagerError::Corrupt(format!("the snapshot's entry index does not read: {e}"))
}

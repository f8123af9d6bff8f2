//! What a restore of a local snapshot would do, computed before it is asked for, touching
//! nothing: which containers stop, where each mount goes (replaced, created, skipped and
//! why, staged while the app runs or extracted while it is stopped), the space each
//! filesystem needs and has, and how long the app was down at its last restore. The
//! console shows it before it asks the user to confirm; the API answers it too.
//!
//! It follows the restore's own plan (`target_of`, `staging_path`, `space`), so that
//! what it says is what the restore does, with one difference: it never creates a
//! volume (`LostVolume::Foresee`: the restore creates one the app lost; the preview says
//! it will).

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
    /// The pre-checks of restoring the local snapshot `snapshot_id` into `app_id`.
    /// Errors as a restore's would be, before it starts: a bad id, an unknown app or
    /// snapshot, a snapshot of another app (a snapshot only a repository holds is
    /// `SnapshotNotFound` here: its sizes are known once it is fetched).
    pub async fn restore_preview(
        &self,
        app_id: &str,
        snapshot_id: &str,
    ) -> Result<RestorePreview, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        crate::ids::validate("snapshot id", snapshot_id)?;
        let snapshot = self.store.get(snapshot_id)?;
        let app = self.docker.find_app(app_id).await?;
        if snapshot.app_id != app_id {
            return Err(ManagerError::ForeignSnapshot {
                snapshot_id: snapshot_id.into(),
                snapshot_app: snapshot.app_id,
                app_id: app_id.into(),
            });
        }
        let docker_root = PathBuf::from(self.docker.root_dir().await?);
        let mut mounts = Vec::new();
        let mut written = Vec::new();
        // What each mount's files allocate: the full check's record (the restore's own
        // figure, sparse files at their real size) when there is one, else from the index
        // (sparse files at their full length: an overestimate).
        enum Sizes {
            Checked(crate::catalog::Checked),
            Index(std::sync::Arc<crate::archive::index::Index>),
        }
        let sizes = match snapshot.checked() {
            Some(c) => Sizes::Checked(c.clone()),
            None => Sizes::Index(self.index_of(&snapshot).await?),
        };
        for (i, m) in snapshot.mounts.iter().enumerate() {
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
                written.push((plan.path.clone(), need));
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
        })
    }
}

fn corrupt(e: std::io::Error) -> ManagerError {
    ManagerError::Corrupt(format!("the snapshot's entry index does not read: {e}"))
}

//! Recovery: what puts an app back as it was when an operation could not finish — a
//! restore's rollback, and the repairs that the next start (and then the periodic repair)
//! runs from the journals a crash left. Each step is idempotent, so a repair interrupted
//! in turn is simply run again; a repair that fails keeps its journal, and until it
//! succeeds the app's backups and restores answer 409 naming it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::aside::Swap;
use super::containers::Containers;
use crate::docker::Docker;
use crate::failpoint;

/// Written before containers are stopped, removed once they run again. Found at start-up,
/// it means appsnap died mid-backup: the containers are started and the partial archive
/// removed.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupJournal {
    pub app_id: String,
    pub snapshot_id: String,
    /// The containers the backup stopped: started again by the repair.
    pub stopped: Vec<String>,
    /// The partial archive: removed by the repair.
    pub partial: PathBuf,
}

/// Runs the repair a journal describes (see `recover_backup` and `recover_restore`).
pub async fn repair(containers: &Containers, path: &Path) -> Result<(), String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name.ends_with(".backup.journal") {
        recover_backup(containers, path).await
    } else if name.ends_with(".restore.journal") {
        recover_restore(containers, path).await
    } else {
        Ok(())
    }
}

/// Repair of a backup that was interrupted (a crash, or containers that would not start
/// again). A container's stop may still be in flight when appsnap died, and starting it
/// then answers "already running" just before the stop completes: so each container is
/// first stopped (which waits for any stop in progress), then started, then checked.
/// `Err` keeps the journal for another try.
pub async fn recover_backup(containers: &Containers, path: &Path) -> Result<(), String> {
    let journal: BackupJournal = match fs::read(path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(j)) => j,
        other => {
            tracing::error!(
                "unreadable backup journal {} ({other:?}); removed",
                path.display()
            );
            let _ = fs::remove_file(path);
            return Ok(());
        }
    };
    tracing::warn!(
        app = %journal.app_id,
        snapshot = %journal.snapshot_id,
        "a backup was interrupted: starting the {} container(s) it had stopped",
        journal.stopped.len()
    );
    let errors = containers.restart_after_crash(&journal.stopped).await;
    let _ = fs::remove_file(&journal.partial);
    if !errors.is_empty() {
        // Keep the journal: the repair is retried until the app runs again.
        return Err(errors.join("; "));
    }
    let _ = fs::remove_file(path);
    Ok(())
}

/// Removes the volumes a restore created (empty, or holding only what it extracted).
/// A volume already gone counts as removed; any other failure is only logged, and the
/// volume is left for a person to remove.
pub async fn remove_volumes(docker: &Docker, names: &[String]) {
    for name in names {
        if let Err(e) = docker.remove_volume(name).await
            && !e.is_not_found()
        {
            tracing::warn!(volume = %name, "could not remove the volume created for the restore: {e}");
        }
    }
}

/// Journals the decision, stops the containers, puts the files back, removes the volumes
/// the restore created and starts the containers that were running. Idempotent, so
/// recovery can run it again.
/// When the files cannot be put back, the containers stay stopped (never started on
/// half-restored data) and the journal stays for the next try.
/// `Ok` removes the journal. `Err` (the text of `RollbackFailed`, or of a failed repair)
/// keeps it: a container that would not start is started again by the next repair.
pub async fn rollback(containers: &Containers, mut swap: Swap) -> Result<(), String> {
    // The decision first: a stop that fails or a crash during it must leave a journal
    // that says "roll back", never one that says "extracted" (which recovery finishes).
    swap.begin_rollback()?;
    containers.stop_for_rollback(&swap.journal.stopped).await?;
    failpoint::point("rollback.stopped")?;
    if let Err(e) = swap.rollback_files() {
        tracing::error!(app = %swap.journal.app_id, "rollback of the files failed: {e}");
        return Err(format!(
            "{e}; the app's containers are left stopped and the rollback is retried \
             in the background (journal {})",
            swap.path().display()
        ));
    }
    remove_volumes(containers.engine(), &swap.journal.created_volumes).await;
    // Every container is tried; one that could not start keeps the journal for a retry.
    containers.start_each(&swap.journal.stopped).await?;
    // The staged data goes once the app runs again: its size costs no downtime.
    swap.drop_staging()?;
    swap.finish()
}

/// Repair of a restore that was interrupted (a crash, or a rollback that failed): finished
/// when the extraction had completed and was synced (the data on disk is the verified
/// snapshot), rolled back otherwise. `Err` keeps the journal for another try.
/// Run by `BackupManager::open` before anything is served, and again by the periodic
/// repair, which holds the app's lock and leaves alone a journal whose cleanup runs.
pub async fn recover_restore(containers: &Containers, path: &Path) -> Result<(), String> {
    // An unreadable journal is kept: it may describe data set aside that a person must see.
    let swap = Swap::load(path)?;
    let (app, snapshot) = (
        swap.journal.app_id.clone(),
        swap.journal.snapshot_id.clone(),
    );
    if !swap.journal.commits() {
        tracing::warn!(%app, %snapshot, phase = ?swap.journal.phase,
            "a restore was interrupted: rolling back to the data from before it");
        rollback(containers, swap).await?;
        tracing::info!(%app, "interrupted restore rolled back");
        return Ok(());
    }
    tracing::warn!(%app, %snapshot,
        "a restore was interrupted after its extraction completed: finishing it");
    containers.start_each(&swap.journal.stopped).await?;
    swap.commit()
}

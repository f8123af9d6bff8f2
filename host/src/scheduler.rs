//! The service's clock: every `scheduler_tick_secs` it retries the repairs still pending
//! (an app left stopped or half restored by a crash), then starts the backups that the
//! schedule policies say are due. Only `appsnap serve` runs it; the CLI's one-off
//! commands do not.

use std::sync::Arc;
use std::time::Duration;

use crate::manager::BackupManager;

/// Starts the loop; it runs until the returned task is aborted (at shutdown).
pub fn spawn(manager: Arc<BackupManager>, tick: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick.max(Duration::from_secs(1)));
        loop {
            interval.tick().await;
            manager.repair_pending().await;
            manager.scheduler_tick(chrono::Utc::now()).await;
        }
    })
}

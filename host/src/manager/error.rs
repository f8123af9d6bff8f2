//! The manager's one error type: every operation and component below the façade
//! returns it, and `api::error` maps each variant to one HTTP status.

use std::io;
use std::path::PathBuf;

use crate::archive::{self, ArchiveError};
use crate::catalog::CatalogError;
use crate::docker::DockerError;
use crate::ids::IdError;

/// Errors of backup operations; `api::error` maps each to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// An id in the request is malformed.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// No compose project of that name exists.
    #[error("no container belongs to compose project `{0}`")]
    AppNotFound(String),
    /// No job of that id is known to this process.
    #[error("no job `{0}` (jobs are kept in memory until restart)")]
    JobNotFound(String),
    /// The job has ended, or is of a kind that runs to its end.
    #[error(transparent)]
    NotCancellable(#[from] crate::jobs::CancelError),
    /// No snapshot of that id is in the catalog.
    #[error("no snapshot `{0}` in the catalog")]
    SnapshotNotFound(String),
    /// Another operation holds the app's lock.
    #[error("a {operation} of app `{app_id}` is already running")]
    Busy { app_id: String, operation: String },
    /// An interrupted backup or restore of the app is not repaired yet.
    #[error(
        "an interrupted {operation} of app `{app_id}` is not repaired yet ({journal}); appsnap \
         retries the repair in the background, see its log"
    )]
    RepairPending {
        app_id: String,
        operation: String,
        journal: PathBuf,
    },
    /// The backup root was initialised before but its mark is gone: most likely the backup
    /// disk is not mounted, and appsnap would fill the root filesystem instead.
    #[error(
        "backup root {root} was initialised before (id {id}) but {mark} is missing: is the \
         backup disk mounted? If the old backups are really gone, remove {record} to start afresh"
    )]
    RootLost {
        root: PathBuf,
        id: String,
        mark: PathBuf,
        record: PathBuf,
    },
    /// The backup filesystem is full.
    #[error("no space left on the backup filesystem: {0}")]
    NoSpace(String),
    /// A restore's data cannot fit where it goes; nothing was touched.
    #[error("not enough space to restore: {0}")]
    NoSpaceToRestore(String),
    /// Docker failed (engine unreachable, container gone, hook failed).
    #[error(transparent)]
    Docker(DockerError),
    /// Writing or reading an archive failed.
    #[error(transparent)]
    Archive(ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The request that ran the operation was closed before it finished (its client left).
    #[error("the request running this {0} was closed before it finished; the {0} was stopped")]
    Abandoned(&'static str),
    /// appsnap is shutting down: the work stopped at a consistent point.
    #[error("appsnap is shutting down; the operation was stopped and nothing half-done was kept")]
    ShuttingDown,
    /// The job was cancelled on request (`POST /api/v1/jobs/{id}/cancel`): its work
    /// stopped at a safe point, and what it had done was undone.
    #[error("the {0} was cancelled on request; nothing half-done was kept")]
    Cancelled(String),
    /// The archive file of a snapshot could not be removed; the catalog still lists it.
    #[error("cannot remove {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The data a successful restore replaced could not all be removed (the restore
    /// stands; what is left is named, for a person to remove).
    #[error("the data a restore of app `{app_id}` replaced was not all removed: {details}")]
    CleanupFailed { app_id: String, details: String },
    /// The snapshot was taken of another app.
    #[error("snapshot `{snapshot_id}` belongs to app `{snapshot_app}`, not `{app_id}`")]
    ForeignSnapshot {
        snapshot_id: String,
        snapshot_app: String,
        app_id: String,
    },
    /// The archive failed verification; nothing was touched.
    #[error("{0}")]
    Corrupt(String),
    /// A restore failed at `step` and everything was put back as it was.
    #[error(
        "{step} failed: {cause}; the previous data was put back and the containers that were running started again"
    )]
    RestoreFailed { step: String, cause: String },
    /// A restore failed and so did putting things back: see `rollback` and the log.
    #[error("{step} failed: {cause}; rolling back also failed: {rollback}")]
    RollbackFailed {
        step: String,
        cause: String,
        rollback: String,
    },
    /// The quota policy refused the backup.
    #[error("quota policy `{policy}` denied the backup: {reason}")]
    QuotaDenied { policy: String, reason: String },
    /// A policy could not be stored, bound or run.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A path in a request that can never name an entry of a snapshot: absolute, with a
    /// `.` or `..` component, a NUL, or too long. Matched against the index only, never
    /// joined onto a host path.
    #[error("invalid path `{0}`: a path inside a snapshot is relative, without `.`, `..` or NUL")]
    InvalidPath(String),
    /// The snapshot holds nothing (or no folder, for a listing) at that path.
    #[error("snapshot `{snapshot_id}` holds no {what} `{path}`")]
    PathNotFound {
        snapshot_id: String,
        path: String,
        what: &'static str,
    },
    /// Only a regular file's or a folder's content can be read (a hard link is read as
    /// its file).
    #[error("`{0}` is neither a regular file nor a folder of the snapshot")]
    NotAFile(String),
    /// A partial restore cannot put this path back as the app's data stands now (its
    /// mount is gone, a folder on its way is missing or a link, it is a mount point, a
    /// `beside` folder of that name exists); nothing was touched.
    #[error("`{path}` cannot be restored: {why}")]
    PathNotRestorable { path: String, why: String },
    /// The copy was made before copies carried their entry index.
    #[error(
        "the copy of `{snapshot_id}` in `{repository}` was made before copies carried their \
         entry index, so it cannot be browsed: fetch it, or browse a newer copy"
    )]
    CopyNotBrowsable {
        repository: String,
        snapshot_id: String,
    },
    /// The byte range asked for starts beyond the file's end.
    #[error("the range starts beyond the file's {size} bytes")]
    BadRange { size: u64 },
    /// A snapshot with this id is in the catalog already.
    #[error("snapshot `{0}` exists already")]
    SnapshotExists(String),
    /// The upload is over the configured limit.
    #[error("the upload exceeds max_import_bytes ({0} bytes)")]
    TooLarge(u64),
    /// Another appsnap process (the service, or a CLI run) uses this backup root.
    #[error("another appsnap process is using {0}; stop it or use its API")]
    RootInUse(PathBuf),
    /// An offsite repository failed or refused (unknown, unreachable, wrong password…).
    #[error(transparent)]
    Offsite(#[from] crate::offsite::OffsiteError),
    /// A filesystem operation on the backup root failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ManagerError {
    /// A job's work stopped by its cancel flags comes up as `ShuttingDown` (the flags are
    /// shared with the shutdown, see `Gate::new_cancel`); for a job whose cancel was
    /// asked for, it is that cancel. Every job's end passes here.
    pub fn or_cancelled(self, job: &crate::jobs::Job) -> Self {
        match self {
            ManagerError::ShuttingDown | ManagerError::Cancelled(_) if job.cancel_requested() => {
                ManagerError::Cancelled(job.info().kind)
            }
            other => other,
        }
    }

    /// The cancel asked for `job`, as its error, when there is one: work checks it
    /// before each step that would be undone anyway (stopping an app, say).
    pub fn if_cancelled(job: &crate::jobs::Job) -> Result<(), Self> {
        match job.cancel_requested() {
            true => Err(ManagerError::Cancelled(job.info().kind)),
            false => Ok(()),
        }
    }

    /// The error as an alert tells it (see [`DockerError::alert_text`]).
    pub fn alert_text(&self) -> String {
        match self {
            ManagerError::Docker(e) => e.alert_text(),
            other => other.to_string(),
        }
    }
}

impl From<DockerError> for ManagerError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::AppNotFound(app) => ManagerError::AppNotFound(app),
            other => ManagerError::Docker(other),
        }
    }
}

impl From<ArchiveError> for ManagerError {
    fn from(e: ArchiveError) -> Self {
        if matches!(e, ArchiveError::Cancelled) {
            ManagerError::ShuttingDown
        } else if e.is_no_space() {
            ManagerError::NoSpace(e.to_string())
        } else if e.is_bad_archive() {
            ManagerError::Corrupt(e.to_string())
        } else {
            ManagerError::Archive(e)
        }
    }
}

/// Maps an I/O error on the backup root to `NoSpace` when the disk is full, or to `Io`
/// with `context` (what was being done to which path).
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ManagerError {
    let context = context.into();
    move |source| {
        if archive::is_no_space(&source) {
            ManagerError::NoSpace(format!("{context}: {source}"))
        } else {
            ManagerError::Io { context, source }
        }
    }
}

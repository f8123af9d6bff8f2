//! Jobs: long operations (backups, restores and their cleanups, verifies, fetches,
//! offsite copies, prunes, checks) with observable progress.
//!
//! Every backup runs as a job, whether the client waits for it (`wait=true`, the default,
//! answered when the job ends) or not (`wait=false`, answered at once with 202 and the
//! job). Progress lives in a `watch` channel: the blocking archive thread publishes, and
//! any number of pollers and SSE streams read the latest value without queueing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

/// Finished jobs remembered for `GET /api/v1/jobs/{id}`: beyond this many jobs in all,
/// the oldest finished ones are forgotten; running jobs always stay.
const KEEP_FINISHED: usize = 1000;

/// A job starts `running` and ends `succeeded` (with `result`) or `failed` (with
/// `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    /// `job_<UTC time>_<8 hex>`, known to this process only: gone after a restart.
    pub job_id: String,
    /// `backup`, `restore`, `cleanup` (removing the data a restore replaced), `verify`,
    /// `fetch`, `copy`, `prune` or `check`.
    pub kind: String,
    /// Empty for the jobs of a whole repository (`prune`, `check`).
    pub app_id: String,
    pub state: JobState,
    /// What the job is doing now, e.g. `stopping containers`, `archiving`. `done` once it
    /// succeeded; a failed job keeps its last step, where it failed.
    pub step: String,
    /// The job's steps as they happened, oldest first (at most the first
    /// `MAX_LOG_LINES`, then the last step), each with when it began.
    pub log: Vec<LogLine>,
    pub bytes_done: u64,
    /// Estimated from a metadata walk before archiving; 0 until known.
    pub bytes_total: u64,
    /// Whether `POST /api/v1/jobs/{job_id}/cancel` can stop this job now: backups,
    /// restores, verifies, fetches and copies can. A prune, a check or a restore's
    /// cleanup runs to its end, and so does a restore from the moment it stops the app
    /// (what is left, renames and the start, is shorter than undoing them).
    pub cancellable: bool,
    /// A cancel was asked for: the job stops at its next safe point and ends `failed`
    /// (a restore rolled back), with nothing half-done kept.
    pub cancel_requested: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What a successful job made: the snapshot (backup), the restore's outcome, the
    /// verify report. `null` until the job succeeds.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// `{"message","details"}` of a failed job (filled in by the API from `failure`);
    /// `null` unless it failed.
    #[schema(value_type = Option<crate::model::ErrorBody>)]
    pub error: Option<serde_json::Value>,
    /// Why the job failed, as the operation's own error: the API maps it to `error` the
    /// same way it maps the error of a request (`api::error`), so jobs need not know HTTP.
    #[serde(skip)]
    #[schema(ignore)]
    pub failure: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl JobInfo {
    /// Makes `step` the current step, and a line of the log.
    fn log_step(&mut self, step: &str) {
        self.step = step.to_string();
        if self.log.len() >= MAX_LOG_LINES {
            self.log.pop();
        }
        self.log.push(LogLine {
            at: Utc::now(),
            text: step.to_string(),
        });
    }
}

/// One line of a job's log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub text: String,
}

/// A job's log keeps this many lines: a long job's steps are few (a dozen at most), so
/// this bounds only a job that loops.
const MAX_LOG_LINES: usize = 100;

/// The kinds of job whose work checks cancel flags, and so can stop halfway without
/// leaving anything half-done (see [`JobInfo::cancellable`]).
const CANCELLABLE: [&str; 5] = ["backup", "restore", "verify", "fetch", "copy"];

/// Why a job cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The job has ended already.
    #[error("job {0} has already ended")]
    Ended(String),
    /// The job runs to its end: its kind does once started, or it is past the point
    /// where undoing costs more than finishing.
    #[error("this {0} job cannot be stopped now: it runs to its end")]
    NotCancellable(String),
}

/// The handle a running operation reports through.
#[derive(Clone)]
pub struct Job {
    tx: Arc<watch::Sender<JobInfo>>,
    /// The cancel flags of the job's work (see `Gate::new_cancel`).
    cancels: Arc<crate::archive::Cancels>,
}

impl Job {
    pub fn id(&self) -> String {
        self.tx.borrow().job_id.clone()
    }

    pub fn info(&self) -> JobInfo {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobInfo> {
        self.tx.subscribe()
    }

    pub fn step(&self, step: &str) {
        self.tx.send_modify(|j| j.log_step(step));
    }

    /// Asks the job to stop: every cancel flag of its work is set, and every later one.
    /// The work stops at its next check and the job ends `failed`; it is not ended here,
    /// since only the work knows when what it did is undone.
    pub fn cancel(&self) -> Result<(), CancelError> {
        let mut refused = None;
        self.tx.send_if_modified(|j| {
            if j.state != JobState::Running {
                refused = Some(CancelError::Ended(j.job_id.clone()));
                false
            } else if !j.cancellable {
                refused = Some(CancelError::NotCancellable(j.kind.clone()));
                false
            } else if j.cancel_requested {
                false
            } else {
                j.cancel_requested = true;
                let step = j.step.clone();
                j.log_step("cancel requested");
                j.step = step;
                true
            }
        });
        match refused {
            Some(e) => Err(e),
            None => {
                self.cancels.set_all();
                Ok(())
            }
        }
    }

    /// From here the job runs to its end and takes no cancel (`cancellable` turns false):
    /// for work past the point where undoing costs more than finishing. False when a
    /// cancel came first (the caller then stops); both are decided under the job's lock,
    /// so no cancel is taken and then ignored.
    pub fn no_more_cancels(&self) -> bool {
        let mut cancelled = false;
        self.tx.send_if_modified(|j| {
            cancelled = j.cancel_requested;
            let change = !cancelled && j.cancellable;
            if change {
                j.cancellable = false;
            }
            change
        });
        !cancelled
    }

    /// Resolves once a cancel is asked for: for a wait between pieces of work (a copy's
    /// next attempt), which no cancel flag would end.
    pub async fn cancel_asked(&self) {
        let mut rx = self.subscribe();
        // The sender lives as long as `self`: the wait cannot end with an error.
        let _ = rx.wait_for(|j| j.cancel_requested).await;
    }

    /// Whether a cancel was asked for (the work checks it between its steps).
    pub fn cancel_requested(&self) -> bool {
        self.cancels.is_set()
    }

    /// Puts a piece of the job's work under its cancel (see `Gate::new_cancel`).
    pub fn adopt_cancel(&self, flag: &crate::archive::Cancel) {
        self.cancels.adopt(flag);
    }

    /// The estimate of the work's size; it may come after the work has begun (and then
    /// never below what is done already).
    pub fn total(&self, bytes: u64) {
        self.tx
            .send_modify(|j| j.bytes_total = bytes.max(j.bytes_done));
    }

    /// A step that counts its own bytes from 0 (a pre-copy's assembly after its first
    /// pass): done back to 0, `bytes` the new total.
    pub fn count_anew(&self, bytes: u64) {
        self.tx.send_modify(|j| {
            j.bytes_done = 0;
            j.bytes_total = bytes;
        });
    }

    /// Callable from any thread (the archive writer's).
    pub fn progress(&self, bytes: u64) {
        self.tx.send_modify(|j| {
            j.bytes_done = bytes;
            // The estimate may fall short when files grow while being read.
            j.bytes_total = j.bytes_total.max(bytes);
        });
    }

    pub fn succeed(&self, result: serde_json::Value) {
        self.tx.send_modify(|j| {
            j.state = JobState::Succeeded;
            j.log_step("done");
            j.finished_at = Some(Utc::now());
            j.result = Some(result);
        });
    }

    pub fn fail(&self, error: Arc<dyn std::error::Error + Send + Sync>) {
        self.tx.send_modify(|j| {
            j.state = JobState::Failed;
            j.finished_at = Some(Utc::now());
            j.failure = Some(error);
        });
    }

    /// A guard that fails the job with `error` if it is dropped while the job still runs:
    /// for a job run inside a request's future, which axum drops when the client leaves,
    /// so that no line after an `.await` would ever record the end.
    pub fn fail_if_dropped(
        &self,
        error: Arc<dyn std::error::Error + Send + Sync>,
    ) -> FailIfDropped {
        FailIfDropped {
            job: self.clone(),
            error: Some(error),
        }
    }
}

/// See [`Job::fail_if_dropped`].
pub struct FailIfDropped {
    job: Job,
    error: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Drop for FailIfDropped {
    fn drop(&mut self) {
        if self.job.info().state == JobState::Running
            && let Some(error) = self.error.take()
        {
            self.job.fail(error);
        }
    }
}

/// All jobs of this process (they do not survive a restart; snapshots do).
#[derive(Default)]
pub struct Jobs {
    inner: Mutex<JobsInner>,
}

#[derive(Default)]
struct JobsInner {
    by_id: HashMap<String, Job>,
    order: VecDeque<String>,
}

impl Jobs {
    /// A new running job, listed at once. Its id carries the second it started and 32
    /// random bits. Creating one may forget the oldest finished jobs (`KEEP_FINISHED`).
    pub fn create(&self, kind: &str, app_id: &str) -> Job {
        let id = format!(
            "job_{}_{:08x}",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        );
        let (tx, _) = watch::channel(JobInfo {
            job_id: id.clone(),
            kind: kind.into(),
            app_id: app_id.into(),
            state: JobState::Running,
            step: "starting".into(),
            log: Vec::new(),
            bytes_done: 0,
            bytes_total: 0,
            cancellable: CANCELLABLE.contains(&kind),
            cancel_requested: false,
            started_at: Utc::now(),
            finished_at: None,
            result: None,
            error: None,
            failure: None,
        });
        let job = Job {
            tx: Arc::new(tx),
            cancels: Arc::default(),
        };
        let mut inner = self.inner.lock().expect("jobs lock");
        inner.by_id.insert(id.clone(), job.clone());
        inner.order.push_back(id);
        // Forget the oldest finished jobs beyond the limit; running ones always stay.
        while inner.order.len() > KEEP_FINISHED {
            let Some(pos) = inner
                .order
                .iter()
                .position(|id| inner.by_id[id].info().state != JobState::Running)
            else {
                break;
            };
            let old = inner.order.remove(pos).expect("position is valid");
            inner.by_id.remove(&old);
        }
        job
    }

    /// `None` for an id never made by this process, or forgotten since.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.inner.lock().expect("jobs lock").by_id.get(id).cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<JobInfo> {
        let inner = self.inner.lock().expect("jobs lock");
        inner
            .order
            .iter()
            .rev()
            .map(|id| inner.by_id[id].info())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job past its point of no return refuses a cancel; one cancelled before it is
    /// told so when it gets there; kinds that run to their end refuse from the start;
    /// an ended job refuses.
    #[test]
    fn a_cancel_is_taken_until_the_point_of_no_return_and_never_after() {
        let jobs = Jobs::default();
        let late = jobs.create("restore", "a");
        assert!(late.no_more_cancels());
        assert!(matches!(late.cancel(), Err(CancelError::NotCancellable(_))));
        assert!(!late.info().cancellable && !late.cancel_requested());

        let early = jobs.create("restore", "b");
        early.cancel().unwrap();
        assert!(!early.no_more_cancels());
        assert!(early.info().cancel_requested);

        let prune = jobs.create("prune", "");
        assert!(matches!(
            prune.cancel(),
            Err(CancelError::NotCancellable(_))
        ));
        let ended = jobs.create("backup", "c");
        ended.succeed(serde_json::Value::Null);
        assert!(matches!(ended.cancel(), Err(CancelError::Ended(_))));
    }
}

//! The gate: who may work on what, and when.
//!
//! Every operation passes it before it touches an app or the disk:
//! 1. an app's **lock** ([`Gate::lock`]): one operation per app at a time; a second gets
//!    `Busy` at once, naming the operation that holds it;
//! 2. the **cleanup** of the app's last restore ([`Gate::cleanup_started`],
//!    [`Gate::wait_for_cleanup`]): the data a restore replaced is removed after its
//!    answer, and the next operation on that app waits until it is gone;
//! 3. a **heavy slot** ([`Gate::heavy_slot`]): at most `max_parallel` backups, restores,
//!    verifies and imports read or write archives at once; more wait their turn and say so;
//! 4. **cancel flags** ([`Gate::new_cancel`], [`Gate::cancel_all`]): a shutdown, or a
//!    job's cancel, stops long archive work at its next chunk;
//! 5. **copy claims** ([`Claims`]): one live copy task per (snapshot, repository) pair.
//!
//! The gate knows nothing of the disk: whether an interrupted operation left a journal is
//! the store's to say, and the façade asks both before an operation starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, SemaphorePermit, watch};

use super::error::ManagerError;
use crate::archive;
use crate::jobs::Job;

/// app id → the operation holding its lock.
type Busy = Arc<Mutex<HashMap<String, String>>>;

/// app id → a receiver that sees its sender dropped when that app's cleanup ends.
type Cleanups = Arc<Mutex<HashMap<String, watch::Receiver<()>>>>;

/// Locks, cleanup waits, heavy-work slots and cancel flags of one manager.
pub struct Gate {
    busy: Busy,
    /// How many app locks are held: a graceful shutdown waits for 0.
    busy_count: watch::Sender<usize>,
    cleanups: Cleanups,
    heavy: Semaphore,
    heavy_slots: usize,
    /// Every cancel flag; set once shutdown begins, and new flags start set.
    shutdown: archive::Cancels,
}

/// An app's lock: held for the whole operation, released when dropped, however the
/// operation ends (error, panic, client gone).
pub struct AppLock {
    pub app_id: String,
    busy: Busy,
    count: watch::Sender<usize>,
    /// The cleanup of the app's last restore, still running when the lock was taken:
    /// work on the app's data waits for it ([`Gate::wait_for_cleanup`]).
    after: Option<watch::Receiver<()>>,
}

impl AppLock {
    /// Whether a restore's cleanup was still running on the app when this lock was
    /// taken: that cleanup owns the app's restore journal until it ends.
    pub fn cleanup_running(&self) -> bool {
        self.after.is_some()
    }
}

impl Drop for AppLock {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().expect("busy lock");
        busy.remove(&self.app_id);
        self.count.send_replace(busy.len());
    }
}

/// Held by a running cleanup; dropping it (at its end, however it ends) releases those
/// that wait for it.
pub struct CleanupRunning {
    app_id: String,
    cleanups: Cleanups,
    _done: watch::Sender<()>,
}

impl Drop for CleanupRunning {
    fn drop(&mut self) {
        self.cleanups
            .lock()
            .expect("cleanups lock")
            .remove(&self.app_id);
    }
}

impl Gate {
    /// A gate with `heavy_slots` slots for heavy work (at least one).
    pub fn new(heavy_slots: usize) -> Gate {
        let heavy_slots = heavy_slots.max(1);
        Gate {
            busy: Arc::default(),
            busy_count: watch::channel(0).0,
            cleanups: Arc::default(),
            heavy: Semaphore::new(heavy_slots),
            heavy_slots,
            shutdown: archive::Cancels::default(),
        }
    }

    /// Takes `app_id`'s lock for `operation`, or says which operation holds it. Never
    /// waits: the caller answers 409 at once rather than queueing behind a long restore.
    pub fn lock(&self, app_id: &str, operation: &str) -> Result<AppLock, ManagerError> {
        let mut busy = self.busy.lock().expect("busy lock");
        if let Some(running) = busy.get(app_id) {
            return Err(ManagerError::Busy {
                app_id: app_id.into(),
                operation: running.clone(),
            });
        }
        busy.insert(app_id.into(), operation.into());
        self.busy_count.send_replace(busy.len());
        Ok(AppLock {
            app_id: app_id.into(),
            busy: Arc::clone(&self.busy),
            count: self.busy_count.clone(),
            after: self
                .cleanups
                .lock()
                .expect("cleanups lock")
                .get(app_id)
                .cloned(),
        })
    }

    /// The operation holding `app_id`'s lock now, if any (for a page to say so before it
    /// offers an action that would be refused).
    pub fn holder(&self, app_id: &str) -> Option<String> {
        self.busy.lock().expect("busy lock").get(app_id).cloned()
    }

    /// Records that the removal of what a restore of `app_id` replaced has begun. Call
    /// it while that restore still holds the app's lock, so that the next lock taken on
    /// the app sees it.
    pub fn cleanup_started(&self, app_id: &str) -> CleanupRunning {
        let (done, running) = watch::channel(());
        self.cleanups
            .lock()
            .expect("cleanups lock")
            .insert(app_id.into(), running);
        CleanupRunning {
            app_id: app_id.into(),
            cleanups: Arc::clone(&self.cleanups),
            _done: done,
        }
    }

    /// Waits, saying so in `job`, until the cleanup that ran when `lock` was taken has
    /// ended. Returns whether there was one (the caller then checks that it left no
    /// journal behind).
    pub async fn wait_for_cleanup(&self, lock: &AppLock, job: &Job) -> bool {
        let Some(mut done) = lock.after.clone() else {
            return false;
        };
        let step = job.info().step;
        job.step("waiting for the removal of the data the last restore replaced");
        // The sender is dropped when the cleanup ends, however it ends.
        let _ = done.changed().await;
        job.step(&step);
        true
    }

    /// How many cleanups run now.
    pub fn cleanups_running(&self) -> usize {
        self.cleanups.lock().expect("cleanups lock").len()
    }

    /// Resolves once every cleanup running now has ended.
    pub async fn cleanups_finished(&self) {
        let running: Vec<_> = self
            .cleanups
            .lock()
            .expect("cleanups lock")
            .values()
            .cloned()
            .collect();
        for mut done in running {
            let _ = done.changed().await;
        }
    }

    /// Resolves once no app lock is held.
    pub async fn idle(&self) {
        let mut rx = self.busy_count.subscribe();
        let _ = rx.wait_for(|&n| n == 0).await;
    }

    /// A slot for heavy work. While all are taken, `job`'s step says it waits, and gets
    /// its own text back once the slot is there.
    pub async fn heavy_slot(&self, job: Option<&Job>) -> SemaphorePermit<'_> {
        if let Ok(permit) = self.heavy.try_acquire() {
            return permit;
        }
        let step = job.map(|j| j.info().step);
        if let Some(job) = job {
            job.step(&format!(
                "waiting for a free slot ({} heavy operations at most)",
                self.heavy_slots
            ));
        }
        let permit = self
            .heavy
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if let (Some(job), Some(step)) = (job, step) {
            job.step(&step);
        }
        permit
    }

    /// A cancel flag for one piece of long archive work, which [`Gate::cancel_all`] sets,
    /// and `job`'s cancel too ([`Job::cancel`]). Made after either, it is set from the
    /// start.
    pub fn new_cancel(&self, job: Option<&Job>) -> archive::Cancel {
        let flag = archive::Cancel::default();
        self.shutdown.adopt(&flag);
        if let Some(job) = job {
            job.adopt_cancel(&flag);
        }
        flag
    }

    /// Begins the shutdown: every cancel flag alive is set, and every one made later.
    pub fn cancel_all(&self) {
        self.shutdown.set_all();
    }

    /// Whether the shutdown has begun (waits for containers end early then).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_set()
    }
}

/// The (snapshot, repository) pairs with a live copy task. Shared (`Arc`) with each
/// `Claim`, which outlives the borrow of the manager that made it: it moves into a task.
#[derive(Default)]
pub struct Claims(Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>);

impl Claims {
    /// The pair, if no task holds it; released when the returned claim drops.
    /// `None` while a task holds it: the caller then starts nothing (a request: `Busy`).
    pub fn claim(&self, snapshot_id: &str, repository: &str) -> Option<Claim> {
        let key = (snapshot_id.to_string(), repository.to_string());
        let fresh = self.0.lock().expect("copy claims").insert(key.clone());
        fresh.then(|| Claim {
            set: Arc::clone(&self.0),
            key,
        })
    }
}

/// A live copy task's hold on its pair; dropping it (the task ended, however it ended)
/// frees the pair for the next request.
pub struct Claim {
    set: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.lock().expect("copy claims").remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Jobs;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_second_lock_on_an_app_is_refused_and_names_the_first() {
        let gate = Gate::new(1);
        let held = gate.lock("app", "restore").unwrap();
        match gate.lock("app", "backup") {
            Err(ManagerError::Busy { app_id, operation }) => {
                assert_eq!((app_id.as_str(), operation.as_str()), ("app", "restore"));
            }
            other => panic!("expected Busy, got {:?}", other.map(|l| l.app_id.clone())),
        }
        // Another app is not held up.
        let _other = gate.lock("other", "backup").unwrap();
        drop(held);
        gate.lock("app", "backup").unwrap();
    }

    #[tokio::test]
    async fn idle_waits_for_every_lock_to_be_released() {
        let gate = Arc::new(Gate::new(1));
        let lock = gate.lock("app", "backup").unwrap();
        let idle = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "idle resolved while a lock was held");
        drop(lock);
        idle.await.unwrap();
    }

    #[tokio::test]
    async fn a_lock_taken_during_a_cleanup_waits_for_its_end_and_one_after_does_not() {
        let gate = Gate::new(1);
        let job = Jobs::default().create("backup", "app");
        job.step("archiving");
        let running = gate.cleanup_started("app");
        let lock = gate.lock("app", "backup").unwrap();
        assert!(lock.cleanup_running());
        assert_eq!(gate.cleanups_running(), 1);

        {
            let wait = gate.wait_for_cleanup(&lock, &job);
            tokio::pin!(wait);
            assert!(futures_poll_once(wait.as_mut()).await.is_none());
            assert!(job.info().step.starts_with("waiting for the removal"));
            drop(running);
            assert!(wait.await, "there was a cleanup to wait for");
        }
        assert_eq!(job.info().step, "archiving", "the job's own step is back");
        assert_eq!(gate.cleanups_running(), 0);
        drop(lock);

        let lock = gate.lock("app", "backup").unwrap();
        assert!(!lock.cleanup_running());
        assert!(!gate.wait_for_cleanup(&lock, &job).await);
    }

    #[tokio::test]
    async fn a_job_waiting_for_a_heavy_slot_says_so_and_gets_it_when_one_is_freed() {
        let gate = Gate::new(1);
        let job = Jobs::default().create("restore", "app");
        job.step("verifying");
        let first = gate.heavy_slot(None).await;
        let second = gate.heavy_slot(Some(&job));
        tokio::pin!(second);
        assert!(futures_poll_once(second.as_mut()).await.is_none());
        assert_eq!(
            job.info().step,
            "waiting for a free slot (1 heavy operations at most)"
        );
        drop(first);
        let _slot = second.await;
        assert_eq!(job.info().step, "verifying");
    }

    #[test]
    fn cancel_all_sets_every_flag_alive_and_every_later_one() {
        let gate = Gate::new(1);
        let before = gate.new_cancel(None);
        assert!(!before.load(Ordering::SeqCst));
        assert!(!gate.is_shutting_down());
        gate.cancel_all();
        assert!(before.load(Ordering::SeqCst));
        assert!(gate.new_cancel(None).load(Ordering::SeqCst));
        assert!(gate.is_shutting_down());
    }

    #[test]
    fn a_jobs_cancel_sets_its_own_flags_only() {
        let (gate, jobs) = (Gate::new(1), crate::jobs::Jobs::default());
        let (mine, other) = (jobs.create("backup", "a"), jobs.create("backup", "b"));
        let (before, others) = (gate.new_cancel(Some(&mine)), gate.new_cancel(Some(&other)));
        let unrelated = gate.new_cancel(None);
        assert!(mine.cancel().is_ok());
        assert!(before.load(Ordering::SeqCst));
        assert!(gate.new_cancel(Some(&mine)).load(Ordering::SeqCst));
        assert!(!others.load(Ordering::SeqCst) && !unrelated.load(Ordering::SeqCst));
        assert!(!gate.is_shutting_down());
        assert!(mine.info().cancel_requested && !other.info().cancel_requested);
    }

    /// Polls `f` once: `Some` if it is ready, `None` if it would wait.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}

//! Containers: stopping and starting an app's containers around the work on its data.
//!
//! Every operation that needs the app still while it reads or writes the data comes here:
//! [`Containers::stop_all`] before, [`Containers::start_all`] after, and a restore then
//! [`Containers::wait_running`] to prove the app runs on its new data. Messages name the
//! operation they serve ([`Purpose`]), so a restore's answer never says "backup".
//!
//! The Docker calls go through the small [`Engine`] trait: [`Docker`] in the service, a
//! fake engine in this module's unit tests (the decisions here — what is a warning, what
//! is a failure, when a container counts as running — are tested without a daemon; the
//! integration tests run them against the real one).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use super::error::ManagerError;
use crate::docker::{Container, ContainerStatus, Docker, DockerError, Started, Stopped};

/// The Docker calls this module makes.
pub trait Engine: Send + Sync {
    /// Stops a container, within its own stop timeout when it has one, else
    /// `default_secs`; waits for a stop already in flight.
    fn stop(
        &self,
        id: &str,
        default_secs: u32,
    ) -> impl Future<Output = Result<Stopped, DockerError>> + Send;
    /// Starts a container; says so when Docker finds it running already.
    fn start(&self, id: &str) -> impl Future<Output = Result<Started, DockerError>> + Send;
    /// A container's state now.
    fn state(&self, id: &str) -> impl Future<Output = Result<ContainerStatus, DockerError>> + Send;
    /// Runs a container's hook of `label`, if it has one; fails on a non-zero exit or
    /// after `timeout`.
    fn run_hook(
        &self,
        c: &Container,
        label: &'static str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;
}

impl Engine for Docker {
    async fn stop(&self, id: &str, default_secs: u32) -> Result<Stopped, DockerError> {
        Docker::stop(self, id, default_secs).await
    }
    async fn start(&self, id: &str) -> Result<Started, DockerError> {
        Docker::start(self, id).await
    }
    async fn state(&self, id: &str) -> Result<ContainerStatus, DockerError> {
        Docker::state(self, id).await
    }
    async fn run_hook(
        &self,
        c: &Container,
        label: &'static str,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        Docker::run_hook(self, c, label, timeout).await
    }
}

/// Which operation stops or starts the containers: named in its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Backup,
    Restore,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::Backup => "backup",
            Purpose::Restore => "restore",
        })
    }
}

/// What starting containers again gave.
#[derive(Debug, Default)]
pub struct StartReport {
    /// For the snapshot's or the restore's warnings.
    pub warnings: Vec<String>,
    /// A container exists but could not be started.
    pub failed: bool,
}

/// How long a restore waits for the app to run on its new data.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// The whole wait: after it, a container not ready fails the restore.
    pub timeout: Duration,
    /// A container without a healthcheck counts as running once it has run this long
    /// without exiting or being restarted.
    pub settle: Duration,
}

/// Stops, starts and watches containers through an [`Engine`].
pub struct Containers<E = Docker> {
    engine: E,
    /// Used for containers that set no stop timeout of their own.
    stop_timeout_secs: u32,
}

/// The first 12 characters of a container id, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl<E: Engine> Containers<E> {
    pub fn new(engine: E, stop_timeout_secs: u32) -> Self {
        Containers {
            engine,
            stop_timeout_secs,
        }
    }

    /// The engine, for the calls that are not about stopping and starting.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Stops every container in `ids` at once. One that no longer exists, or that had to
    /// be killed, is a warning (the first cannot write to the data any more; the second's
    /// files may be inconsistent); any other failure is the error, after every stop was
    /// tried.
    pub async fn stop_all(
        &self,
        ids: &[String],
        purpose: Purpose,
    ) -> Result<Vec<String>, ManagerError> {
        let timeout = self.stop_timeout_secs;
        let results =
            futures_util::future::join_all(ids.iter().map(|id| self.engine.stop(id, timeout)))
                .await;
        let mut warnings = Vec::new();
        for (id, result) in ids.iter().zip(results) {
            match result {
                Ok(Stopped::Clean) => {}
                Ok(Stopped::Killed { timeout }) => warnings.push(format!(
                    "container {} did not stop within {timeout} s and was killed: its files \
                     may not be consistent (raise its stop_grace_period)",
                    short(id)
                )),
                Err(e) if e.is_not_found() => warnings.push(format!(
                    "container {} disappeared during the {purpose}",
                    short(id)
                )),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(warnings)
    }

    /// Starts every container in `ids`, which this operation stopped. A container removed
    /// meanwhile is a warning; one that could not be started sets `failed`. "Already
    /// running" right after our own stop is a stop still in flight (or a start by someone
    /// else): the stop is waited for, then the container started for real.
    pub async fn start_all(&self, ids: &[String], purpose: Purpose) -> StartReport {
        let mut report = StartReport::default();
        for id in ids {
            let started = match self.engine.start(id).await {
                Ok(Started::AlreadyRunning) => {
                    tracing::warn!(container = %short(id),
                        "Docker says it runs already: waiting for any stop in flight, then starting it");
                    match self.engine.stop(id, self.stop_timeout_secs).await {
                        Ok(_) => self.engine.start(id).await,
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            match started {
                Ok(_) => {}
                Err(e) if e.is_not_found() => report.warnings.push(format!(
                    "container {} disappeared during the {purpose}",
                    short(id)
                )),
                Err(e) => {
                    tracing::error!(container = %id, "could not start container again: {e}");
                    report.failed = true;
                    report.warnings.push(format!(
                        "container {} could not be started again: {e}",
                        short(id)
                    ));
                }
            }
        }
        report
    }

    /// Stops each container before a rollback touches the files (it may have been started
    /// already: the files never move under a running app). A container that is gone is
    /// fine; any other failure is the rollback's error.
    pub async fn stop_for_rollback(&self, ids: &[String]) -> Result<(), String> {
        for id in ids {
            match self.engine.stop(id, self.stop_timeout_secs).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(format!(
                        "container {} could not be stopped for the rollback: {e}",
                        short(id)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Starts each container of a repair; every one is tried, and those that could not be
    /// started are the error. A container that is gone is fine.
    pub async fn start_each(&self, ids: &[String]) -> Result<(), String> {
        let mut errors = Vec::new();
        for id in ids {
            match self.engine.start(id).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(format!("container {} could not be started: {e}", short(id))),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Starts again what an interrupted backup stopped: each container is first stopped
    /// (which waits for a stop appsnap may have left in flight when it died), then
    /// started, then checked. Returns the errors of those that could not be started.
    pub async fn restart_after_crash(&self, ids: &[String]) -> Vec<String> {
        let mut errors = Vec::new();
        for id in ids {
            let result = async {
                self.engine.stop(id, self.stop_timeout_secs).await?;
                self.engine.start(id).await?;
                self.engine.state(id).await
            }
            .await;
            match result {
                Ok(state) if state.running => {
                    tracing::info!(container = %short(id), "started again")
                }
                // Started, then ended by itself: the app's own doing, not a failed repair.
                Ok(state) => tracing::error!(container = %short(id),
                    "started again, but it exited at once (exit code {})", state.exit_code),
                Err(e) if e.is_not_found() => {
                    tracing::warn!(container = %short(id), "container no longer exists")
                }
                Err(e) => errors.push(format!("container {} could not be started: {e}", short(id))),
            }
        }
        errors
    }

    /// Runs the pre- or post-backup hook of `label` in each container, in order; the
    /// first failure is the error.
    pub async fn run_hooks(
        &self,
        containers: &[&Container],
        label: &'static str,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        for c in containers {
            self.engine.run_hook(c, label, timeout).await?;
        }
        Ok(())
    }

    /// Runs the hook of `label` in each container; every failure becomes a warning.
    pub async fn run_hooks_warning(
        &self,
        containers: &[&Container],
        label: &'static str,
        timeout: Duration,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        for c in containers {
            if let Err(e) = self.engine.run_hook(c, label, timeout).await {
                warnings.push(e.to_string());
            }
        }
        warnings
    }

    /// Waits until every container in `ids` runs — healthy when it has a healthcheck,
    /// otherwise still running `settle` after it was first seen, without a restart — or
    /// fails naming the first that did not: it exited, its restart policy brought it
    /// back, it is unhealthy, the wait's `timeout` passed, or `stop_early` says the
    /// service is shutting down. Polls the engine every 200 ms.
    pub async fn wait_running(
        &self,
        ids: &[String],
        readiness: Readiness,
        stop_early: impl Fn() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + readiness.timeout;
        let mut first: HashMap<&str, (Instant, i64, String)> = HashMap::new();
        let mut pending: Vec<&String> = ids.iter().collect();
        while !pending.is_empty() {
            if stop_early() {
                return Err("appsnap is shutting down".into());
            }
            let mut still = Vec::new();
            for id in pending {
                let s = self.engine.state(id).await.map_err(|e| e.to_string())?;
                let (seen, restarts, started) = first.entry(id).or_insert((
                    Instant::now(),
                    s.restart_count,
                    s.started_at.clone(),
                ));
                if s.restart_count != *restarts || s.started_at != *started || s.restarting {
                    // Its restart policy brought it back: the new run's state says
                    // nothing about why the first one ended.
                    return Err(format!(
                        "container {} exited after the restore and was restarted {} time(s) \
                         by its restart policy",
                        short(id),
                        (s.restart_count - *restarts).max(1)
                    ));
                }
                if !s.running {
                    return Err(format!(
                        "container {} stopped after the restore (exit code {})",
                        short(id),
                        s.exit_code
                    ));
                }
                match s.health.as_deref() {
                    Some("healthy") => {}
                    Some("unhealthy") => {
                        return Err(format!("container {} is unhealthy", short(id)));
                    }
                    Some(_) => still.push(id),
                    None if seen.elapsed() >= readiness.settle => {}
                    None => still.push(id),
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {} did not become ready within {} s",
                    short(pending[0]),
                    readiness.timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A **fake** Docker engine: each container id answers from a script of states, and
    /// every call is recorded. What it cannot fake — a real stop's signals, a real
    /// restart policy — the integration tests prove against dockerd.
    #[derive(Default)]
    struct FakeEngine {
        /// id → what `stop` answers (default: a clean stop).
        stops: HashMap<String, Result<Stopped, u16>>,
        /// id → what each `start` answers, in order (default: started now).
        starts: Mutex<HashMap<String, Vec<Result<Started, u16>>>>,
        /// id → the states `state` reports, in order (the last one repeats).
        states: Mutex<HashMap<String, Vec<ContainerStatus>>>,
        calls: Mutex<Vec<String>>,
    }

    fn engine_error(status_code: u16) -> DockerError {
        DockerError::Engine(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: format!("fake engine says {status_code}"),
        })
    }

    fn running() -> ContainerStatus {
        ContainerStatus {
            running: true,
            restarting: false,
            exit_code: 0,
            health: None,
            restart_count: 0,
            started_at: "t0".into(),
        }
    }

    impl Engine for FakeEngine {
        async fn stop(&self, id: &str, _: u32) -> Result<Stopped, DockerError> {
            self.calls.lock().unwrap().push(format!("stop {id}"));
            self.stops
                .get(id)
                .cloned()
                .unwrap_or(Ok(Stopped::Clean))
                .map_err(engine_error)
        }
        async fn start(&self, id: &str) -> Result<Started, DockerError> {
            self.calls.lock().unwrap().push(format!("start {id}"));
            let mut starts = self.starts.lock().unwrap();
            match starts.get_mut(id) {
                Some(script) if !script.is_empty() => script.remove(0).map_err(engine_error),
                _ => Ok(Started::Now),
            }
        }
        async fn state(&self, id: &str) -> Result<ContainerStatus, DockerError> {
            let mut states = self.states.lock().unwrap();
            let script = states.get_mut(id).ok_or_else(|| engine_error(404))?;
            Ok(if script.len() > 1 {
                script.remove(0)
            } else {
                script[0].clone()
            })
        }
        async fn run_hook(
            &self,
            c: &Container,
            label: &'static str,
            _: Duration,
        ) -> Result<(), DockerError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("hook {label} {}", c.id));
            Ok(())
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const NOW: Readiness = Readiness {
        timeout: Duration::from_secs(5),
        settle: Duration::ZERO,
    };

    #[tokio::test]
    async fn a_stop_names_its_operation_and_only_a_real_failure_is_an_error() {
        let mut engine = FakeEngine::default();
        engine.stops.insert("gone".into(), Err(404));
        engine
            .stops
            .insert("slow".into(), Ok(Stopped::Killed { timeout: 10 }));
        let containers = Containers::new(engine, 10);
        let warnings = containers
            .stop_all(&ids(&["ok", "gone", "slow"]), Purpose::Restore)
            .await
            .unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("disappeared during the restore"),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("backup")),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("was killed"));

        let mut engine = FakeEngine::default();
        engine.stops.insert("broken".into(), Err(500));
        let containers = Containers::new(engine, 10);
        let err = containers
            .stop_all(&ids(&["ok", "broken"]), Purpose::Backup)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("fake engine says 500"), "{err}");
    }

    #[tokio::test]
    async fn already_running_after_our_stop_waits_for_that_stop_then_starts_for_real() {
        let engine = FakeEngine::default();
        engine.starts.lock().unwrap().insert(
            "c".into(),
            vec![Ok(Started::AlreadyRunning), Ok(Started::Now)],
        );
        let containers = Containers::new(engine, 10);
        let report = containers.start_all(&ids(&["c"]), Purpose::Backup).await;
        assert!(!report.failed && report.warnings.is_empty(), "{report:?}");
        assert_eq!(
            *containers.engine().calls.lock().unwrap(),
            ["start c", "stop c", "start c"]
        );
    }

    #[tokio::test]
    async fn a_start_that_fails_is_reported_and_a_vanished_container_is_a_warning() {
        let engine = FakeEngine::default();
        engine.starts.lock().unwrap().extend([
            ("gone".to_string(), vec![Err(404)]),
            ("broken".to_string(), vec![Err(500)]),
        ]);
        let containers = Containers::new(engine, 10);
        let report = containers
            .start_all(&ids(&["gone", "broken", "ok"]), Purpose::Restore)
            .await;
        assert!(report.failed);
        assert!(report.warnings[0].contains("disappeared during the restore"));
        assert!(report.warnings[1].contains("could not be started again"));
        // Every container was tried, the one after the failure included.
        assert!(
            containers
                .engine()
                .calls
                .lock()
                .unwrap()
                .contains(&"start ok".to_string())
        );
    }

    #[tokio::test]
    async fn wait_running_fails_on_an_exit_a_restart_or_unhealthy_and_passes_when_healthy() {
        let engine = FakeEngine::default();
        let exited = ContainerStatus {
            running: false,
            exit_code: 3,
            ..running()
        };
        let restarted = ContainerStatus {
            restart_count: 1,
            started_at: "t1".into(),
            ..running()
        };
        let starting = ContainerStatus {
            health: Some("starting".into()),
            ..running()
        };
        let healthy = ContainerStatus {
            health: Some("healthy".into()),
            ..running()
        };
        let unhealthy = ContainerStatus {
            health: Some("unhealthy".into()),
            ..running()
        };
        engine.states.lock().unwrap().extend([
            ("exits".to_string(), vec![exited]),
            ("restarts".to_string(), vec![starting.clone(), restarted]),
            ("sick".to_string(), vec![starting.clone(), unhealthy]),
            ("fine".to_string(), vec![starting, healthy]),
            ("plain".to_string(), vec![running()]),
        ]);
        let containers = Containers::new(engine, 10);
        let err = containers
            .wait_running(&ids(&["exits"]), NOW, || false)
            .await
            .unwrap_err();
        assert!(
            err.contains("stopped after the restore (exit code 3)"),
            "{err}"
        );
        let err = containers
            .wait_running(&ids(&["restarts"]), NOW, || false)
            .await
            .unwrap_err();
        assert!(err.contains("restarted 1 time(s)"), "{err}");
        let err = containers
            .wait_running(&ids(&["sick"]), NOW, || false)
            .await
            .unwrap_err();
        assert!(err.contains("is unhealthy"), "{err}");
        containers
            .wait_running(&ids(&["fine", "plain"]), NOW, || false)
            .await
            .unwrap();
        let err = containers
            .wait_running(&ids(&["plain"]), NOW, || true)
            .await
            .unwrap_err();
        assert!(err.contains("shutting down"), "{err}");
    }

    #[tokio::test]
    async fn a_restart_after_a_crash_stops_first_and_reports_only_real_failures() {
        let engine = FakeEngine::default();
        engine
            .starts
            .lock()
            .unwrap()
            .insert("broken".into(), vec![Err(500)]);
        engine
            .states
            .lock()
            .unwrap()
            .insert("ok".into(), vec![running()]);
        let containers = Containers::new(engine, 10);
        let errors = containers
            .restart_after_crash(&ids(&["ok", "broken"]))
            .await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("container broken could not be started"));
        let calls = containers.engine().calls.lock().unwrap().clone();
        assert_eq!(calls[..2], ["stop ok".to_string(), "start ok".to_string()]);
    }
}

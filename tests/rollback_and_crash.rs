//! The crash walk: the promise "the old data or the snapshot, never a mix, and the app as
//! it was" proven at *every* fail point of a restore, of its rollback and of a backup —
//! not by one lucky kill. For each point the real service is started with
//! `APPSNAP_CRASH_AT=<point>` (it aborts there, as `kill -9` would), started again (it
//! repairs from its journal before serving), and the app's three mounts are compared with
//! full manifests (type, mode, owner, mtime, size, content hash, link target, xattrs).
//!
//! The points are not listed here: a traced run (`APPSNAP_FAILPOINT_TRACE=1`) reports the
//! ones its path passes, so a point added to the code is walked without touching this file.
//! The fault that sends a restore into its rollback is injected (`APPSNAP_FAIL_AT`); a real
//! one (a container that dies) would cost seconds of settle time per point.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::common::{Entry, Service, TestApp, fill_every_kind, manifest};

type State = Vec<BTreeMap<Vec<u8>, Entry>>;

fn state(app: &TestApp) -> State {
    [app.volume_path(), app.bind(), app.project()]
        .iter()
        .map(|d| manifest(d, true))
        .collect()
}

/// A service on `root` with quick settings and extra environment.
fn service(root: &Path, config: &Path, env: &[(&str, &str)]) -> Service {
    let mut all = vec![("APPSNAP_CONFIG", config.to_str().unwrap())];
    all.extend_from_slice(env);
    Service::start(root, &all)
}

/// POSTs `path` on a service that is expected to abort at `point`; waits until it has.
async fn crash_during(svc: Service, path: &str, point: &str) {
    crash_during_with(svc, path, None, point).await
}

/// [`crash_during`], POSTing `body` as JSON when given.
async fn crash_during_with(
    svc: Service,
    path: &str,
    body: Option<&serde_json::Value>,
    point: &str,
) {
    let mut req = reqwest::Client::new().post(svc.url(path));
    if let Some(body) = body {
        req = req.json(body);
    }
    // Most points lie before the answer. Those of a restore's cleanup (dropping the data
    // set aside, then the journal) come after a successful one, which may or may not get
    // its answer out first. An error answer means the point was not reached.
    if let Ok(resp) = req.send().await
        && !resp.status().is_success()
    {
        let status = resp.status();
        panic!(
            "no crash at {point}: answered {status}; log: {:?}",
            svc.kill_and_log()
        );
    }
    let (status, log) = svc.wait_exit();
    assert!(
        !status.success()
            && log
                .iter()
                .any(|l| l.contains(&format!("crashing at {point}"))),
        "the service did not crash at {point}: {status:?}, log: {log:?}"
    );
}

/// The fail points a traced service passed, in order (it is stopped to read them all).
fn traced(svc: Service) -> Vec<String> {
    svc.kill_and_log()
        .iter()
        .filter_map(|l| l.strip_prefix("appsnap failpoint: "))
        .filter(|p| !p.starts_with("crashing at"))
        .map(String::from)
        .collect()
}

async fn post_ok(svc: &Service, path: &str) -> serde_json::Value {
    post_ok_with(svc, path, None).await
}

/// [`post_ok`], POSTing `body` as JSON when given.
async fn post_ok_with(
    svc: &Service,
    path: &str,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut req = reqwest::Client::new().post(svc.url(path));
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Nothing left next to the mounts (no aside, no staging folder), no journal: a repair
/// leaves no trace.
fn assert_clean(app: &TestApp, root: &Path, point: &str) {
    for dir in [app.volume_path(), app.bind(), app.project()] {
        let parent = dir.parent().unwrap();
        let asides: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.contains("appsnap-aside") || name.contains("appsnap-staged")
            })
            .map(|e| e.path())
            .collect();
        assert!(asides.is_empty(), "{point}: left aside {asides:?}");
    }
    let journals = crate::common::journals(root);
    assert!(journals.is_empty(), "{point}: {journals:?}");
}

struct Walk<'a> {
    root: &'a Path,
    config: &'a Path,
    app: &'a TestApp,
    a: &'a State,
    b: &'a State,
}

impl Walk<'_> {
    /// Restores A from state B with `env`, returns the fail points passed, and puts B back.
    async fn traced_restore(&self, to_a: &str, to_b: &str, env: &[(&str, &str)]) -> Vec<String> {
        let svc = service(self.root, self.config, env);
        let _ = reqwest::Client::new()
            .post(svc.url(to_a))
            .send()
            .await
            .unwrap();
        let points = traced(svc);
        if state(self.app) == *self.a {
            let svc = service(self.root, self.config, &[]);
            post_ok(&svc, to_b).await;
        }
        assert_eq!(state(self.app), *self.b);
        points
    }
}

#[tokio::test]
async fn every_fail_point_of_restore_rollback_and_backup_ends_old_or_new_never_a_mix() {
    crate::common::require_failpoints();
    // Files the snapshots leave out (`appsnap.exclude`), the same in A and B: a restore
    // carries them over, and the walk passes those steps' points too.
    let app = TestApp::new("--label appsnap.exclude=*.keep-out");
    let root = tempfile::tempdir().unwrap();
    let config = root.path().with_extension("toml");
    fs::write(
        &config,
        format!(
            "restore_settle_secs = 0\nstop_timeout_secs = 5\nstate_dir = \"{}\"\n",
            std::env::temp_dir().join("appsnap-test-state").display()
        ),
    )
    .unwrap();

    // State A (the snapshot to restore) and state B (the app's data now).
    fill_every_kind(&app.volume_path());
    fill_every_kind(&app.bind());
    fs::write(
        app.volume_path().join("sub/x.keep-out"),
        "not in any snapshot",
    )
    .unwrap();
    fs::write(app.bind().join("y.keep-out"), "nor this").unwrap();
    let a = state(&app);
    let svc = service(root.path(), &config, &[]);
    let snap_a = post_ok(&svc, &format!("/api/v1/backup/{}", app.id)).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(app.volume_path().join("sub/hello.php"), "rewritten").unwrap();
    fs::remove_file(app.volume_path().join("random.bin")).unwrap();
    fs::write(app.bind().join("added-after.txt"), "new").unwrap();
    fs::write(
        app.project().join("docker-compose.yml"),
        "services: {b: {}}\n",
    )
    .unwrap();
    let b = state(&app);
    assert_ne!(a, b);
    let snap_b = post_ok(&svc, &format!("/api/v1/backup/{}", app.id)).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(svc);
    let restore = |id: &str| format!("/api/v1/backup/restore/{}/{id}", app.id);

    // The points of a restore, and of a rollback after a fault once the app runs again.
    let (to_a, to_b) = (restore(&snap_a), restore(&snap_b));
    let walk = Walk {
        root: root.path(),
        config: &config,
        app: &app,
        a: &a,
        b: &b,
    };
    let restore_points = walk
        .traced_restore(&to_a, &to_b, &[("APPSNAP_FAILPOINT_TRACE", "1")])
        .await;
    let with_fault = walk
        .traced_restore(
            &to_a,
            &to_b,
            &[
                ("APPSNAP_FAILPOINT_TRACE", "1"),
                ("APPSNAP_FAIL_AT", "restore.started"),
            ],
        )
        .await;
    let fault_at = with_fault
        .iter()
        .position(|p| p == "restore.started")
        .unwrap();
    let rollback_points: Vec<String> = with_fault[fault_at + 1..].to_vec();
    assert!(
        restore_points.len() >= 10 && rollback_points.len() >= 4,
        "{restore_points:?} / {rollback_points:?}"
    );
    assert!(
        restore_points
            .iter()
            .any(|p| p.starts_with("restore.carry-")),
        "{restore_points:?}"
    );
    let committed_from = restore_points
        .iter()
        .position(|p| p == "restore.extracted")
        .unwrap();

    let mut walked = 0;
    let walks = restore_points
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), None, if i >= committed_from { "A" } else { "B" }))
        .chain(
            rollback_points
                .iter()
                .map(|p| (p.clone(), Some("restore.started"), "B")),
        );
    for (point, fault, expect) in walks {
        let mut env = vec![("APPSNAP_CRASH_AT", point.as_str())];
        if let Some(f) = fault {
            env.push(("APPSNAP_FAIL_AT", f));
        }
        crash_during(
            service(root.path(), &config, &env),
            &restore(&snap_a),
            &point,
        )
        .await;
        let svc = service(root.path(), &config, &[]); // repairs before it listens
        let now = state(&app);
        let want = if expect == "A" { &a } else { &b };
        assert!(
            now == *want,
            "crash at {point} (fault {fault:?}): the data is {}, expected {expect}",
            if now == a {
                "A"
            } else if now == b {
                "B"
            } else {
                "a MIX"
            }
        );
        assert!(app.running(&app.containers[0]), "{point}: the app runs");
        assert_clean(&app, root.path(), &point);
        if now == a {
            post_ok(&svc, &restore(&snap_b)).await;
            assert_eq!(state(&app), b);
        }
        walked += 1;
    }

    // A backup, in each mode that stops the app: the app runs again after a crash at any
    // point, and whatever is listed is a complete snapshot that verifies.
    let mut backup_points = Vec::new();
    for mode in ["precopy", "stop"] {
        fs::write(
            &config,
            format!(
                "restore_settle_secs = 0\nstop_timeout_secs = 5\nstate_dir = \"{}\"\n\
                 [apps.{}]\nmode = \"{mode}\"\n",
                std::env::temp_dir().join("appsnap-test-state").display(),
                app.id
            ),
        )
        .unwrap();
        let svc = service(root.path(), &config, &[("APPSNAP_FAILPOINT_TRACE", "1")]);
        let snap = post_ok(&svc, &format!("/api/v1/backup/{}", app.id)).await;
        assert_eq!(snap["snapshot"]["downtime"]["mode"], mode, "{snap}");
        let points: Vec<String> = traced(svc)
            .into_iter()
            .filter(|p| p.starts_with("backup."))
            .collect();
        assert!(points.len() >= 5, "{mode}: {points:?}");
        // The data was written moments ago (racily clean), so the second pass reads it
        // again and the archive is assembled in place: its half-moved state is walked too.
        assert!(
            mode == "stop" || points.iter().any(|p| p == "backup.in-place-moved"),
            "{mode}: {points:?}"
        );
        for point in &points {
            let svc = service(root.path(), &config, &[("APPSNAP_CRASH_AT", point)]);
            crash_during(svc, &format!("/api/v1/backup/{}", app.id), point).await;
            let svc = service(root.path(), &config, &[]);
            assert!(
                app.running(&app.containers[0]),
                "{mode} {point}: the app runs"
            );
            assert_clean(&app, root.path(), point);
            let app_dir = root.path().join(&app.id);
            let partials: Vec<_> = fs::read_dir(&app_dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .collect();
            assert!(partials.is_empty(), "{mode} {point}: {partials:?}");
            let list: serde_json::Value = svc.get("/api/v1/backup/snapshots").await;
            for s in list.as_array().unwrap() {
                let id = s["snapshot_id"].as_str().unwrap();
                post_ok(&svc, &format!("/api/v1/backup/snapshots/{id}/verify")).await;
            }
            walked += 1;
        }
        backup_points.extend(points);
    }
    eprintln!(
        "crash walk: {walked} fail points walked ({} restore, {} rollback, {} backup)",
        restore_points.len(),
        rollback_points.len(),
        backup_points.len()
    );
}

/// The same walk for a partial restore of one folder (whose excluded files are carried
/// over): at every fail point of the restore and of its rollback, a crash and the repair
/// at the next start leave the app's data as it was before (B) or with the folder from
/// the snapshot and everything else as it was (P), never a mix, and the app running.
/// Folders' own mtimes are not compared here: a partial restore renames inside the folder
/// above the chosen one.
#[tokio::test]
async fn every_fail_point_of_a_partial_restore_ends_old_or_new_never_a_mix() {
    crate::common::require_failpoints();
    let app = TestApp::new("--label appsnap.exclude=*.keep-out");
    let root = tempfile::tempdir().unwrap();
    let config = root.path().with_extension("toml");
    fs::write(
        &config,
        format!(
            "restore_settle_secs = 0\nstop_timeout_secs = 5\nstate_dir = \"{}\"\n",
            std::env::temp_dir().join("appsnap-test-state").display()
        ),
    )
    .unwrap();
    let data = app.volume_path();
    let state = || -> State { vec![manifest(&data, false), manifest(&app.bind(), false)] };
    // The folder restored holds every kind (its hard links within it: one to a file
    // outside the folder comes back as its own file), and a file its patterns leave out.
    fill_every_kind(&data.join("tree"));
    fs::write(data.join("outside.txt"), "outside").unwrap();
    fs::write(data.join("tree/sub/x.keep-out"), "in no snapshot").unwrap();
    let svc = service(root.path(), &config, &[]);
    let snap_a = post_ok(&svc, &format!("/api/v1/backup/{}", app.id)).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(data.join("tree/sub/hello.php"), "rewritten").unwrap();
    fs::write(data.join("tree/added.txt"), "added").unwrap();
    fs::remove_file(data.join("tree/random.bin")).unwrap();
    fs::write(data.join("outside.txt"), "changed outside").unwrap();
    let b = state();
    let snap_b = post_ok(&svc, &format!("/api/v1/backup/{}", app.id)).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let restore = |id: &str| format!("/api/v1/backup/restore/{}/{id}", app.id);
    let body = serde_json::json!({"paths": [format!("volumes/{}/tree", app.volume)]});
    let (to_p, to_b) = (restore(&snap_a), restore(&snap_b));
    drop(svc);

    // Traced once to P and back, then with a fault once the app runs again.
    let b_ref = &b;
    let traced_to_p = |env: Vec<(&'static str, &'static str)>| {
        let (root, config, body, to_p, to_b) = (root.path(), &config, &body, &to_p, &to_b);
        let (state, b) = (&state, b_ref);
        async move {
            let svc = service(root, config, &env);
            let _ = reqwest::Client::new()
                .post(svc.url(to_p))
                .json(body)
                .send()
                .await
                .unwrap();
            let points = traced(svc);
            // A start finishes the cleanup the killed service left (the aside folder
            // is inside the mount): the state is then the restore's alone.
            drop(service(root, config, &[]));
            let now = state();
            if now != *b {
                back_to(root, config, to_b, body).await;
            }
            assert_eq!(state(), *b);
            (points, now)
        }
    };
    let (restore_points, p) = traced_to_p(vec![("APPSNAP_FAILPOINT_TRACE", "1")]).await;
    assert_ne!(p, b);
    assert_eq!(
        fs::read_to_string(data.join("tree/sub/x.keep-out")).unwrap(),
        "in no snapshot"
    );
    assert_eq!(
        fs::read_to_string(data.join("outside.txt")).unwrap(),
        "changed outside"
    );
    let (with_fault, _) = traced_to_p(vec![
        ("APPSNAP_FAILPOINT_TRACE", "1"),
        ("APPSNAP_FAIL_AT", "restore.started"),
    ])
    .await;
    let fault_at = with_fault
        .iter()
        .position(|p| p == "restore.started")
        .unwrap();
    let rollback_points = with_fault[fault_at + 1..].to_vec();
    assert!(
        restore_points
            .iter()
            .any(|p| p.starts_with("restore.carry-"))
            && rollback_points.len() >= 4,
        "{restore_points:?} / {rollback_points:?}"
    );
    let committed_from = restore_points
        .iter()
        .position(|p| p == "restore.extracted")
        .unwrap();
    let walks = restore_points
        .iter()
        .enumerate()
        .map(|(i, pt)| (pt.clone(), None, i >= committed_from))
        .chain(
            rollback_points
                .iter()
                .map(|pt| (pt.clone(), Some("restore.started"), false)),
        );
    let mut walked = 0;
    for (point, fault, restored) in walks {
        walked += 1;
        let mut env = vec![("APPSNAP_CRASH_AT", point.as_str())];
        if let Some(f) = fault {
            env.push(("APPSNAP_FAIL_AT", f));
        }
        crash_during_with(
            service(root.path(), &config, &env),
            &to_p,
            Some(&body),
            &point,
        )
        .await;
        let svc = service(root.path(), &config, &[]); // repairs before it listens
        let now = state();
        let want = if restored { &p } else { &b };
        assert!(
            now == *want,
            "crash at {point} (fault {fault:?}): the data is {}, expected {}",
            if now == p {
                "P"
            } else if now == b {
                "B"
            } else {
                "a MIX"
            },
            if restored { "P" } else { "B" }
        );
        assert!(app.running(&app.containers[0]), "{point}: the app runs");
        assert_clean(&app, root.path(), &point);
        if now == p {
            drop(svc);
            back_to(root.path(), &config, &to_b, &body).await;
            assert_eq!(state(), b);
        }
    }
    eprintln!(
        "partial crash walk: {walked} fail points walked ({} restore, {} rollback)",
        restore_points.len(),
        rollback_points.len()
    );
}

/// Restores `to` with `body` on a new service, then starts another, which finishes the
/// first one's cleanup before it listens.
async fn back_to(root: &Path, config: &Path, to: &str, body: &serde_json::Value) {
    let svc = service(root, config, &[]);
    post_ok_with(&svc, to, Some(body)).await;
    drop(svc);
    drop(service(root, config, &[]));
}

/// Waits until Docker has sent `container` its `n`-th SIGTERM/SIGKILL (`kill` events)
/// since `since` (a Unix time, or `0` for ever): the moment a stop is in flight.
fn kill_events(container: &str, since: &str, n: usize) {
    let mut events = std::process::Command::new("docker")
        .args([
            "events",
            "--filter",
            "event=kill",
            "--format",
            "{{.Actor.ID}}",
        ])
        .args(["--filter", &format!("container={container}")])
        .args(["--since", since])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    for _ in 0..n {
        assert_eq!(lines.next().unwrap().unwrap().trim(), container);
    }
    let _ = events.kill();
    let _ = events.wait();
}

/// A kill while a backup waits for a slow container to stop: Docker finishes that stop
/// after appsnap is gone. Recovery must not "start" the container while the stop is still
/// in flight (Docker answers "already running", then the stop completes and the app stays
/// down): it waits for the stop, starts it, and the container has really started again.
#[tokio::test]
async fn a_kill_while_containers_stop_leaves_the_app_running() {
    let app = TestApp::new_running(
        "",
        "trap \"sleep 2; exit 0\" TERM; sleep 1000000 & wait; exit;",
    );
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let job = svc
        .post(&format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    let job_id = job["job_id"].as_str().unwrap().to_string();
    crate::common::follow_until(&svc, &job_id, |j| j["step"] == "stopping containers").await;
    // Docker reports the SIGTERM of the stop as a `kill` event: once it is seen, the stop
    // is in flight (and lasts 2 s, the container's trap), so the kill lands inside it.
    kill_events(&app.containers[0], "0", 1);
    svc.kill();
    let killed_at = chrono::Utc::now();
    let svc = Service::start(root.path(), &[]);
    assert!(app.running(&app.containers[0]), "the app runs again");
    let started =
        chrono::DateTime::parse_from_rfc3339(&app.started_at(&app.containers[0])).unwrap();
    assert!(
        started > killed_at,
        "started again after the interrupted stop ({started} vs kill at {killed_at})"
    );
    drop(svc);
}

/// A kill while a failed restore's rollback waits for a slow container to stop. The
/// rollback is journaled before that stop, so the repair at the next start rolls back
/// (the original data, the app running) and never "finishes" the failed restore, which
/// had deleted the original data. The fault that starts the rollback is injected
/// (`APPSNAP_FAIL_AT=restore.started`, as a container that died after its start would);
/// the slow stop and the kill are real.
#[tokio::test]
async fn a_kill_during_the_rollbacks_stop_still_rolls_back() {
    let mut app = TestApp::new("");
    let slow = app.add_container_running(
        "slow",
        "",
        "trap \"sleep 3; exit 0\" TERM; sleep 1000000 & wait; exit;",
    );
    for i in 0..20 {
        fs::write(app.volume_path().join(format!("f{i}")), "snapshot").unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let id = svc.post(&format!("/api/v1/backup/{}", app.id)).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(svc);
    for i in 0..20 {
        fs::write(app.volume_path().join(format!("f{i}")), "original").unwrap();
    }
    let original = manifest(&app.volume_path(), true);

    let svc = Service::start(root.path(), &[("APPSNAP_FAIL_AT", "restore.started")]);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let job = svc
        .post(&format!(
            "/api/v1/backup/restore/{}/{id}?wait=false",
            app.id
        ))
        .await;
    assert!(job["job_id"].is_string(), "{job}");
    // The slow container gets two SIGTERMs (`kill` events): the restore's stop, then the
    // rollback's. The second stop lasts 3 s (its trap): the kill lands inside it.
    kill_events(
        &slow,
        &format!("{}.{:09}", since.as_secs(), since.subsec_nanos()),
        2,
    );
    let log = svc.kill_and_log();
    assert!(
        log.iter().any(|l| l.contains("rolling back")),
        "the restore failed and rolled back: {log:?}"
    );

    let svc = Service::start(root.path(), &[]); // repairs before it listens
    assert_eq!(
        manifest(&app.volume_path(), true),
        original,
        "the original data is back"
    );
    for c in &app.containers {
        assert!(app.running(c), "{c} runs");
    }
    assert_clean(&app, root.path(), "the rollback's stop");
    drop(svc);
}

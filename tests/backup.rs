//! The seed routes and their neighbours, driven in-process with `oneshot` against a real
//! Docker engine.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use appsnap::jobs::{JobInfo, JobState};
use axum::http::StatusCode;

use crate::common::{Harness, TestApp};

async fn finished(h: &Harness, job_id: &str) -> JobInfo {
    let mut rx = h.manager.jobs.get(job_id).expect("job exists").subscribe();
    rx.wait_for(|j| j.state != JobState::Running)
        .await
        .unwrap()
        .clone()
}

#[tokio::test]
async fn create_list_show_delete() {
    let app = TestApp::new("");
    fs::write(app.volume_path().join("index.php"), "<?php phpinfo();").unwrap();
    let h = Harness::new().await;

    let (status, body) = h
        .call("POST", &format!("/api/v1/backup/{}?note=first", app.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Backup created successfully");
    let first = body["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(body["snapshot"]["snapshot_id"], first.as_str());
    let re_ok = first.len() == "snapshot_20260105T101500Z_3f9a0c12".len()
        && first.starts_with("snapshot_20");
    assert!(re_ok, "{first}");
    let snap = &body["snapshot"];
    assert_eq!(snap["app_id"], app.id.as_str());
    assert_eq!(snap["origin"], "manual");
    assert_eq!(snap["note"], "first");
    let path = format!("{}/{}/{first}.tar.gz", h.root.path().display(), app.id);
    assert_eq!(snap["file_path"], path.as_str());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let kinds: Vec<&str> = snap["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"volume") && kinds.contains(&"bind") && kinds.contains(&"project"),
        "{kinds:?}"
    );
    assert!(snap["created_at"].as_str().unwrap().ends_with('Z'));
    // No repository is configured, so nothing will copy it: the tar stream is not hashed
    // (a copy hashes a snapshot without it once, see `offsite`).
    assert!(snap.get("tar_sha256").is_none(), "{snap}");

    let second = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, list) = h
        .call(
            "GET",
            &format!("/api/v1/backup/snapshots?app_id={}", app.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    let (_, all) = h.call("GET", "/api/v1/backup/snapshots").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, other) = h
        .call("GET", "/api/v1/backup/snapshots?app_id=some_other_app")
        .await;
    assert_eq!(other, serde_json::json!([]));

    let (status, one) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{first}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["sha256"], snap["sha256"]);

    let (status, stats) = h.call("GET", "/api/v1/backup/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["apps"][&app.id]["snapshots"], 2);
    assert_eq!(stats["total_snapshots"], 2);
    assert!(stats["total_bytes"].as_u64().unwrap() > 0);
    assert!(stats["disk_free_bytes"].as_u64().unwrap() > 0);

    let (status, body) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{first}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(!std::path::Path::new(&path).exists(), "space is freed");
    let (status, body) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{first}"))
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("Snapshot not found"))
    );
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{first}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The catalog on disk agrees.
    let on_disk = fs::read_to_string(h.root.path().join("snapshots.json")).unwrap();
    assert!(!on_disk.contains(&first) && on_disk.contains(&second));
}

#[tokio::test]
async fn unknown_app_is_404_and_touches_nothing() {
    let h = Harness::new().await;
    let (status, body) = h.call("POST", "/api/v1/backup/no_such_app_xyz").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "Application not found");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("no_such_app_xyz")
    );
    assert_eq!(h.files(), Vec::<String>::new());
}

#[tokio::test]
async fn hostile_ids_are_400_and_touch_nothing() {
    let h = Harness::new().await;
    let long = "a".repeat(129);
    for bad in [
        "%2E%2E",
        "a%2Fb",
        "..%2F..%2Fetc",
        "a%00b",
        "caf%C3%A9",
        ".hidden",
        "a%20b",
        long.as_str(),
    ] {
        for (method, uri) in [
            ("POST", format!("/api/v1/backup/{bad}")),
            ("GET", format!("/api/v1/backup/snapshots/{bad}")),
            ("DELETE", format!("/api/v1/backup/snapshots/{bad}")),
            ("GET", format!("/api/v1/backup/snapshots?app_id={bad}")),
        ] {
            let (status, body) = h.call(method, &uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
            assert_eq!(body["message"], "Invalid identifier", "{method} {uri}");
            assert!(body["details"].is_string());
        }
    }
    let (status, body) = h
        .call("GET", "/api/v1/backup/snapshots?app_id=%ZZ&wait=")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h.call("POST", "/api/v1/backup/x?wait=maybe").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Invalid query"))
    );
    assert_eq!(h.files(), Vec::<String>::new());
}

#[tokio::test]
async fn stop_mode_restarts_containers_and_live_mode_leaves_them_alone() {
    let stop_app = TestApp::new("");
    let live_app = TestApp::new("");
    let live_id = live_app.id.clone();
    let h = Harness::with(|c| {
        c.apps.insert(
            live_id,
            appsnap::config::AppConfig {
                mode: Some(appsnap::config::BackupMode::Live),
                ..Default::default()
            },
        );
    })
    .await;

    let before = stop_app.started_at(&stop_app.containers[0]);
    h.backup(&stop_app.id).await;
    assert!(stop_app.running(&stop_app.containers[0]));
    assert_ne!(
        stop_app.started_at(&stop_app.containers[0]),
        before,
        "it was stopped and started"
    );

    let before = live_app.started_at(&live_app.containers[0]);
    h.backup(&live_app.id).await;
    assert_eq!(
        live_app.started_at(&live_app.containers[0]),
        before,
        "live: never stopped"
    );

    // A container that was stopped before the backup stays stopped.
    let mut idle = TestApp::new("");
    let second = idle.add_container("worker", "");
    crate::common::sh(&format!("docker stop -t 1 {second}"));
    h.backup(&idle.id).await;
    assert!(idle.running(&idle.containers[0]));
    assert!(!idle.running(&second));
}

/// The pre-backup hook blocks (inside the container) until the test creates /bind/go, so
/// the first backup is provably in progress while the others are asked for.
#[tokio::test]
async fn same_app_is_409_while_other_apps_back_up_in_parallel() {
    let app =
        TestApp::new("--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done'");
    let other = TestApp::new("");
    let h = Harness::new().await;

    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["state"], "running");
    let job_id = job["job_id"].as_str().unwrap().to_string();

    let (status, body) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("already running")
    );

    h.backup(&other.id).await; // not blocked by the first app's lock

    let (status, polled) = h.call("GET", &format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        (status, polled["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    fs::write(app.bind().join("go"), "").unwrap();
    let done = finished(&h, &job_id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
    let result = done.result.unwrap();
    // The last progress report is the whole tar stream the archive holds, and the
    // estimate made before archiving was a real one.
    assert_eq!(Some(done.bytes_done), result["tar_bytes"].as_u64());
    assert!(done.bytes_total > 0, "{}", done.bytes_total);
    assert_eq!(result["app_id"], app.id.as_str());
    // The lock is released: a new backup of the same app works.
    h.backup(&app.id).await;
    let (_, jobs) = h.call("GET", "/api/v1/jobs").await;
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == job_id.as_str())
    );
    let (status, _) = h.call("GET", "/api/v1/jobs/job_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failing_pre_hook_aborts_cleanly() {
    let app = TestApp::new("--label 'appsnap.pre-backup=echo dump failed >&2; exit 3'");
    let h = Harness::new().await;
    let before = app.started_at(&app.containers[0]);
    let (status, body) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Backup hook failed");
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains("exited with 3") && details.contains("dump failed"),
        "{details}"
    );
    assert_eq!(
        app.started_at(&app.containers[0]),
        before,
        "nothing was stopped"
    );
    assert!(app.running(&app.containers[0]));
    let (_, list) = h.call("GET", "/api/v1/backup/snapshots").await;
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(
        h.files(),
        vec![app.id.clone()],
        "only the (empty) app folder"
    );
    // The failed job carries the same error body as the answer.
    let (_, jobs) = h.call("GET", "/api/v1/jobs").await;
    assert_eq!(jobs[0]["state"], "failed");
    assert_eq!(jobs[0]["error"]["message"], "Backup hook failed", "{jobs}");
}

#[tokio::test]
async fn post_hook_failure_keeps_the_snapshot_with_a_warning() {
    let app = TestApp::new(
        "--label 'appsnap.post-backup=exit 4' --label 'appsnap.pre-backup=echo ok > /bind/pre-ran'",
    );
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let warnings = snap["warnings"].to_string();
    assert!(
        warnings.contains("post-backup") && warnings.contains("exited with 4"),
        "{warnings}"
    );
    assert!(
        app.bind().join("pre-ran").exists(),
        "the pre-backup hook ran in the container"
    );
}

#[tokio::test]
async fn sockets_and_vanished_containers_are_reported_not_fatal() {
    // A socket in the volume is skipped with a warning.
    let mut app =
        TestApp::new("--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done'");
    let _sock =
        std::os::unix::net::UnixListener::bind(app.volume_path().join("php-fpm.sock")).unwrap();
    let doomed = app.add_container("cron", "");
    let h = Harness::new().await;
    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // While the hook holds the backup, one of the app's containers disappears.
    crate::common::sh(&format!("docker rm -f {doomed}"));
    fs::write(app.bind().join("go"), "").unwrap();
    let done = finished(&h, job["job_id"].as_str().unwrap()).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
    let warnings = done.result.unwrap()["warnings"].to_string();
    assert!(
        warnings.contains("php-fpm.sock") && warnings.contains("socket"),
        "{warnings}"
    );
    assert!(warnings.contains(&doomed[..12]), "{warnings}");
    assert!(
        app.running(&app.containers[0]),
        "the remaining container runs again"
    );
    app.containers.retain(|c| c != &doomed);
}

#[tokio::test]
async fn max_snapshots_per_app_deletes_the_oldest() {
    let app = TestApp::new("");
    let h = Harness::with(|c| c.max_snapshots_per_app = 2).await;
    let first = h.backup(&app.id).await;
    h.backup(&app.id).await;
    h.backup(&app.id).await;
    let list = h.manager.list(Some(&app.id)).unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .all(|s| s.snapshot_id != first["snapshot_id"].as_str().unwrap())
    );
    assert!(!std::path::Path::new(first["file_path"].as_str().unwrap()).exists());
}

/// A backup cancelled while its pre-backup hook runs (the hook blocks until the test
/// creates /bind/go) ends `Job cancelled` in every mode: the app was never stopped, no
/// archive or partial file is left, nothing is listed, the post-backup hook ran (it undoes
/// what the first did), and the app's lock is free again.
/// A pre-copy backup's first pass sees the cancel flag at its first chunk; a stop-mode
/// backup checks the cancel before it stops the containers.
#[tokio::test]
async fn a_cancelled_backup_never_stops_the_app_and_keeps_nothing() {
    use appsnap::config::BackupMode;
    for mode in [BackupMode::Precopy, BackupMode::Stop] {
        let app = TestApp::new(
            "--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done' \
             --label 'appsnap.post-backup=echo ran > /bind/post-ran'",
        );
        fs::write(app.volume_path().join("data"), "x".repeat(1 << 20)).unwrap();
        let h = Harness::in_mode(&app.id, mode).await;
        let started_at = app.started_at(&app.containers[0]);

        let (status, job) = h
            .call("POST", &format!("/api/v1/backup/{}?wait=false", app.id))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        assert_eq!(job["cancellable"], true, "{job}");
        let job_id = job["job_id"].as_str().unwrap().to_string();
        h.manager
            .jobs
            .get(&job_id)
            .unwrap()
            .subscribe()
            .wait_for(|j| j.step == "running pre-backup hooks")
            .await
            .unwrap();

        let (status, asked) = h
            .call("POST", &format!("/api/v1/jobs/{job_id}/cancel"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
        assert_eq!(
            (&asked["state"], &asked["cancel_requested"]),
            (&"running".into(), &true.into()),
            "{asked}"
        );
        // Asking twice is the same request.
        let (status, _) = h
            .call("POST", &format!("/api/v1/jobs/{job_id}/cancel"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        fs::write(app.bind().join("go"), "").unwrap();
        finished(&h, &job_id).await;

        let (_, ended) = h.call("GET", &format!("/api/v1/jobs/{job_id}")).await;
        assert_eq!(ended["state"], "failed", "{mode:?}: {ended}");
        assert_eq!(ended["error"]["message"], "Job cancelled", "{ended}");
        assert!(
            ended["error"]["details"]
                .as_str()
                .unwrap()
                .contains("the backup was cancelled on request"),
            "{ended}"
        );
        assert!(
            ended["log"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["text"] != "stopping containers"),
            "{mode:?}: the app was stopped: {ended}"
        );
        assert_eq!(app.started_at(&app.containers[0]), started_at, "{mode:?}");
        assert!(app.running(&app.containers[0]));
        assert!(app.bind().join("post-ran").exists(), "{mode:?}: {ended}");
        assert!(
            h.files()
                .iter()
                .all(|f| !f.ends_with(".tar.gz") && !f.ends_with(".partial")),
            "{mode:?}: {:?}",
            h.files()
        );
        let (_, listed) = h
            .call(
                "GET",
                &format!("/api/v1/backup/snapshots?app_id={}", app.id),
            )
            .await;
        assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

        // An ended job cannot be cancelled, an unknown one is not found.
        let (status, body) = h
            .call("POST", &format!("/api/v1/jobs/{job_id}/cancel"))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["message"], "Job cannot be cancelled", "{body}");
        let (status, _) = h.call("POST", "/api/v1/jobs/job_nope/cancel").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The lock is free: the next backup runs (the hook returns at once now).
        h.backup(&app.id).await;
    }
}

/// Jobs cancelled while they wait for a heavy slot (the only one held by a backup whose
/// hook waits for /bind/go) end `Job cancelled` once they get it, before they touch
/// anything: the waiting backup runs no hook, the waiting restore reads nothing and
/// moves nothing, and neither app is stopped.
#[tokio::test]
async fn jobs_cancelled_while_they_wait_for_a_slot_touch_nothing() {
    let holder =
        TestApp::new("--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done'");
    let hooked = TestApp::new("--label 'appsnap.pre-backup=echo ran > /bind/pre-ran'");
    let restored = TestApp::new("");
    fs::write(restored.volume_path().join("data"), "v1").unwrap();
    let h = Harness::with(|c| c.max_parallel = 1).await;
    let snap = h.backup(&restored.id).await;
    fs::write(restored.volume_path().join("data"), "v2").unwrap();
    fs::remove_file(hooked.bind().join("pre-ran")).ok();
    let started = restored.started_at(&restored.containers[0]);

    let held = h
        .manager
        .start_backup(&holder.id, appsnap::catalog::Origin::Manual, None)
        .await
        .unwrap();
    held.job
        .subscribe()
        .wait_for(|j| j.step == "running pre-backup hooks")
        .await
        .unwrap();
    let backup = h
        .manager
        .start_backup(&hooked.id, appsnap::catalog::Origin::Manual, None)
        .await
        .unwrap();
    let restore = h
        .manager
        .start_restore(&restored.id, snap["snapshot_id"].as_str().unwrap())
        .await
        .unwrap();
    crate::common::until_waiting_for_a_slot(&backup.job).await;
    crate::common::until_waiting_for_a_slot(&restore.job).await;
    for job in [&backup.job, &restore.job] {
        let (status, body) = h
            .call("POST", &format!("/api/v1/jobs/{}/cancel", job.id()))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    fs::write(holder.bind().join("go"), "").unwrap();
    assert!(held.done.await.unwrap().is_ok());

    let backup_err = backup.done.await.unwrap().unwrap_err();
    assert!(
        matches!(*backup_err, appsnap::manager::ManagerError::Cancelled(_)),
        "{backup_err}"
    );
    assert!(!hooked.bind().join("pre-ran").exists(), "the hook ran");
    let restore_err = restore.done.await.unwrap().unwrap_err();
    assert!(
        matches!(*restore_err, appsnap::manager::ManagerError::Cancelled(_)),
        "{restore_err}"
    );
    assert_eq!(
        fs::read_to_string(restored.volume_path().join("data")).unwrap(),
        "v2"
    );
    assert_eq!(restored.started_at(&restored.containers[0]), started);
    assert!(
        restore
            .job
            .info()
            .log
            .iter()
            .all(|l| !l.text.starts_with("verifying"))
    );
}

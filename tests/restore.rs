//! Restore against real containers and volumes: the round trip, every fault of the
//! rollback promise made real (corrupt archive, full disk, a container that dies, an
//! unhealthy one, a kill -9), and the ownership and locking rules.

use std::fs;
use std::path::Path;

use axum::http::StatusCode;

use crate::common::{
    Harness, Immutable, Service, SmallFs, TestApp, fill_every_kind, follow_until,
    interrupted_restore, manifest, restore_uri, sh,
};

/// Changes of every kind a running app makes after a snapshot.
fn change_everything(dir: &Path) {
    fs::write(dir.join("sub/hello.php"), "rewritten").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("owned"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"appended\n").unwrap();
    fs::remove_file(dir.join("random.bin")).unwrap();
    fs::remove_file(dir.join("rel-link")).unwrap();
    fs::write(dir.join("added-after.txt"), "new").unwrap();
    fs::create_dir(dir.join("new-dir")).unwrap();
    fs::set_permissions(
        dir.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    nix::unistd::chown(&dir.join("sub"), Some(42.into()), None).unwrap();
}

#[tokio::test]
async fn restore_gives_exactly_the_snapshot_back() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    fill_every_kind(&app.bind());
    let (vol0, bind0, proj0) = (
        manifest(&app.volume_path(), true),
        manifest(&app.bind(), true),
        manifest(&app.project(), true),
    );
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;

    change_everything(&app.volume_path());
    change_everything(&app.bind());
    fs::write(
        app.project().join("docker-compose.yml"),
        "services: {changed: {}}\n",
    )
    .unwrap();
    assert_ne!(manifest(&app.volume_path(), true), vol0);

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Snapshot restored successfully");
    assert_eq!(
        manifest(&app.volume_path(), true),
        vol0,
        "the volume is the snapshot, exactly"
    );
    assert_eq!(manifest(&app.bind(), true), bind0, "the bind mount too");
    assert_eq!(manifest(&app.project(), true), proj0, "and the compose dir");
    let sparse = fs::metadata(app.volume_path().join("sparse.img")).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&sparse) * 512 < 1 << 20,
        "still sparse"
    );
    assert!(app.running(&app.containers[0]));
    // Every mount was staged beside itself while the app ran: none was extracted with
    // the app stopped, and the downtime is reported.
    assert_eq!(
        body["extracted_while_stopped"],
        serde_json::json!([]),
        "{body}"
    );
    assert!(
        body["downtime_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{body}"
    );
    // Nothing left aside next to the volume once the cleanup after the answer is done.
    assert!(body["cleanup_job"].is_string(), "{body}");
    h.manager.cleanups_finished().await;
    let vol_dir = app.volume_path().parent().unwrap().to_path_buf();
    let names: Vec<_> = fs::read_dir(&vol_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["_data"], "{names:?}");
    assert!(
        fs::read_dir(h.root.path().join(".appsnap"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("journal"))
    );
}

/// A mount that is a mount point on the host cannot be staged beside itself (a rename
/// cannot leave its filesystem): it is extracted after the stop, into the mount, and
/// the answer says so; the other mounts are still staged.
#[tokio::test]
async fn a_mount_point_is_extracted_with_the_app_stopped_and_said_so() {
    let app = TestApp::new("");
    let _tmpfs = SmallFs::mount(&app.bind(), "64m");
    fill_every_kind(&app.volume_path());
    fill_every_kind(&app.bind());
    let (vol0, bind0) = (
        manifest(&app.volume_path(), true),
        manifest(&app.bind(), true),
    );
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    change_everything(&app.volume_path());
    change_everything(&app.bind());

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["extracted_while_stopped"],
        serde_json::json!([app.bind().display().to_string()]),
        "{body}"
    );
    // The data set aside inside the mount point is dropped after the answer; with it
    // gone, the root's times are still the snapshot's.
    h.manager.cleanups_finished().await;
    assert_eq!(manifest(&app.volume_path(), true), vol0);
    assert_eq!(manifest(&app.bind(), true), bind0);
    assert!(app.running(&app.containers[0]));
    let left: Vec<_> = fs::read_dir(app.bind())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("appsnap"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn corrupt_or_truncated_snapshot_is_refused_before_anything_is_touched() {
    let app = TestApp::new("");
    fs::write(
        app.volume_path().join("db.sql"),
        "INSERT 1;\n".repeat(200_000),
    )
    .unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let path = snap["file_path"].as_str().unwrap().to_string();
    let good = fs::read(&path).unwrap();
    fs::write(app.volume_path().join("db.sql"), "changed").unwrap();
    let before = (
        manifest(&app.volume_path(), true),
        app.started_at(&app.containers[0]),
    );

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    for (what, bytes) in [
        ("flipped byte", flipped),
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
    ] {
        fs::write(&path, &bytes).unwrap();
        let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["message"], "Snapshot is corrupt");
        assert!(
            body["details"].as_str().unwrap().contains("checksum"),
            "{what}: {body}"
        );
        assert_eq!(
            (
                manifest(&app.volume_path(), true),
                app.started_at(&app.containers[0])
            ),
            before,
            "{what}: untouched"
        );
        let (status, _) = h
            .call(
                "POST",
                &format!(
                    "/api/v1/backup/snapshots/{}/verify",
                    snap["snapshot_id"].as_str().unwrap()
                ),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    fs::write(&path, &good).unwrap();
    let (status, body) = h
        .call(
            "POST",
            &format!(
                "/api/v1/backup/snapshots/{}/verify",
                snap["snapshot_id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Snapshot verified");
    assert!(body["entries"].as_u64().unwrap() >= 3);
}

/// The bind mount is its own small filesystem: the snapshot no longer fits next to the
/// data set aside. That is known before anything is touched: 507, nothing stopped.
#[tokio::test]
async fn a_snapshot_that_cannot_fit_is_refused_before_anything_is_touched() {
    let app = TestApp::new("");
    let _small = SmallFs::mount(&app.bind(), "6m");
    sh(&format!(
        "head -c 4000000 /dev/urandom > {}/video.mp4",
        app.bind().display()
    ));
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    fs::remove_file(app.bind().join("video.mp4")).unwrap();
    sh(&format!(
        "head -c 3000000 /dev/urandom > {}/other.mp4",
        app.bind().display()
    ));
    let before = (
        manifest(&app.bind(), true),
        app.started_at(&app.containers[0]),
    );
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("nothing was touched"),
        "{body}"
    );
    let after = (
        manifest(&app.bind(), true),
        app.started_at(&app.containers[0]),
    );
    assert_eq!(after, before, "untouched, not even restarted");
}

/// What the up-front check cannot see: it counts the blocks the files take (a page each
/// for 999 one-byte files, which fit), not the inodes. The small filesystem has 1001: the
/// snapshot's files fit beside the root, but not beside the data set aside too, so
/// extraction hits ENOSPC near its end and everything must come back.
#[tokio::test]
async fn disk_full_during_extraction_rolls_back() {
    let app = TestApp::new("");
    let _small = SmallFs::mount(&app.bind(), "6m,nr_inodes=1001");
    for i in 0..999 {
        fs::write(app.bind().join(format!("f{i}")), "x").unwrap();
    }
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    for i in 0..999 {
        fs::remove_file(app.bind().join(format!("f{i}"))).unwrap();
    }
    sh(&format!(
        "head -c 1000000 /dev/urandom > {}/other.mp4",
        app.bind().display()
    ));
    nix::unistd::chown(&app.bind(), Some(7.into()), Some(8.into())).unwrap();
    let before = manifest(&app.bind(), true);

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Restore failed, rolled back");
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains("extracting") && details.contains("No space"),
        "{details}"
    );
    assert_eq!(
        manifest(&app.bind(), true),
        before,
        "the original data, identical (root included)"
    );
    assert!(app.running(&app.containers[0]));
}

/// A permission fault: the bind mount has become read-only, so not even its current data
/// can be moved aside. Nothing may change.
#[tokio::test]
async fn read_only_target_rolls_back_untouched() {
    let app = TestApp::new("");
    fs::write(app.bind().join("config.ini"), "v1").unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    fs::write(app.bind().join("config.ini"), "v2").unwrap();
    let before = manifest(&app.bind(), true);
    let vol_before = manifest(&app.volume_path(), true);
    let _ro = crate::common::ReadOnly::mount(&app.bind());

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Restore failed, rolled back");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{body}"
    );
    assert_eq!(manifest(&app.bind(), true), before);
    assert_eq!(
        manifest(&app.volume_path(), true),
        vol_before,
        "nor anything else"
    );
    assert!(app.running(&app.containers[0]));
}

#[tokio::test]
async fn container_that_exits_at_once_rolls_back() {
    let app = TestApp::new_running("", "[ -e /data/broken ] && exit 3;");
    let h = Harness::live(&app.id).await;
    fs::write(app.volume_path().join("broken"), "a bad state").unwrap();
    let snap = h.backup(&app.id).await; // live: the container keeps running
    fs::remove_file(app.volume_path().join("broken")).unwrap();
    fs::write(app.volume_path().join("good"), "v2").unwrap();
    let before = manifest(&app.volume_path(), true);

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Restore failed, rolled back");
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains("waiting for containers to run") && details.contains("exit code 3"),
        "{details}"
    );
    assert_eq!(manifest(&app.volume_path(), true), before);
    assert!(
        app.running(&app.containers[0]),
        "started again on the old data"
    );
}

#[tokio::test]
async fn unhealthy_app_rolls_back() {
    let app = TestApp::new(
        "--health-cmd 'test ! -e /data/unhealthy' --health-interval 1s --health-timeout 1s --health-retries 1",
    );
    let h = Harness::live(&app.id).await;
    fs::write(app.volume_path().join("unhealthy"), "").unwrap();
    let snap = h.backup(&app.id).await;
    fs::remove_file(app.volume_path().join("unhealthy")).unwrap();
    let before = manifest(&app.volume_path(), true);

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("unhealthy"),
        "{body}"
    );
    assert_eq!(manifest(&app.volume_path(), true), before);
    assert!(app.running(&app.containers[0]));
}

#[tokio::test]
async fn ownership_existence_and_locks() {
    let app =
        TestApp::new("--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done'");
    let other = TestApp::new("");
    let h = Harness::new().await;
    let other_snap = h.backup(&other.id).await;

    let (status, body) = h.call("POST", &restore_uri(&app.id, &other_snap)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("Snapshot does not belong to this app")
        )
    );
    let (status, body) = h
        .call(
            "POST",
            &format!(
                "/api/v1/backup/restore/{}/snapshot_20990101T000000Z_0000",
                app.id
            ),
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("Snapshot not found"))
    );
    let (status, body) = h
        .call("POST", &restore_uri("no_such_app_r", &other_snap))
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("Application not found"))
    );
    let (status, _) = h.call("POST", "/api/v1/backup/restore/a%2F..%2Fb/x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A backup holds the app: a restore of it must wait its turn.
    fs::write(app.bind().join("go"), "").unwrap();
    let snap = h.backup(&app.id).await;
    fs::remove_file(app.bind().join("go")).unwrap();
    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    fs::write(app.bind().join("go"), "").unwrap();
    let mut rx = h
        .manager
        .jobs
        .get(job["job_id"].as_str().unwrap())
        .unwrap()
        .subscribe();
    rx.wait_for(|j| j.state != appsnap::jobs::JobState::Running)
        .await
        .unwrap();
    let (status, job) = h
        .call(
            "POST",
            &format!("{}?wait=false", restore_uri(&app.id, &snap)),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "restore");
    let mut rx = h
        .manager
        .jobs
        .get(job["job_id"].as_str().unwrap())
        .unwrap()
        .subscribe();
    let done = rx
        .wait_for(|j| j.state != appsnap::jobs::JobState::Running)
        .await
        .unwrap()
        .clone();
    assert_eq!(
        done.state,
        appsnap::jobs::JobState::Succeeded,
        "{:?}",
        done.error
    );
}

/// Mounts that exist now but not in the snapshot are left alone; a volume of the
/// snapshot that is gone is created again.
#[tokio::test]
async fn missing_volume_is_recreated_and_new_mounts_are_untouched() {
    let mut app = TestApp::new("");
    let extra = format!("{}_cache", app.id);
    sh(&format!(
        "docker volume create --label com.docker.compose.project={} {extra}",
        app.id
    ));
    let worker = app.add_container("worker", &format!("-v {extra}:/cache"));
    let extra_path = std::path::PathBuf::from(sh(&format!(
        "docker volume inspect -f '{{{{.Mountpoint}}}}' {extra}"
    )));
    fs::write(extra_path.join("cached"), "snapshot-time").unwrap();
    fs::write(app.volume_path().join("main"), "snapshot-time").unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;

    // The cache volume disappears with its container; a new volume appears.
    sh(&format!(
        "docker rm -f {worker} && docker volume rm {extra}"
    ));
    app.containers.retain(|c| c != &worker);
    let later = format!("{}_later", app.id);
    sh(&format!(
        "docker volume create --label com.docker.compose.project={} {later}",
        app.id
    ));
    let later_path = std::path::PathBuf::from(sh(&format!(
        "docker volume inspect -f '{{{{.Mountpoint}}}}' {later}"
    )));
    fs::write(later_path.join("keep"), "mine").unwrap();

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let recreated = std::path::PathBuf::from(sh(&format!(
        "docker volume inspect -f '{{{{.Mountpoint}}}}' {extra}"
    )));
    assert_eq!(
        fs::read_to_string(recreated.join("cached")).unwrap(),
        "snapshot-time"
    );
    let label = sh(&format!(
        "docker volume inspect -f '{{{{index .Labels \"com.docker.compose.project\"}}}}' {extra}"
    ));
    assert_eq!(label, app.id);
    assert_eq!(fs::read_to_string(later_path.join("keep")).unwrap(), "mine");
    sh(&format!("docker volume rm -f {extra} {later}"));
}

#[tokio::test]
async fn download_then_import_moves_a_snapshot_to_another_server() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    let snapshot_time = manifest(&app.volume_path(), true);
    let server_a = Harness::new().await;
    let snap = server_a.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();

    let req = axum::http::Request::get(format!("/api/v1/backup/snapshots/{id}/download"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(server_a.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(id)
    );
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(bytes.len() as u64, snap["size_bytes"].as_u64().unwrap());
    drop(server_a); // server A is gone, and its backup root with it
    assert!(!Path::new(snap["file_path"].as_str().unwrap()).exists());

    let server_b = Harness::new().await;
    let import = |body: Vec<u8>, query: &str| {
        axum::http::Request::post(format!("/api/v1/backup/snapshots/import{query}"))
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let (status, body) = server_b.call_with(import(bytes.to_vec(), "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["snapshot"]["snapshot_id"], id);
    assert_eq!(body["snapshot"]["app_id"], app.id.as_str());
    assert_eq!(body["snapshot"]["sha256"], snap["sha256"]);
    assert_eq!(body["snapshot"]["origin"], "imported");
    let (status, body) = server_b.call_with(import(bytes.to_vec(), "")).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::CONFLICT, Some("Snapshot already exists"))
    );
    let (status, body) = server_b
        .call_with(import(b"not an archive at all".to_vec(), ""))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    change_everything(&app.volume_path());
    let (status, body) = server_b.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(manifest(&app.volume_path(), true), snapshot_time);
    assert_eq!(
        server_b.manager.list(None).unwrap().len(),
        1,
        "failed imports left nothing"
    );
    let leftovers = fs::read_dir(server_b.root.path().join(".appsnap"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("import-"))
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn import_is_size_limited() {
    let h = Harness::with(|c| c.max_import_bytes = 1000).await;
    let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
        .body(axum::body::Body::from(vec![0u8; 5000]))
        .unwrap();
    let (status, body) = h.call_with(req).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("Upload too large"))
    );
    assert_eq!(h.files(), Vec::<String>::new());
}

/// The two ways a crashed restore is repaired at start-up, from the journal a real
/// restore writes: finished when extraction had completed, rolled back before that.
#[tokio::test]
async fn startup_finishes_or_rolls_back_an_interrupted_restore() {
    for (phase, expect) in [("extracted", "restored"), ("extracting", "old")] {
        let app = TestApp::new("");
        let data = app.volume_path();
        let (root, journal_path, aside) = interrupted_restore(&app, phase, "restored");

        let h = Harness::in_root(root, |_| {}).await;
        assert_eq!(
            fs::read_to_string(data.join("state")).unwrap(),
            expect,
            "phase {phase}"
        );
        assert!(!aside.exists(), "phase {phase}: nothing left aside");
        assert!(!journal_path.exists(), "phase {phase}: journal done");
        assert!(
            app.running(&app.containers[0]),
            "phase {phase}: the app runs"
        );
        drop(h);
    }
}

/// A restore refused up front (here: it cannot fit) leaves no trace either: the volume it
/// had created for a snapshot mount that no longer existed is removed again.
#[tokio::test]
async fn a_refused_restore_removes_the_volume_it_created() {
    let mut app = TestApp::new("");
    let _small = SmallFs::mount(&app.bind(), "6m");
    sh(&format!(
        "head -c 4000000 /dev/urandom > {}/video.mp4",
        app.bind().display()
    ));
    let extra = format!("{}_cache", app.id);
    sh(&format!(
        "docker volume create --label com.docker.compose.project={} {extra}",
        app.id
    ));
    let worker = app.add_container("worker", &format!("-v {extra}:/cache"));
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    sh(&format!(
        "docker rm -f {worker} && docker volume rm {extra}"
    ));
    app.containers.retain(|c| c != &worker);
    fs::remove_file(app.bind().join("video.mp4")).unwrap();
    sh(&format!(
        "head -c 3000000 /dev/urandom > {}/other.mp4",
        app.bind().display()
    ));

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    let left = std::process::Command::new("docker")
        .args(["volume", "inspect", &extra])
        .output()
        .unwrap();
    assert!(
        !left.status.success(),
        "the volume created for the refused restore is still there"
    );
}

/// The folders a restore set aside next to (or inside) the app's three mounts.
fn asides(app: &TestApp) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for dir in [app.volume_path(), app.bind(), app.project()] {
        for parent in [dir.parent().unwrap(), dir.as_path()] {
            found.extend(
                fs::read_dir(parent)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains("appsnap-aside"))
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// The restore answers once the snapshot runs; the data it replaced is removed after,
/// by a job of its own, and a backup asked for meanwhile waits for that job instead of
/// failing with 409 or archiving a half-removed folder. The cleanup is held at its first
/// drop by a fail point (`APPSNAP_PAUSE_AT`), the only way to look at it while it runs.
#[tokio::test]
async fn the_replaced_data_goes_after_the_answer_and_the_next_backup_waits_for_it() {
    crate::common::require_failpoints();
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    fill_every_kind(&app.bind());
    let root = tempfile::tempdir().unwrap();
    let (config, resume) = (
        root.path().with_extension("toml"),
        root.path().with_extension("resume"),
    );
    fs::write(
        &config,
        format!(
            "restore_settle_secs = 0\nstate_dir = \"{}\"\n",
            std::env::temp_dir().join("appsnap-test-state").display()
        ),
    )
    .unwrap();
    let pause = format!("restore.drop-0={}", resume.display());
    let svc = Service::start(
        root.path(),
        &[
            ("APPSNAP_CONFIG", config.to_str().unwrap()),
            ("APPSNAP_PAUSE_AT", &pause),
        ],
    );
    let snap = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    let want = manifest(&app.volume_path(), true);
    change_everything(&app.volume_path());

    let restored = svc.post(&restore_uri(&app.id, &snap)).await;
    assert_eq!(
        restored["message"], "Snapshot restored successfully",
        "{restored}"
    );
    assert_eq!(manifest(&app.volume_path(), true), want);
    assert!(app.running(&app.containers[0]));
    // Held after the first of three drops: the other two folders are still there.
    assert!(asides(&app).len() >= 2, "{:?}", asides(&app));
    let cleanup_id = restored["cleanup_job"].as_str().unwrap().to_string();
    let cleanup = svc.get(&format!("/api/v1/jobs/{cleanup_id}")).await;
    assert_eq!(
        (&cleanup["kind"], &cleanup["state"], &cleanup["step"]),
        (
            &"cleanup".into(),
            &"running".into(),
            &"removing the data the restore replaced".into()
        ),
        "{cleanup}"
    );

    let backup = svc
        .post(&format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    let backup_id = backup["job_id"]
        .as_str()
        .expect("202 with the job")
        .to_string();
    follow_until(&svc, &backup_id, |j| {
        j["step"] == "waiting for the removal of the data the last restore replaced"
    })
    .await;

    fs::write(&resume, "").unwrap();
    let cleanup = follow_until(&svc, &cleanup_id, |j| j["state"] != "running").await;
    assert_eq!(cleanup["state"], "succeeded", "{cleanup}");
    let backup = follow_until(&svc, &backup_id, |j| j["state"] != "running").await;
    assert_eq!(backup["state"], "succeeded", "{backup}");
    assert!(asides(&app).is_empty(), "{:?}", asides(&app));
    let journals = crate::common::journals(root.path());
    assert!(journals.is_empty(), "{journals:?}");
    let _ = fs::remove_file(&resume);
}

/// Old data that cannot be removed (here a folder made immutable, a real refusal by the
/// kernel) does not undo a restore that succeeded: the cleanup job fails naming the
/// folder left behind, and the app can be backed up and restored again at once.
#[tokio::test]
async fn a_cleanup_that_cannot_remove_the_old_data_names_it_and_blocks_nothing() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let stuck = app.volume_path().join("stuck");
    fs::create_dir(&stuck).unwrap();
    fs::write(stuck.join("file"), "old").unwrap();
    let mut immutable = Immutable::set(&stuck);

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!stuck.exists(), "the snapshot is in place");
    h.manager.cleanups_finished().await;
    let job_uri = format!("/api/v1/jobs/{}", body["cleanup_job"].as_str().unwrap());
    let (_, job) = h.call("GET", &job_uri).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(
        job["error"]["message"],
        "Restored, but the replaced data was not all removed"
    );
    let left = asides(&app);
    assert_eq!(left.len(), 1, "{left:?}");
    let details = job["error"]["details"].as_str().unwrap();
    assert!(details.contains(&*left[0].to_string_lossy()), "{details}");
    immutable.0 = left[0].join("stuck");

    h.backup(&app.id).await;
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(immutable);
    fs::remove_dir_all(&left[0]).unwrap();
}

/// POSTs a restore to a real service and returns (status, body).
async fn restore_on(
    svc: &Service,
    app: &str,
    snapshot: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(svc.url(&restore_uri(app, snapshot)))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The reinstalled app of the README: its volume now has another name but serves the
/// same container path, so the snapshot's volume goes there (it used to be skipped as
/// "inside Docker's own directory").
#[tokio::test]
async fn a_renamed_volume_is_restored_by_the_container_path_it_serves() {
    let mut app = TestApp::new("");
    fs::write(app.volume_path().join("posts.db"), "snapshot-time").unwrap();
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let snap = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    assert!(snap["snapshot_id"].is_string(), "{snap}");

    // Reinstalled: the old container and volume are gone, a new volume serves /data.
    for c in std::mem::take(&mut app.containers) {
        sh(&format!("docker rm -f {c}"));
    }
    sh(&format!("docker volume rm -f {}", app.volume));
    app.volume = format!("{}_renamed", app.id);
    sh(&format!(
        "docker volume create --label com.docker.compose.project={} {}",
        app.id, app.volume
    ));
    app.add_container("web", "");
    fs::write(app.volume_path().join("posts.db"), "after the reinstall").unwrap();

    let (status, body) = restore_on(&svc, &app.id, &snap["snapshot"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["skipped"], serde_json::json!([]), "{body}");
    assert_eq!(
        fs::read_to_string(app.volume_path().join("posts.db")).unwrap(),
        "snapshot-time"
    );
    assert!(app.running(&app.containers[0]));
    let old = format!("{}_data", app.id);
    let gone = std::process::Command::new("docker")
        .args(["volume", "inspect", &old])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the old name was not recreated");
}

/// A mount the snapshot holds no entry for is left as it is, never emptied: a host
/// socket bound into the app (the backup skips it with a warning), and an imported
/// archive that lists the app's volume and bind but carries nothing for them.
#[tokio::test]
async fn a_mount_the_snapshot_holds_nothing_for_is_left_alone() {
    use std::os::unix::fs::MetadataExt;
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("db.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let app = TestApp::new(&format!("-v {}:/run/db.sock", socket.display()));
    fs::write(app.volume_path().join("data"), "snapshot-time").unwrap();
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let snap = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    assert!(snap["snapshot_id"].is_string(), "{snap}");
    let inode = fs::symlink_metadata(&socket).unwrap().ino();

    // The app runs: the socket's mount stays as it is, so Docker can start it again.
    let (status, body) = restore_on(&svc, &app.id, &snap["snapshot"]).await;
    assert_eq!(status, 200, "{body}");
    let skipped = body["skipped"].to_string();
    assert!(
        skipped.contains("db.sock") && skipped.contains("holds nothing"),
        "{body}"
    );
    assert_eq!(
        fs::symlink_metadata(&socket).unwrap().ino(),
        inode,
        "the socket is kept"
    );
    assert!(app.running(&app.containers[0]));
    // Stopped, the same (it was deleted with the data set aside).
    sh(&format!("docker stop -t 1 {}", app.containers[0]));
    let (status, body) = restore_on(&svc, &app.id, &snap["snapshot"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fs::symlink_metadata(&socket).unwrap().ino(), inode);
    sh(&format!("docker start {}", app.containers[0]));

    // An import naming the volume and the bind, with entries for the project only.
    fs::write(app.bind().join("keep"), "live bind data").unwrap();
    let before = [
        manifest(&app.volume_path(), true),
        manifest(&app.bind(), true),
    ];
    let bind_name = app.bind().to_str().unwrap().to_string();
    let bind_dir = format!("binds/{}", appsnap::model::escape_path(&bind_name));
    let project = app.project().to_str().unwrap().to_string();
    let meta = serde_json::json!({
        "format": 1, "appsnap_version": "0.1.0",
        "snapshot_id": "snapshot_20260101T000000Z_e0e0", "app_id": app.id,
        "created_at": "2026-01-01T00:00:00Z", "origin": "manual",
        "mounts": [
            {"type": "volume", "name": app.volume, "source": "/x", "destination": "/data",
             "archive_dir": format!("volumes/{}", app.volume)},
            {"type": "bind", "name": bind_name, "source": bind_name, "destination": "/bind",
             "archive_dir": bind_dir},
            {"type": "project", "name": project, "source": project, "destination": "",
             "archive_dir": "project"},
        ],
    })
    .to_string();
    let bytes = crate::common::craft::archive_with(
        &meta,
        &[
            (b"project/", tar::EntryType::Directory, b"", b""),
            (
                b"project/docker-compose.yml",
                tar::EntryType::Regular,
                b"",
                b"services: {x: {}}\n",
            ),
        ],
    );
    let resp = reqwest::Client::new()
        .post(svc.url("/api/v1/backup/snapshots/import"))
        .header("content-type", "application/gzip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let imported = serde_json::json!({"snapshot_id": "snapshot_20260101T000000Z_e0e0"});
    let (status, body) = restore_on(&svc, &app.id, &imported).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["skipped"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(
        [
            manifest(&app.volume_path(), true),
            manifest(&app.bind(), true)
        ],
        before,
        "the volume and the bind are untouched"
    );
    assert_eq!(
        fs::read_to_string(app.project().join("docker-compose.yml")).unwrap(),
        "services: {x: {}}\n",
        "the project folder is restored"
    );
}

/// The containers a restore stops are read right before the stop, not when the request
/// came: one started while the restore waited for a slot is stopped before its data
/// moves, and runs again after.
#[tokio::test]
async fn a_container_started_while_the_restore_waits_is_stopped_before_its_data_moves() {
    // B never becomes healthy: its restore holds the only slot until it rolls back.
    let b = TestApp::new("--health-cmd true --health-interval 1h --health-start-period 1h");
    let a = TestApp::new("");
    fs::write(a.volume_path().join("data"), "snapshot-time").unwrap();
    let h = Harness::with(|c| {
        c.max_parallel = 1;
        c.restore_timeout_secs = 3;
    })
    .await;
    let snap_a = h.backup(&a.id).await;
    let snap_b = h.backup(&b.id).await;
    fs::write(a.volume_path().join("data"), "later").unwrap();
    sh(&format!("docker stop -t 1 {}", a.containers[0]));

    let holder = h
        .manager
        .start_restore(&b.id, snap_b["snapshot_id"].as_str().unwrap())
        .await
        .unwrap();
    holder
        .job
        .subscribe()
        .wait_for(|j| j.step == "waiting for containers to run")
        .await
        .unwrap();
    let restore = h
        .manager
        .start_restore(&a.id, snap_a["snapshot_id"].as_str().unwrap())
        .await
        .unwrap();
    crate::common::until_waiting_for_a_slot(&restore.job).await;
    sh(&format!("docker start {}", a.containers[0]));
    let started = a.started_at(&a.containers[0]);
    let restored = restore.done.await.unwrap().expect("A restored");
    assert!(restored.skipped.is_empty(), "{:?}", restored.skipped);
    assert_eq!(
        fs::read_to_string(a.volume_path().join("data")).unwrap(),
        "snapshot-time"
    );
    assert!(a.running(&a.containers[0]), "it runs again");
    assert_ne!(
        a.started_at(&a.containers[0]),
        started,
        "it was stopped for the restore and started again"
    );
    let _ = holder.done.await;
}

/// A volume that another app's running containers also use is not this app's to move:
/// it is skipped (and says why), and its data stays as it is.
#[tokio::test]
async fn a_volume_another_running_app_uses_is_not_moved() {
    let a = TestApp::new("");
    fs::write(a.volume_path().join("shared.db"), "snapshot-time").unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&a.id).await;
    let other = TestApp::new(&format!("-v {}:/shared", a.volume));
    fs::write(a.volume_path().join("shared.db"), "in use by both").unwrap();
    let (status, body) = h.call("POST", &restore_uri(&a.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let skipped = body["skipped"].to_string();
    assert!(
        skipped.contains(&a.volume) && skipped.contains(&other.id),
        "{body}"
    );
    assert_eq!(
        fs::read_to_string(a.volume_path().join("shared.db")).unwrap(),
        "in use by both"
    );
    assert!(other.running(&other.containers[0]));
}

/// A sparse file is restored with its holes, but each data segment takes at least a
/// block: an archive of 8192 one-byte segments stores 8 KB and allocates 32 MB. The space
/// check counts the 32 MB (it used to count the 8 KB, and the extraction filled the disk).
#[tokio::test]
async fn a_sparse_archive_is_counted_by_what_it_allocates() {
    use crate::common::craft::{gz_of, header};
    let app = TestApp::new("");
    let _small = SmallFs::mount(&app.bind(), "16m");
    fs::write(app.bind().join("keep"), "live").unwrap();
    let before = manifest(&app.bind(), true);
    let bind_name = app.bind().to_str().unwrap().to_string();
    let dir = format!("binds/{}", appsnap::model::escape_path(&bind_name));
    let meta = serde_json::json!({
        "format": 1, "appsnap_version": "0.1.0",
        "snapshot_id": "snapshot_20260101T000000Z_5a5a", "app_id": app.id,
        "created_at": "2026-01-01T00:00:00Z", "origin": "manual",
        "mounts": [{"type": "bind", "name": bind_name, "source": bind_name,
            "destination": "/bind", "archive_dir": dir}],
    })
    .to_string();
    let segments = 8192u64;
    let bytes = gz_of(&mut |out| {
        let mut add = |bytes: &[u8]| out.write_all(bytes).unwrap();
        let pad = |n: usize| vec![0u8; (512 - n % 512) % 512];
        add(header(b"appsnap.json", tar::EntryType::Regular, meta.len() as u64).as_bytes());
        add(meta.as_bytes());
        add(&pad(meta.len()));
        add(header(format!("{dir}/").as_bytes(), tar::EntryType::Directory, 0).as_bytes());
        // One byte every 8 KiB: the segments, four in the header, 21 per extension block.
        let name = format!("{dir}/disk.img");
        let mut h = header(name.as_bytes(), tar::EntryType::GNUSparse, segments);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(segments * 8192);
        let mut slots = (0..segments).map(|i| (i * 8192, 1u64));
        for slot in gnu.sparse.iter_mut() {
            let (offset, len) = slots.next().unwrap();
            slot.set_offset(offset);
            slot.set_length(len);
        }
        gnu.set_is_extended(true);
        h.set_cksum();
        add(h.as_bytes());
        let rest: Vec<(u64, u64)> = slots.collect();
        let blocks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
        for (i, block) in blocks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (slot, &(offset, len)) in ext.sparse_mut().iter_mut().zip(block.iter()) {
                slot.set_offset(offset);
                slot.set_length(len);
            }
            ext.set_is_extended(i + 1 < blocks.len());
            add(ext.as_bytes());
        }
        add(&vec![7u8; segments as usize]);
        add(&pad(segments as usize));
        add(&[0; 1024]);
    });
    assert!(
        bytes.len() < 1 << 20,
        "a small upload ({} bytes)",
        bytes.len()
    );

    let h = Harness::new().await;
    let (status, body) = h.import(bytes, "").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let imported = serde_json::json!({"snapshot_id": "snapshot_20260101T000000Z_5a5a"});
    let (status, body) = h.call("POST", &restore_uri(&app.id, &imported)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    let details = body["details"].as_str().unwrap();
    assert!(details.contains("nothing was touched"), "{details}");
    assert!(
        details.contains(&(segments * 4096).to_string()),
        "counts 4 KiB a segment: {details}"
    );
    assert_eq!(manifest(&app.bind(), true), before);
    assert!(app.running(&app.containers[0]));
}

/// `appsnap.exclude`: what the label's patterns match is not in the snapshot (in neither pre-copy
/// backup pass), the patterns are recorded in it, and a restore carries the
/// current data's matches over into the restored tree (a folder the snapshot lacks is
/// made for them) while everything else is the snapshot's.
#[tokio::test]
async fn excluded_paths_stay_out_of_the_snapshot_and_are_carried_over_by_a_restore() {
    let app = TestApp::new("--label 'appsnap.exclude=cache/**, *.tmp'");
    let vol = app.volume_path();
    for (path, content) in [
        ("keep", "kept"),
        ("cache/a", "cache a"),
        ("cache/b/c", "cache c"),
        ("x.tmp", "x"),
        ("sub/y.tmp", "y"),
        ("sub/z", "z"),
    ] {
        fs::create_dir_all(vol.join(path).parent().unwrap()).unwrap();
        fs::write(vol.join(path), content).unwrap();
    }
    fs::create_dir_all(app.project().join("cache")).unwrap();
    fs::write(app.project().join("cache/p"), "not a container's mount").unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;

    let archive = snap["file_path"].as_str().unwrap();
    let listing = sh(&format!("tar -tzf {archive}"));
    let in_volume: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("volumes/{}/", app.volume)))
        .collect();
    assert_eq!(
        in_volume,
        ["", "cache/", "keep", "sub/", "sub/z"],
        "the matches are left out, the folder `cache` stays: {listing}"
    );
    assert!(listing.contains("project/cache/p"), "{listing}");
    let meta: serde_json::Value =
        serde_json::from_str(&sh(&format!("tar -xzOf {archive} appsnap.json"))).unwrap();
    let mount = meta["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "volume")
        .unwrap();
    assert_eq!(mount["exclude"], serde_json::json!(["cache/**", "*.tmp"]));

    // The app goes on: its cache changes, a temp file goes, another comes in a new folder.
    fs::write(vol.join("keep"), "changed").unwrap();
    fs::write(vol.join("cache/a"), "newer cache").unwrap();
    fs::write(vol.join("cache/new"), "new cache").unwrap();
    fs::remove_file(vol.join("x.tmp")).unwrap();
    fs::create_dir(vol.join("newdir")).unwrap();
    fs::write(vol.join("newdir/w.tmp"), "w").unwrap();
    fs::write(vol.join("sub/z"), "changed z").unwrap();
    let excluded_before = manifest(&vol.join("cache"), false);

    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.manager.cleanups_finished().await;
    let read = |p: &str| fs::read_to_string(vol.join(p)).ok();
    assert_eq!(read("keep").as_deref(), Some("kept"), "the snapshot's");
    assert_eq!(read("sub/z").as_deref(), Some("z"), "the snapshot's");
    assert_eq!(read("sub/y.tmp").as_deref(), Some("y"), "carried over");
    assert_eq!(
        read("newdir/w.tmp").as_deref(),
        Some("w"),
        "carried, folder made"
    );
    assert_eq!(
        read("x.tmp"),
        None,
        "gone before the restore, not brought back"
    );
    assert_eq!(
        manifest(&vol.join("cache"), false),
        excluded_before,
        "the cache is the current one, as it was"
    );
    assert!(app.running(&app.containers[0]));
}

/// A restore cancelled while its data is staged (held before the stop by the fail point
/// `restore.staged`, so that the cancel comes first) rolls back before the app is
/// touched: the staging folders go, the app's data is what it was, its container was
/// never stopped, no journal stays, and the job ends `Job cancelled`. Then the same
/// restore runs to its end.
#[tokio::test]
async fn a_restore_cancelled_after_staging_leaves_the_app_as_it_was() {
    crate::common::require_failpoints();
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    let root = tempfile::tempdir().unwrap();
    let resume = root.path().with_extension("resume");
    let pause = format!("restore.staged={}", resume.display());
    let svc = Service::start(root.path(), &[("APPSNAP_PAUSE_AT", &pause)]);
    let snap = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    let want = manifest(&app.volume_path(), true);
    change_everything(&app.volume_path());
    let changed = manifest(&app.volume_path(), true);
    let started_at = app.started_at(&app.containers[0]);

    let job = svc
        .post(&format!("{}?wait=false", restore_uri(&app.id, &snap)))
        .await;
    let job_id = job["job_id"]
        .as_str()
        .expect("202 with the job")
        .to_string();
    let staging = || {
        fs::read_dir(app.volume_path().parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".appsnap-staged-"))
            .count()
    };
    // Held at the fail point, its data staged: the cancel comes before the check that
    // precedes the stop.
    svc.wait_for_log("paused at restore.staged");
    assert_eq!(staging(), 1, "the restore staged its volume beside it");
    let asked = reqwest::Client::new()
        .post(svc.url(&format!("/api/v1/jobs/{job_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    fs::write(&resume, "").unwrap();
    let ended = follow_until(&svc, &job_id, |j| j["state"] != "running").await;

    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["error"]["message"], "Job cancelled", "{ended}");
    assert_eq!(manifest(&app.volume_path(), true), changed);
    assert_eq!(app.started_at(&app.containers[0]), started_at);
    assert!(app.running(&app.containers[0]));
    assert_eq!(staging(), 0, "the staging folder is removed");
    assert!(asides(&app).is_empty(), "{:?}", asides(&app));
    let journals = crate::common::journals(root.path());
    assert!(journals.is_empty(), "{journals:?}");

    // The app's lock is free and nothing is left to repair: the restore runs again.
    let restored = svc.post(&restore_uri(&app.id, &snap)).await;
    assert_eq!(
        restored["message"], "Snapshot restored successfully",
        "{restored}"
    );
    assert_eq!(manifest(&app.volume_path(), true), want);
    let _ = fs::remove_file(&resume);
}

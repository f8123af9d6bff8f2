//! One regression test per way a backup could miss data or a restore could leave the
//! user worse off: symlinked mount roots, `driver_opts` volumes, slow-stopping
//! services, archives cut at a gzip member boundary, pins, future-dated imports, an
//! unmounted backup disk, outstanding journals, hung hooks, restart policies. The crash
//! walk over every fail point is in `rollback_and_crash.rs`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use axum::http::StatusCode;

use crate::common::{
    Harness, IMAGE, Immutable, TestApp, fill_every_kind, interrupted_restore, manifest,
    restore_uri, sh, test_config, unique,
};

/// A container of compose project `id` with the given working dir and `docker run` args.
fn run_container(app: &mut TestApp, working_dir: &Path, args: &str, script: &str) -> String {
    let id = sh(&format!(
        "docker run -d --name {id}_{n} --network none \
         --label com.docker.compose.project={id} \
         --label com.docker.compose.project.working_dir={wd} {args} {IMAGE} \
         sh -c '{script}'",
        id = app.id,
        n = app.containers.len(),
        wd = working_dir.display(),
    ));
    app.containers.push(id.clone());
    id
}

/// An app with no container yet (the test adds its own), cleaned up like any TestApp.
fn bare_app() -> TestApp {
    crate::common::require_docker();
    let id = unique("t_");
    TestApp {
        volume: format!("{id}_none"),
        id,
        containers: Vec::new(),
        tmp: tempfile::tempdir().unwrap(),
    }
}

const IDLE: &str = "trap \"exit 0\" TERM; sleep 1000000 & wait";

fn exec(container: &str, cmd: &str) -> String {
    sh(&format!("docker exec {container} sh -c '{cmd}'"))
}

/// `./data -> /mnt/disk2/db` and a compose dir that is itself a symlink: Docker follows
/// both, so must the backup (archive the data, not the link) and the restore (write where
/// the container reads). Before the fix both answered 200 with nothing of the data.
#[tokio::test]
async fn symlinked_bind_and_compose_dir_are_backed_up_and_restored_through_the_link() {
    let mut app = bare_app();
    let t = app.tmp.path().to_path_buf();
    fs::create_dir_all(t.join("disk2/wp")).unwrap();
    fs::create_dir_all(t.join("disk3/db")).unwrap();
    fs::create_dir_all(t.join("apps")).unwrap();
    fs::write(t.join("disk2/wp/docker-compose.yml"), "services: {v: 1}\n").unwrap();
    fs::write(t.join("disk3/db/table"), "rows of the snapshot\n").unwrap();
    symlink(t.join("disk2/wp"), t.join("apps/wp")).unwrap(); // the compose dir
    symlink("../../disk3/db", t.join("disk2/wp/data")).unwrap(); // ./data, relative
    let wd = t.join("apps/wp");
    let c = run_container(
        &mut app,
        &wd,
        &format!("-v {}:/data", wd.join("data").display()),
        IDLE,
    );
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let kinds: Vec<_> = snap["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["bind", "project"], "{snap}");
    let listing = sh(&format!("tar -tzf {}", snap["file_path"].as_str().unwrap()));
    assert!(listing.contains("/table"), "the data itself: {listing}");
    assert!(listing.contains("project/docker-compose.yml"), "{listing}");

    exec(&c, "echo changed > /data/table; echo new > /data/extra");
    fs::write(t.join("disk2/wp/docker-compose.yml"), "changed\n").unwrap();
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(exec(&c, "cat /data/table"), "rows of the snapshot");
    assert_eq!(exec(&c, "ls /data"), "table");
    assert_eq!(
        fs::read_to_string(t.join("disk2/wp/docker-compose.yml")).unwrap(),
        "services: {v: 1}\n"
    );
    // The links themselves are still links: only the data behind them was restored.
    assert!(fs::symlink_metadata(&wd).unwrap().file_type().is_symlink());
    assert_eq!(
        fs::read_link(t.join("disk2/wp/data")).unwrap(),
        Path::new("../../disk3/db")
    );
}

/// A `local` volume with `driver_opts` (`type: none, o: bind`) shows its data in `_data`
/// only while a container runs; stopped for the backup, `_data` is empty. It is read from
/// its device instead. One Docker mounts from NFS cannot be read at all: refused.
#[tokio::test]
async fn driver_opts_volumes_are_read_from_their_device_or_refused() {
    let mut app = bare_app();
    let device = app.tmp.path().join("device");
    fs::create_dir_all(&device).unwrap();
    fs::write(device.join("db.sql"), "INSERT 42;\n").unwrap();
    let vol = format!("{}_opts", app.id);
    sh(&format!(
        "docker volume create --label com.docker.compose.project={} \
         --opt type=none --opt o=bind --opt device={} {vol}",
        app.id,
        device.display()
    ));
    let wd = app.tmp.path().join("project");
    fs::create_dir(&wd).unwrap();
    let c = run_container(&mut app, &wd, &format!("-v {vol}:/data"), IDLE);
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let listing = sh(&format!("tar -tzf {}", snap["file_path"].as_str().unwrap()));
    assert!(
        listing.contains(&format!("volumes/{vol}/db.sql")),
        "{listing}"
    );
    exec(&c, "echo lost > /data/db.sql");
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(exec(&c, "cat /data/db.sql"), "INSERT 42;");
    sh(&format!("docker rm -f {c} && docker volume rm {vol}"));

    let mut nfs_app = bare_app();
    let nfs = format!("{}_nfs", nfs_app.id);
    sh(&format!(
        "docker volume create --label com.docker.compose.project={} \
         --opt type=nfs --opt o=addr=127.0.0.1 --opt device=:/export {nfs}",
        nfs_app.id
    ));
    let wd = nfs_app.tmp.path().to_path_buf();
    run_container(&mut nfs_app, &wd, "", IDLE);
    let (status, body) = h
        .call("POST", &format!("/api/v1/backup/{}", nfs_app.id))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["message"], "Application data cannot be read");
    assert!(body["details"].as_str().unwrap().contains(&nfs), "{body}");

    // Allowed per app: the rest is archived, the volume named as a warning, and a
    // restore leaves it alone.
    let id = nfs_app.id.clone();
    let h = Harness::with(|c| {
        c.apps.insert(
            id,
            appsnap::config::AppConfig {
                skip_unreadable_mounts: Some(true),
                ..Default::default()
            },
        );
    })
    .await;
    let snap = h.backup(&nfs_app.id).await;
    let warned = snap["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .is_some_and(|w| w.contains(&nfs) && w.contains("skip_unreadable_mounts"))
    });
    assert!(warned, "{snap}");
    assert!(
        !snap["mounts"].to_string().contains(&nfs),
        "not a mount of the snapshot: {snap}"
    );
    let before = sh(&format!("docker volume inspect {nfs}"));
    let (status, body) = h.call("POST", &restore_uri(&nfs_app.id, &snap)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(sh(&format!("docker volume inspect {nfs}")), before);
    sh(&format!("docker volume rm {nfs}"));
}

/// Compose's `stop_grace_period` is the container's StopTimeout: a service that needs 2 s
/// to shut down gets them even with a 1 s global default, and one that ignores SIGTERM
/// and has to be killed is a warning on the snapshot.
#[tokio::test]
async fn each_container_gets_its_own_stop_timeout_and_a_kill_is_a_warning() {
    let mut app = bare_app();
    let wd = app.tmp.path().to_path_buf();
    let slow = run_container(
        &mut app,
        &wd,
        "--stop-timeout 10",
        "trap \"sleep 2; exit 0\" TERM; sleep 1000000 & wait",
    );
    let stubborn = run_container(
        &mut app,
        &wd,
        "--stop-timeout 1",
        "trap \"\" TERM; sleep 1000000 & wait",
    );
    let h = Harness::with(|c| c.stop_timeout_secs = 1).await;
    let snap = h.backup(&app.id).await;
    let killed: Vec<&str> = snap["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.contains("was killed"))
        .collect();
    assert_eq!(killed.len(), 1, "{snap}");
    assert!(killed[0].contains(&stubborn[..12]), "{killed:?}");
    assert!(!killed[0].contains(&slow[..12]));
    assert!(app.running(&slow) && app.running(&stubborn));
}

/// A stop that outlasts one Docker request's timeout (bollard's is 120 s; 2 s here, so the
/// test takes seconds) is waited for as long as the container's own stop timeout: the
/// backup succeeds and the app runs after it. Before, the backup failed with "Timeout
/// error", "started" the container while Docker was still stopping it (304, already
/// running), removed its journal, and the stop then left the app down for good.
#[tokio::test]
async fn a_stop_longer_than_a_docker_request_is_waited_for_and_the_app_runs_after() {
    let mut app = bare_app();
    let wd = app.tmp.path().to_path_buf();
    let slow = run_container(
        &mut app,
        &wd,
        "--stop-timeout 20",
        "trap \"sleep 5; exit 0\" TERM; sleep 1000000 & wait",
    );
    let root = tempfile::tempdir().unwrap();
    let config = root.path().with_extension("toml");
    fs::write(&config, "docker_timeout_secs = 2\n").unwrap();
    let svc =
        crate::common::Service::start(root.path(), &[("APPSNAP_CONFIG", config.to_str().unwrap())]);
    let resp = reqwest::Client::new()
        .post(svc.url(&format!("/api/v1/backup/{}", app.id)))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(app.running(&slow), "the app runs after the backup");
    let time = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(&sh(&format!(
            "docker inspect -f '{{{{.State.{field}}}}}' {slow}"
        )))
        .unwrap()
    };
    assert!(
        time("StartedAt") > time("FinishedAt"),
        "started again after its stop had finished"
    );
    drop(svc);
    let _ = fs::remove_file(config);
}

/// The `tar` crate reads a clean end of the stream as the end of the archive, so an archive
/// cut exactly between two gzip members, where the cut also falls between two tar entries,
/// used to pass verify and import as a shorter archive.
#[tokio::test]
async fn an_archive_cut_at_a_gzip_member_boundary_is_refused() {
    let app = TestApp::new("");
    let noise: Vec<u8> = (0..3 << 20).map(|_| rand::random::<u8>()).collect();
    fs::write(app.volume_path().join("media.bin"), noise).unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let whole = fs::read(snap["file_path"].as_str().unwrap()).unwrap();
    h.call(
        "DELETE",
        &format!(
            "/api/v1/backup/snapshots/{}",
            snap["snapshot_id"].as_str().unwrap()
        ),
    )
    .await;
    let import = |bytes: Vec<u8>| {
        axum::http::Request::post("/api/v1/backup/snapshots/import")
            .body(axum::body::Body::from(bytes))
            .unwrap()
    };

    // appsnap's own members, cut after the first and before the last.
    let mut boundaries = Vec::new();
    let mut at = 0;
    while at < whole.len() {
        at += appsnap::archive::gzip::member_len(&whole[at..]).expect("an appsnap member");
        boundaries.push(at);
    }
    assert!(boundaries.len() >= 3, "{boundaries:?}");
    for cut in [boundaries[0], boundaries[boundaries.len() - 2]] {
        let (status, body) = h.call_with(import(whole[..cut].to_vec())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "cut at {cut}: {body}"
        );
    }
    // The case that used to pass: the same tar stream whose last gzip member held only
    // the end-of-archive marker, and lost it.
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&whole[..]), &mut tar)
        .unwrap();
    assert!(tar.ends_with(&[0; 1024]));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar[..tar.len() - 1024]).unwrap();
    let (status, body) = h.call_with(import(gz.finish().unwrap())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("end-of-archive"),
        "{body}"
    );
    // The whole archive still imports: the check refuses only what is cut.
    let (status, body) = h.call_with(import(whole)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Pins, notes and origins live beside the archive too, so a rebuilt catalog keeps them,
/// also for snapshots made by a version that wrote no sidecar (or one without the origin):
/// the first start of this version writes them from the catalog. And a pin taken after a
/// policy decided (but before it deleted) still protects the snapshot.
#[tokio::test]
async fn pins_survive_reindex_and_hold_against_a_decision_taken_before_them() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let old = h.backup(&app.id).await;
    let new = h.backup(&app.id).await;
    let (old_id, new_id) = (
        old["snapshot_id"].as_str().unwrap(),
        new["snapshot_id"].as_str().unwrap(),
    );
    let req = axum::http::Request::patch(format!("/api/v1/backup/snapshots/{new_id}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            r#"{"pinned": true, "note": "before upgrade"}"#,
        ))
        .unwrap();
    let (status, body) = h.call_with(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The upgrade case: the pinned snapshot was made before sidecars existed (none beside
    // its archive), the other before they held the origin.
    let sidecar = |s: &serde_json::Value| {
        appsnap::catalog::sidecar_path(std::path::Path::new(s["file_path"].as_str().unwrap()))
    };
    fs::remove_file(sidecar(&new)).unwrap();
    fs::write(sidecar(&old), r#"{"pinned": false, "warnings": []}"#).unwrap();
    let h = h.reopen(|_| {}).await; // the upgraded service starts
    fs::remove_file(h.root.path().join("snapshots.json")).unwrap();
    assert_eq!(h.manager.reindex().unwrap(), 2);
    let s = h.manager.get(new_id).unwrap();
    assert!(s.facts.pinned, "the pin survived the rebuild");
    assert_eq!(s.facts.note.as_deref(), Some("before upgrade"));
    assert!(s.facts.tar_bytes.is_some(), "so did what verify checks");
    for id in [old_id, new_id] {
        assert_eq!(
            h.manager.get(id).unwrap().facts.origin,
            appsnap::catalog::Origin::Manual,
            "{id}: an own snapshot stays one"
        );
    }

    // keep-last 1 decides to delete the older one; the user pins it meanwhile.
    let binding = appsnap::policy::Binding {
        policy: "keep-last".into(),
        config: serde_json::json!({"n": 1}),
    };
    let report = h
        .manager
        .retention(&app.id, Some(binding), true)
        .await
        .unwrap();
    assert_eq!(report.deleted[0].snapshot_id, old_id);
    h.manager.patch(old_id, Some(true), None).unwrap();
    assert!(!h.manager.delete_unless_pinned(old_id).unwrap());
    assert!(h.manager.get(old_id).is_ok(), "still listed");
}

/// An import dated in the future would be "the newest" for every policy forever.
#[tokio::test]
async fn a_future_dated_import_is_listed_as_of_its_import() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    // The same archive with its metadata entry dated 2099 and another id.
    let original = fs::read(snap["file_path"].as_str().unwrap()).unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(&original[..]),
        &mut tar,
    )
    .unwrap();
    let mut meta: serde_json::Value = {
        let size = tar::Header::from_byte_slice(&tar[..512]).size().unwrap() as usize;
        serde_json::from_slice(&tar[512..512 + size]).unwrap()
    };
    let old_size = tar::Header::from_byte_slice(&tar[..512]).size().unwrap() as usize;
    meta["created_at"] = "2099-01-01T00:00:00Z".into();
    meta["snapshot_id"] = "snapshot_20990101T000000Z_f00d".into();
    let json = serde_json::to_vec(&meta).unwrap();
    let mut header = tar::Header::from_byte_slice(&tar[..512]).clone();
    header.set_size(json.len() as u64);
    header.set_cksum();
    let mut rebuilt = header.as_bytes().to_vec();
    rebuilt.extend_from_slice(&json);
    rebuilt.resize(rebuilt.len().div_ceil(512) * 512, 0);
    rebuilt.extend_from_slice(&tar[512 + old_size.div_ceil(512) * 512..]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &rebuilt).unwrap();
    let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
        .body(axum::body::Body::from(gz.finish().unwrap()))
        .unwrap();
    let (status, body) = h.call_with(req).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let listed =
        chrono::DateTime::parse_from_rfc3339(body["snapshot"]["created_at"].as_str().unwrap())
            .unwrap();
    assert!(
        listed < chrono::Utc::now() + chrono::Duration::minutes(1),
        "{body}"
    );
    assert!(
        body["snapshot"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("future")
    );
    let fresh = h.backup(&app.id).await;
    let list = h.manager.list(Some(&app.id)).unwrap();
    assert_eq!(
        list[0].snapshot_id,
        fresh["snapshot_id"].as_str().unwrap(),
        "the fresh backup is the newest"
    );
}

/// An unmounted backup disk leaves an empty mount point: appsnap must not take it for a
/// new, empty store on the root filesystem.
#[tokio::test]
async fn a_backup_root_that_lost_its_mark_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("backups");
    let config = test_config(&root);
    let manager = appsnap::manager::BackupManager::open(config.clone())
        .await
        .expect("created on first use");
    assert!(root.join(".appsnap/id").is_file());
    drop(manager);
    // The disk is unmounted: the mount point is an empty folder again.
    fs::remove_dir_all(&root).unwrap();
    fs::create_dir(&root).unwrap();
    let err = appsnap::manager::BackupManager::open(config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("is the backup disk mounted"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "nothing written");
}

/// A rollback that cannot put the data back leaves the containers stopped (never started
/// on half-restored data), keeps its journal, refuses new backups and restores of the app
/// with 409, and is retried until it succeeds.
#[tokio::test]
async fn an_unrepaired_restore_blocks_the_app_and_is_retried() {
    let app = TestApp::new("");
    let data = app.volume_path();
    let (root, journal_path, _) = interrupted_restore(&app, "extracting", "half restored");
    // Nothing can be renamed in the volume's folder: the rollback fails.
    let volume_dir = data.parent().unwrap().to_path_buf();
    let immutable = Immutable::set(&volume_dir);
    let h = Harness::in_root(root, |_| {}).await;
    assert!(journal_path.exists(), "kept for another try");
    assert!(
        !app.running(&app.containers[0]),
        "not started on half-restored data"
    );
    let (status, body) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("not repaired"),
        "{body}"
    );
    drop(immutable);
    let tried = h.manager.repair_pending().await;
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert!(tried[0].1.is_ok(), "{tried:?}");
    assert!(!journal_path.exists());
    assert_eq!(fs::read_to_string(data.join("state")).unwrap(), "old");
    assert!(app.running(&app.containers[0]));
    h.backup(&app.id).await; // unblocked
}

/// A hung pre-backup hook must not hold the app's lock forever.
#[tokio::test]
async fn a_hung_hook_times_out_and_touches_nothing() {
    let app = TestApp::new("--label 'appsnap.pre-backup=sleep 600'");
    let app_id = app.id.clone();
    let h = Harness::with(|c| {
        c.apps.insert(
            app_id,
            appsnap::config::AppConfig {
                hook_timeout_secs: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    let before = app.started_at(&app.containers[0]);
    let (status, body) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Backup hook failed");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1 s"),
        "{body}"
    );
    assert_eq!(app.started_at(&app.containers[0]), before, "never stopped");
    // The lock was released: the next attempt runs (and times out) instead of a 409.
    let (status, _) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

/// A container that its restart policy brings back after the restore is reported as
/// restarted, not by the exit code of its new run.
#[tokio::test]
async fn a_container_restarted_by_its_policy_is_reported_as_such() {
    let app = TestApp::new_running("--restart always", "[ -e /data/broken ] && exit 3;");
    let h = Harness::live(&app.id).await;
    fs::write(app.volume_path().join("broken"), "a bad state").unwrap();
    let snap = h.backup(&app.id).await;
    fs::remove_file(app.volume_path().join("broken")).unwrap();
    let before = manifest(&app.volume_path(), true);
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Restore failed, rolled back");
    assert!(
        body["details"].as_str().unwrap().contains("restart policy"),
        "{body}"
    );
    assert_eq!(manifest(&app.volume_path(), true), before);
}

/// A restore reads an archive's structure once per snapshot: the backup records what it
/// wrote as checked, bound to the file's sha256, and a restore then only hashes the file.
/// The record must say what a full verify would find, for every kind of file (sparse,
/// hard-linked, empty…): otherwise the space check before a restore would be wrong.
#[tokio::test]
async fn the_structure_is_checked_once_and_the_backup_counts_what_verify_counts() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    fill_every_kind(&app.bind());
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let written = h.manager.get(&id).unwrap();
    let checked = written
        .facts
        .checked
        .clone()
        .expect("a backup is checked as written");
    assert_eq!(checked.sha256, written.sha256);
    assert!(checked.stored.iter().any(|&b| b > 300_000), "{checked:?}");

    // As an older appsnap left it: no record of a check.
    let sidecar = written.file_path.replace(".tar.gz", ".meta.json");
    let mut side: serde_json::Value = serde_json::from_slice(&fs::read(&sidecar).unwrap()).unwrap();
    side.as_object_mut().unwrap().remove("checked").unwrap();
    fs::write(&sidecar, serde_json::to_vec(&side).unwrap()).unwrap();
    fs::remove_file(h.root.path().join("snapshots.json")).unwrap();
    h.manager.reindex().unwrap();
    assert_eq!(h.manager.get(&id).unwrap().facts.checked, None);

    let (status, body) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/verify"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        h.manager.get(&id).unwrap().facts.checked,
        Some(checked),
        "the full read found what the writer recorded"
    );

    // A checked snapshot whose file changed is refused on its checksum alone.
    let path = written.file_path.clone();
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&path, bytes).unwrap();
    let before = manifest(&app.volume_path(), true);
    let (status, body) = h.call("POST", &restore_uri(&app.id, &snap)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{body}"
    );
    assert_eq!(manifest(&app.volume_path(), true), before);
}

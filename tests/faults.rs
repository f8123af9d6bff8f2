//! Real faults: a full disk, an undeletable archive, a corrupt catalog, leftovers of a
//! crash. Each must end in a clear error and a consistent backup root.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use axum::http::StatusCode;

use crate::common::{Harness, SmallFs, TestApp, sh};

/// A full disk in stop mode: found while the app is stopped, which then runs again.
#[tokio::test]
async fn disk_full_is_507_and_leaves_nothing_behind() {
    disk_full(appsnap::config::BackupMode::Stop).await;
}

/// A full disk in pre-copy mode: found by the first pass, before the app is stopped.
#[tokio::test]
async fn disk_full_in_a_precopy_is_found_before_the_app_stops() {
    disk_full(appsnap::config::BackupMode::Precopy).await;
}

async fn disk_full(mode: appsnap::config::BackupMode) {
    let app = TestApp::new("");
    sh(&format!(
        "head -c 8388608 /dev/urandom > {}/media.mp4",
        app.volume_path().display()
    ));
    let mnt = tempfile::tempdir().unwrap();
    let _small = SmallFs::mount(mnt.path(), "2m");
    let root: PathBuf = mnt.path().join("backups");
    let h = Harness::with(|c| {
        c.backup_root = root.clone();
        c.mode = mode;
    })
    .await;
    let before = app.started_at(&app.containers[0]);

    let (status, body) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["message"], "Insufficient storage");
    assert!(
        body["details"].as_str().unwrap().contains("No space left"),
        "{body}"
    );

    let (_, list) = h.call("GET", "/api/v1/backup/snapshots").await;
    assert_eq!(list, serde_json::json!([]), "no partial snapshot listed");
    let leftovers: Vec<_> = fs::read_dir(root.join(&app.id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "temp files removed: {leftovers:?}");
    assert!(app.running(&app.containers[0]), "containers run");
    let restarted = app.started_at(&app.containers[0]) != before;
    match mode {
        appsnap::config::BackupMode::Stop => {
            assert!(restarted, "they had been stopped for the backup")
        }
        _ => assert!(!restarted, "the app was never stopped"),
    }
    drop(h);
}

#[tokio::test]
async fn delete_that_cannot_remove_the_file_is_500_and_keeps_the_entry() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let (id, path) = (
        snap["snapshot_id"].as_str().unwrap(),
        snap["file_path"].as_str().unwrap(),
    );
    sh(&format!("chattr +i {path}"));
    let (status, body) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    sh(&format!("chattr -i {path}"));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Snapshot could not be deleted");
    assert!(body["details"].as_str().unwrap().contains(path), "{body}");
    let (status, _) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still listed, since the file is still there"
    );

    // A file removed behind appsnap's back is dropped from the catalog by a delete.
    fs::remove_file(path).unwrap();
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.manager.list(None).unwrap().len(), 0);
}

#[tokio::test]
async fn catalog_is_rebuilt_from_archives_and_ignores_foreign_files() {
    let app = TestApp::new("");
    let root = tempfile::tempdir().unwrap();
    let config = crate::common::test_config(root.path());
    let manager = appsnap::manager::BackupManager::open(config.clone())
        .await
        .unwrap();
    let started = manager
        .start_backup(&app.id, appsnap::catalog::Origin::Manual, Some("n".into()))
        .await
        .unwrap();
    let snap = started.done.await.unwrap().unwrap();
    drop(manager);

    // Crash leftovers and strangers in the backup root.
    let app_dir = root.path().join(&app.id);
    fs::write(
        app_dir.join(format!(
            ".{}.tar.gz.partial",
            "snapshot_20200101T000000Z_0000"
        )),
        "half",
    )
    .unwrap();
    fs::write(
        app_dir.join("snapshot_20200101T000000Z_dead.tar.gz"),
        "not gzip",
    )
    .unwrap();
    let other_app = root.path().join("other_app");
    fs::create_dir(&other_app).unwrap();
    fs::copy(
        &snap.file_path,
        other_app.join(format!("{}.tar.gz", snap.snapshot_id)),
    )
    .unwrap();
    fs::write(root.path().join("snapshots.json"), "{ corrupt").unwrap();

    let manager = appsnap::manager::BackupManager::open(config).await.unwrap();
    let list = manager.list(None).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let rebuilt = &list[0];
    assert_eq!(rebuilt.snapshot_id, snap.snapshot_id);
    assert_eq!(rebuilt.sha256, snap.sha256);
    assert_eq!(rebuilt.size_bytes, snap.size_bytes);
    assert_eq!(rebuilt.mounts, snap.mounts);
    assert_eq!(rebuilt.facts.note.as_deref(), Some("n"));
    assert!(
        root.path().join("snapshots.json.corrupt").exists(),
        "the corrupt file is kept aside"
    );
    assert!(
        !app_dir
            .join(".snapshot_20200101T000000Z_0000.tar.gz.partial")
            .exists()
    );
    // Reindex on demand gives the same answer.
    assert_eq!(manager.reindex().unwrap(), 1);
}

#[tokio::test]
async fn second_process_on_the_same_root_is_refused() {
    let h = Harness::new().await;
    let out = Command::new(env!("CARGO_BIN_EXE_appsnap"))
        .args(["list"])
        .env("APPSNAP_BACKUP_ROOT", h.root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another appsnap process"), "{err}");
}

//! The real binary over a real socket: auth, docs, the CLI verbs, and a kill -9 in the
//! middle of a backup.

use std::process::Command;

use crate::common::{Service, TestApp, sh};

fn appsnap(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_appsnap"))
        .args(args)
        .env("APPSNAP_BACKUP_ROOT", root)
        .env_remove("APPSNAP_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn api_key_is_required_when_set_and_health_and_docs_stay_open() {
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[("APPSNAP_API_KEY", "s3cret")]);
    let http = reqwest::Client::new();
    let url = svc.url("/api/v1/backup/snapshots");

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Unauthorized");
    assert!(body["details"].as_str().unwrap().contains("missing"));
    let r = http
        .get(&url)
        .header("x-api-key", "s3creT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&url)
        .header("x-api-key", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.post(svc.url("/api/v1/backup/x")).send().await.unwrap();
    assert_eq!(r.status(), 401, "auth comes before anything else");

    let r = http.get(svc.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let spec: serde_json::Value = http
        .get(svc.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/api/v1/backup/{app_id}",
        "/api/v1/backup/snapshots",
        "/api/v1/backup/snapshots/{snapshot_id}",
        "/api/v1/jobs/{job_id}/events",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI spec"
        );
    }
    let docs = http.get(svc.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "a docs page");
    assert!(
        !html.contains("https://"),
        "served from the binary, nothing from a CDN"
    );
    let r = http.get(svc.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].is_string() && body["details"].is_string());
}

#[test]
fn refuses_to_listen_beyond_loopback_without_a_key() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_appsnap"))
        .args(["serve"])
        .env("APPSNAP_BACKUP_ROOT", root.path())
        .env("APPSNAP_LISTEN", "0.0.0.0:0")
        .env_remove("APPSNAP_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an API key"));
}

#[tokio::test]
async fn cli_backup_list_delete_reindex() {
    let app = TestApp::new("");
    let root = tempfile::tempdir().unwrap();
    let out = appsnap(root.path(), &["backup", &app.id, "--note", "from cli"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = snap["snapshot_id"].as_str().unwrap();

    let out = appsnap(root.path(), &["list", "--json", "--app", &app.id]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["snapshot_id"], id);

    std::fs::remove_file(root.path().join("snapshots.json")).unwrap();
    let out = appsnap(root.path(), &["reindex"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 snapshots indexed"
    );

    let out = appsnap(root.path(), &["delete", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = appsnap(root.path(), &["delete", id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot"));
    let out = appsnap(root.path(), &["backup", "no_such_app_cli"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no container belongs"));
}

/// kill -9 while the archive is being written: after a restart nothing partial is listed
/// or left on disk, and the containers the backup had stopped run again.
#[tokio::test]
async fn killed_mid_backup_recovers_at_next_start() {
    let app = TestApp::new("");
    // ~130 MB of base64: deflated (not stored), so the archive takes a few seconds.
    sh(&format!(
        "head -c 100000000 /dev/urandom | base64 -w 76 > {}/dump.sql",
        app.volume_path().display()
    ));
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let http = reqwest::Client::new();
    let job: serde_json::Value = svc
        .post(&format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    let job_id = job["job_id"].as_str().unwrap();

    // Follow the SSE stream until the archive has really started.
    crate::common::follow_until(&svc, job_id, |j| {
        j["step"] == "archiving" && j["bytes_done"].as_u64() > Some(0)
    })
    .await;
    assert!(!app.running(&app.containers[0]), "stopped for the backup");
    svc.kill();
    let app_dir = root.path().join(&app.id);
    let partials = std::fs::read_dir(&app_dir).unwrap().count();
    assert_eq!(partials, 1, "the killed backup left its partial archive");

    let svc = Service::start(root.path(), &[]);
    assert!(
        svc.log_contains("a backup was interrupted"),
        "{:?}",
        svc.log.lock().unwrap()
    );
    assert!(
        app.running(&app.containers[0]),
        "started again by the recovery"
    );
    assert_eq!(
        std::fs::read_dir(&app_dir).unwrap().count(),
        0,
        "partial archive removed"
    );
    let list: serde_json::Value = http
        .get(svc.url("/api/v1/backup/snapshots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
}

/// kill -9 in the middle of extracting a restore: the next start puts the data from
/// before the restore back and starts the app.
#[tokio::test]
async fn killed_mid_restore_is_rolled_back_at_next_start() {
    let app = TestApp::new("");
    let vol = app.volume_path();
    sh(&format!(
        "head -c 200000000 /dev/urandom | base64 -w 76 > {}/dump.sql",
        vol.display()
    ));
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let snap: serde_json::Value = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    let snapshot_id = snap["snapshot_id"].as_str().unwrap();
    std::fs::write(vol.join("dump.sql"), "the newer, smaller data").unwrap();
    std::fs::write(vol.join("added"), "after the snapshot").unwrap();
    let before = crate::common::manifest(&vol, true);

    let job: serde_json::Value = svc
        .post(&format!(
            "/api/v1/backup/restore/{}/{snapshot_id}?wait=false",
            app.id
        ))
        .await;
    assert_eq!(job["kind"], "restore", "{job}");
    crate::common::follow_until(&svc, job["job_id"].as_str().unwrap(), |j| {
        j["step"] == "extracting"
    })
    .await;
    svc.kill();
    assert!(
        !app.running(&app.containers[0]),
        "the app was stopped for the restore"
    );

    let svc = Service::start(root.path(), &[]);
    assert!(
        svc.log_contains("a restore was interrupted: rolling back"),
        "{:?}",
        svc.log.lock().unwrap()
    );
    assert_eq!(
        crate::common::manifest(&vol, true),
        before,
        "the data from before the restore"
    );
    assert!(app.running(&app.containers[0]));
    let names: Vec<_> = std::fs::read_dir(vol.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["_data"], "nothing left aside");
}

/// The key can live in a file (`ps` shows command lines, not files), and a panel on the
/// same host can talk over a Unix socket whose permissions are the access control.
#[tokio::test]
async fn key_from_a_file_and_a_unix_socket() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let key = root.path().with_extension("key");
    std::fs::write(&key, "from-a-file\n").unwrap();
    let svc = Service::start(
        root.path(),
        &[("APPSNAP_API_KEY_FILE", key.to_str().unwrap())],
    );
    let client = reqwest::Client::new();
    let without = client
        .get(svc.url("/api/v1/backup/snapshots"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let with = client
        .get(svc.url("/api/v1/backup/snapshots"))
        .header("x-api-key", "from-a-file")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    drop(svc);

    let socket = root.path().with_extension("sock");
    let svc = Service::start(
        root.path(),
        &[("APPSNAP_LISTEN_UNIX", socket.to_str().unwrap())],
    );
    assert_eq!(svc.addr, format!("unix:{}", socket.display()));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    conn.write_all(b"GET /api/v1/backup/snapshots HTTP/1.0\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("[]"), "{answer}");
}

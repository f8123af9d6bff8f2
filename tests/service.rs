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
async fn cli_backup_list_files_delete_reindex() {
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

    // `files`: the mounts, then a folder like `ls -l`.
    let out = appsnap(root.path(), &["files", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("volumes/{}  (mounted at /data)", app.volume)),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(app.volume_path().join("seen.txt"), "x").unwrap();
    let folder = format!("volumes/{}", app.volume);
    let out = appsnap(root.path(), &["files", id, &folder]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("seen.txt"),
        "lists the snapshot, not the live volume"
    );
    let out = appsnap(root.path(), &["cat", id, &format!("{folder}/seen.txt")]);
    assert!(!out.status.success(), "not in the snapshot");
    let out = appsnap(root.path(), &["files", id, "../etc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid path"));

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
    // Stop mode: the whole archive is written with the app stopped. (A pre-copy's kill
    // points are walked by `rollback_and_crash`.)
    let config = root.path().with_extension("toml");
    std::fs::write(&config, "mode = \"stop\"\n").unwrap();
    let config = [("APPSNAP_CONFIG", config.to_str().unwrap())];
    let svc = Service::start(root.path(), &config);
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

/// kill -9 in the middle of extracting a restore: the extraction goes into a staging
/// folder while the app runs, so the app was never stopped; the next start removes the
/// staging folder, and the data from before the restore is there, untouched.
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
        j["step"]
            .as_str()
            .is_some_and(|s| s.starts_with("extracting into staging folders"))
    })
    .await;
    svc.kill();
    assert!(
        app.running(&app.containers[0]),
        "the app keeps running while the restore extracts"
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
    assert_eq!(names, ["_data"], "nothing left aside or staged");
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

/// Containers a backup stopped and could not start again keep their journal: the app is
/// marked as needing repair (409 for new backups), and the next start of appsnap (or its
/// periodic repair) starts them. The refused start is injected (`backup.restart`): a real
/// one needs a broken Docker engine.
#[tokio::test]
async fn a_backup_that_cannot_restart_the_app_keeps_its_journal_until_repaired() {
    crate::common::require_failpoints();
    let app = TestApp::new("");
    let root = tempfile::tempdir().unwrap();
    let config = root.path().with_extension("toml");
    // No periodic repair during the test: the first tick runs at start, the next in an hour.
    std::fs::write(&config, "scheduler_tick_secs = 3600\n").unwrap();
    let env = [
        ("APPSNAP_CONFIG", config.to_str().unwrap()),
        ("APPSNAP_FAIL_AT", "backup.restart"),
    ];
    let svc = Service::start(root.path(), &env);
    let snap = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    let warnings = snap["snapshot"]["warnings"].to_string();
    assert!(warnings.contains("fault injected"), "{snap}");
    assert!(
        !app.running(&app.containers[0]),
        "the injected fault left it stopped"
    );
    let journal = root
        .path()
        .join(format!(".appsnap/{}.backup.journal", app.id));
    assert!(journal.exists(), "kept until the app runs again");
    let again = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    assert!(
        again["details"]
            .as_str()
            .unwrap_or_default()
            .contains("not repaired"),
        "{again}"
    );
    svc.kill();
    let _svc = Service::start(root.path(), &[("APPSNAP_CONFIG", config.to_str().unwrap())]);
    assert!(app.running(&app.containers[0]), "repaired at start-up");
    assert!(!journal.exists());
}

/// Ctrl-C in the middle of `appsnap restore` must not leave the app down: the CLI finishes
/// the restore first (the signal lands once the restore's journal exists).
#[test]
fn ctrl_c_during_a_cli_restore_finishes_it_first() {
    use std::io::{BufRead, BufReader};
    crate::common::require_failpoints();
    let app = TestApp::new("");
    std::fs::write(app.volume_path().join("state"), "snapshot").unwrap();
    let root = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appsnap"));
        cmd.args(args)
            .env("APPSNAP_BACKUP_ROOT", root.path())
            .env("APPSNAP_LOG", "warn")
            .env_remove("APPSNAP_CONFIG");
        cmd
    };
    let out = cli(&["backup", &app.id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    std::fs::write(app.volume_path().join("state"), "changed").unwrap();

    let mut child = cli(&["restore", &app.id, &id])
        .env("APPSNAP_FAILPOINT_TRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let journaled = line.contains("appsnap failpoint: restore.journaled");
        log.push(line);
        if journaled {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    log.extend(lines.map_while(Result::ok));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{log:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored"),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("signal received")), "{log:?}");
    assert_eq!(
        std::fs::read_to_string(app.volume_path().join("state")).unwrap(),
        "snapshot"
    );
    assert!(app.running(&app.containers[0]));
}

/// SIGTERM in the middle of a long backup: the service stops the archive at its next
/// chunk, starts the app's containers again, keeps no partial archive, and exits within
/// seconds instead of after the whole backup.
#[tokio::test]
async fn sigterm_during_a_long_backup_stops_within_seconds_and_the_app_runs() {
    let app = TestApp::new("");
    // Text that compresses slowly at level 12: the archive would take far longer than
    // the bound below.
    sh(&format!(
        "yes 'INSERT INTO t VALUES (1234, \"some row text\", 5678.9);' | head -c 800M > {}/dump.sql",
        app.volume_path().display()
    ));
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[("APPSNAP_COMPRESSION_LEVEL", "12")]);
    let job = svc
        .post(&format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    let job_id = job["job_id"].as_str().unwrap().to_string();
    // The first pass of a pre-copy, the app still running.
    crate::common::follow_until(&svc, &job_id, |j| {
        j["step"]
            .as_str()
            .is_some_and(|s| s.starts_with("archiving while the app runs"))
            && j["bytes_done"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let asked = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(svc.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (status, log) = svc.wait_exit();
    let took = asked.elapsed();
    assert!(status.success(), "{log:?}");
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    assert!(app.running(&app.containers[0]), "the app runs again");
    let svc = Service::start(root.path(), &[]);
    let list: serde_json::Value = svc.get("/api/v1/backup/snapshots").await;
    assert_eq!(list, serde_json::json!([]), "nothing half-done was kept");
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join(&app.id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

//! Issue 9: an archive, an upload or a request cannot reach outside the app. An imported
//! archive's metadata names host folders, another app's compose dir and volume, and a
//! folder in the backup root; the restore writes none of them. Browsers cannot drive the
//! keyless API from another site. An upload cut off mid-way leaves nothing behind.

use std::fs;
use std::io::Write;

use axum::http::StatusCode;
use tar::EntryType;

use crate::common::{Harness, Service, TestApp, manifest};
use crate::malicious::archive_with;

/// Every file under `dir` with its attributes: compared before and after.
fn snapshot_of(
    dirs: &[&std::path::Path],
) -> Vec<std::collections::BTreeMap<Vec<u8>, crate::common::Entry>> {
    dirs.iter().map(|d| manifest(d, true)).collect()
}

#[tokio::test]
async fn archive_metadata_never_picks_a_host_path() {
    let victim = TestApp::new("");
    let other = TestApp::new("");
    fs::write(other.volume_path().join("their.db"), "other app's data").unwrap();
    let h = Harness::new().await;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), "host file").unwrap();
    let in_root = h.root.path().join("canary");
    fs::create_dir(&in_root).unwrap();
    fs::write(in_root.join("keep"), "next to the backups").unwrap();
    let watched = [
        outside.path(),
        &other.project(),
        &other.volume_path(),
        &in_root,
    ];
    let before = snapshot_of(&watched);

    // Consistent metadata (it passes import) whose mounts name places that are not the
    // victim's: a host folder, another app's compose dir and volume, the backup root.
    let bind = |p: &std::path::Path| {
        let name = p.to_str().unwrap().to_string();
        let dir = format!("binds/{}", appsnap::model::escape_path(&name));
        (name, dir)
    };
    let (b1, d1) = bind(outside.path());
    let (b2, d2) = bind(&other.project());
    let (b3, d3) = bind(&in_root);
    let (v4, d4) = (other.volume.clone(), format!("volumes/{}", other.volume));
    let meta = serde_json::json!({
        "format": 1, "appsnap_version": "0.1.0",
        "snapshot_id": "snapshot_20260101T000000Z_beef", "app_id": victim.id,
        "created_at": "2026-01-01T00:00:00Z", "origin": "manual",
        "mounts": [
            {"type": "bind", "name": b1, "source": b1, "destination": "/x1", "archive_dir": d1},
            {"type": "bind", "name": b2, "source": b2, "destination": "/x2", "archive_dir": d2},
            {"type": "bind", "name": b3, "source": b3, "destination": "/x3", "archive_dir": d3},
            {"type": "volume", "name": v4, "source": "/x", "destination": "/x4", "archive_dir": d4},
        ],
    })
    .to_string();
    let entries: Vec<(String, EntryType)> = [&d1, &d2, &d3, &d4]
        .iter()
        .flat_map(|d| {
            [
                (format!("{d}/"), EntryType::Directory),
                (format!("{d}/pwned"), EntryType::Regular),
            ]
        })
        .collect();
    let crafted: Vec<crate::malicious::Crafted> = entries
        .iter()
        .map(|(name, kind)| {
            let data: &[u8] = if *kind == EntryType::Directory {
                b""
            } else {
                b"pwned"
            };
            (name.as_bytes(), *kind, &b""[..], data)
        })
        .collect();
    let bytes = archive_with(&meta, &crafted);
    let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
        .body(axum::body::Body::from(bytes))
        .unwrap();
    let (status, body) = h.call_with(req).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = h
        .call(
            "POST",
            &format!(
                "/api/v1/backup/restore/{}/snapshot_20260101T000000Z_beef",
                victim.id
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let skipped = body["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 4, "{body}");
    assert!(
        skipped
            .iter()
            .any(|s| s.as_str().unwrap().contains("belongs to app")),
        "{body}"
    );
    assert_eq!(
        snapshot_of(&watched),
        before,
        "nothing outside the app changed"
    );
    assert!(victim.running(&victim.containers[0]));
}

/// Metadata that contradicts itself (an archive folder that is not its mount's) is
/// refused at import: nothing would be written anyway, but it is not a snapshot we made.
#[tokio::test]
async fn inconsistent_metadata_is_refused_at_import() {
    let h = Harness::new().await;
    for (what, mount) in [
        (
            "folder of another mount",
            r#"{"type":"volume","name":"v","source":"/x","destination":"","archive_dir":"binds/etc"}"#,
        ),
        (
            "volume name with a slash",
            r#"{"type":"volume","name":"../../etc","source":"/x","destination":"","archive_dir":"volumes/../../etc"}"#,
        ),
        (
            "unknown kind",
            r#"{"type":"host","name":"/","source":"/","destination":"","archive_dir":"host"}"#,
        ),
    ] {
        let meta = format!(
            r#"{{"format":1,"appsnap_version":"0.1.0","snapshot_id":"snapshot_20260101T000000Z_0bad",
            "app_id":"victim","created_at":"2026-01-01T00:00:00Z","origin":"manual","mounts":[{mount}]}}"#
        );
        let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
            .body(axum::body::Body::from(archive_with(&meta, &[])))
            .unwrap();
        let (status, body) = h.call_with(req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
    }
    assert_eq!(h.files(), Vec::<String>::new());
}

/// Without a key the API listens on loopback only — and a web page in the user's browser
/// is on loopback too. Its simple requests are refused.
#[tokio::test]
async fn cross_site_requests_from_a_browser_are_refused() {
    let h = Harness::new().await;
    let post = |headers: &[(&str, &str)]| {
        let mut req = axum::http::Request::post("/api/v1/backup/no_such_app")
            .header("host", "127.0.0.1:8080");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(axum::body::Body::empty()).unwrap()
    };
    for (what, headers, status) in [
        (
            "foreign origin",
            vec![("origin", "http://evil.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            "another port",
            vec![("origin", "http://127.0.0.1:3000")],
            StatusCode::FORBIDDEN,
        ),
        (
            "fetch metadata",
            vec![("sec-fetch-site", "cross-site")],
            StatusCode::FORBIDDEN,
        ),
        (
            "a form's type",
            vec![("content-type", "text/plain")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // The service's own page and curl pass (and meet the 404 of the unknown app).
        (
            "same origin",
            vec![("origin", "http://127.0.0.1:8080")],
            StatusCode::NOT_FOUND,
        ),
        ("no browser headers", vec![], StatusCode::NOT_FOUND),
    ] {
        let (got, body) = h.call_with(post(&headers)).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: JSON error body");
    }
}

/// A client that goes away mid-upload leaves no temporary file.
#[tokio::test]
async fn an_upload_cut_off_mid_way_leaves_no_file() {
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let state = root.path().join(".appsnap");
    let imports = || {
        fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("import-"))
            .count()
    };
    let mut conn = std::net::TcpStream::connect(&svc.addr).unwrap();
    write!(
        conn,
        "POST /api/v1/backup/snapshots/import HTTP/1.1\r\nhost: {}\r\n\
         content-type: application/gzip\r\ncontent-length: 100000000\r\n\r\n",
        svc.addr
    )
    .unwrap();
    let chunk = vec![0x1f_u8; 1 << 20];
    // Until the upload has visibly begun on the server's side.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while imports() == 0 {
        conn.write_all(&chunk).unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
    }
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while imports() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the temporary file stayed after the client left"
        );
        // A poll with a deadline: the server notices the disconnect on its own time.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

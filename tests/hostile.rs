//! Hostile input cannot reach outside the app, nor exhaust the server. An imported
//! archive's metadata names host folders, another app's compose dir and volume, and a
//! folder in the backup root; the restore writes none of them. Archives built to attack
//! the extractor (`..`, absolute paths, symlink-then-file, hard links out of the mount,
//! devices, entries outside every mount) are refused by import and verify, and the
//! extractor, driven directly, writes nothing outside. Archives that claim gigabytes or
//! millions of entries are refused in bounded memory. Browsers cannot drive the keyless
//! API from another site, nor through a rebound DNS name. An upload cut off mid-way
//! leaves nothing behind.

use std::fs;
use std::io::Write;
use std::path::Path;

use appsnap::archive::extract::{Options, Target, extract};
use appsnap::archive::walk::TarSink;
use axum::http::StatusCode;
use tar::EntryType;

use crate::common::craft::{Crafted, archive_with, gz_of, header, peak_rss};
use crate::common::{Harness, Service, TestApp, manifest, sh};

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
    let crafted: Vec<Crafted> = entries
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

/// DNS rebinding: a page on `evil.example`, whose name then resolves to 127.0.0.1, talks
/// to the keyless service as its own origin (`Origin` equals `Host`, the browser says
/// same-origin), GETs and DELETEs alike. Without a key only loopback names are answered;
/// with one the name does not matter (the page cannot send the key).
#[tokio::test]
async fn without_a_key_only_loopback_host_names_are_answered() {
    let app = TestApp::new("");
    fs::write(app.volume_path().join("secret"), "s3cret").unwrap();
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let snapshot = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    let id = snapshot["snapshot_id"].as_str().unwrap().to_string();
    let port = svc.addr.rsplit_once(':').unwrap().1.to_string();
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, host: &str| {
        client
            .request(method, svc.url(path))
            .header("host", host)
            .header("origin", format!("http://{host}"))
            .header("sec-fetch-site", "same-origin")
            .send()
    };
    let evil = format!("evil.example:{port}");
    let snapshot_path = format!("/api/v1/backup/snapshots/{id}");
    for (method, path) in [
        (reqwest::Method::GET, format!("{snapshot_path}/download")),
        (reqwest::Method::GET, "/api/v1/backup/snapshots".to_string()),
        (reqwest::Method::DELETE, snapshot_path.clone()),
        (
            reqwest::Method::POST,
            format!("/api/v1/backup/restore/{}/{id}", app.id),
        ),
    ] {
        let resp = send(method.clone(), &path, &evil).await.unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["details"].as_str().unwrap().contains("DNS rebinding"),
            "{body}"
        );
    }
    assert!(
        std::path::Path::new(snapshot["snapshot"]["file_path"].as_str().unwrap()).exists(),
        "the snapshot was not deleted"
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let resp = send(reqwest::Method::GET, &snapshot_path, &host)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
    drop(svc);

    let keyed = Service::start(root.path(), &[("APPSNAP_API_KEY", "k3y")]);
    let port = keyed.addr.rsplit_once(':').unwrap().1;
    let resp = client
        .get(keyed.url(&snapshot_path))
        .header("host", format!("backup.lan:{port}"))
        .header("x-api-key", "k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "with a key, any name");
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

/// A verify whose client goes away stops, and its job says so instead of staying
/// "running" (before, no line after the dropped `.await` ever recorded its end): 1 GiB of
/// zeros takes seconds to read back, the client leaves as soon as the reading shows
/// progress, and the job ends failed as abandoned, its reading stopped where it was.
#[tokio::test]
async fn a_verify_whose_client_left_stops_and_says_so() {
    let app = TestApp::new("");
    sh(&format!(
        "head -c 1G /dev/zero > {}/zeros",
        app.volume_path().display()
    ));
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let snap = svc.post(&format!("/api/v1/backup/{}", app.id)).await;
    let id = snap["snapshot_id"]
        .as_str()
        .expect("a snapshot")
        .to_string();
    fs::remove_file(app.volume_path().join("zeros")).unwrap();

    let url = svc.url(&format!("/api/v1/backup/snapshots/{id}/verify"));
    let request = tokio::spawn(async move { reqwest::Client::new().post(url).send().await });
    let job_id = loop {
        let jobs = svc.get("/api/v1/jobs").await;
        if let Some(job) = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "verify")
        {
            break job["job_id"].as_str().unwrap().to_string();
        }
    };
    crate::common::follow_until(&svc, &job_id, |j| j["bytes_done"].as_u64() > Some(0)).await;
    request.abort();
    let _ = request.await;
    let ended = crate::common::follow_until(&svc, &job_id, |j| j["state"] != "running");
    let job = tokio::time::timeout(std::time::Duration::from_secs(60), ended)
        .await
        .expect("the job still runs a minute after its client left");
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["message"], "Request abandoned", "{job}");
    // Its reading stopped too: a second verify of the same archive, started after it, runs
    // to the end, and by then the first has not read further than where it was left.
    let second = svc
        .post(&format!("/api/v1/backup/snapshots/{id}/verify"))
        .await;
    let total = second["tar_bytes"].as_u64().expect("verified");
    let first = svc.get(&format!("/api/v1/jobs/{job_id}")).await;
    let read = first["bytes_done"].as_u64().unwrap();
    assert!(
        read < total / 2,
        "the abandoned verify read {read} of {total} bytes"
    );
}

/// A service in `root`, and its peak memory once it has refused one (small) import, so
/// that the idle peak includes a working import.
async fn importing_service(root: &std::path::Path) -> (Service, u64) {
    let svc = Service::start(root, &[]);
    import(&svc, b"not gzip".to_vec()).await.unwrap();
    let idle = peak_rss(svc.child.id());
    (svc, idle)
}

async fn import(svc: &Service, bytes: Vec<u8>) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(svc.url("/api/v1/backup/snapshots/import"))
        .header("content-type", "application/gzip")
        .body(bytes)
        .send()
        .await
}

/// The metadata entry of the `malicious` archives, as raw tar bytes.
fn meta_entry(out: &mut dyn Write) {
    let meta = br#"{"format":1,"appsnap_version":"0.1.0","snapshot_id":"snapshot_20260101T000000Z_b0b0",
"app_id":"victim","created_at":"2026-01-01T00:00:00Z","origin":"manual",
"mounts":[{"type":"volume","name":"v","source":"/x","destination":"/data","archive_dir":"volumes/v"}]}"#;
    out.write_all(header(b"appsnap.json", EntryType::Regular, meta.len() as u64).as_bytes())
        .unwrap();
    out.write_all(meta).unwrap();
    out.write_all(&vec![0; (512 - meta.len() % 512) % 512])
        .unwrap();
}

/// 1 GiB of one byte, written in 1 MiB pieces.
fn gib(out: &mut dyn Write, byte: u8) {
    let piece = vec![byte; 1 << 20];
    for _ in 0..1024 {
        out.write_all(&piece).unwrap();
    }
}

/// Archives of a few MB that claim gigabytes — a 1 GiB GNU long name, a 1 GiB PAX record,
/// a 1 PiB sparse file, 64 MiB gzip members — are refused with 422 and the limit they hit,
/// at once, and the service's peak memory stays within 64 MB of its idle peak.
#[tokio::test]
async fn archives_that_claim_gigabytes_are_refused_in_bounded_memory() {
    let long_name = gz_of(&mut |out| {
        meta_entry(out);
        out.write_all(header(b"././@LongLink", EntryType::GNULongName, 1 << 30).as_bytes())
            .unwrap();
        gib(out, b'a');
    });
    let name_first = gz_of(&mut |out| {
        out.write_all(header(b"././@LongLink", EntryType::GNULongName, 1 << 30).as_bytes())
            .unwrap();
        gib(out, b'a');
    });
    let pax = gz_of(&mut |out| {
        meta_entry(out);
        out.write_all(header(b"././@PaxHeader", EntryType::XHeader, 1 << 30).as_bytes())
            .unwrap();
        gib(out, b'a');
    });
    let sparse = gz_of(&mut |out| {
        meta_entry(out);
        let mut h = header(b"volumes/v/huge", EntryType::GNUSparse, 512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(1 << 50);
        gnu.sparse[0].set_offset((1 << 50) - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        out.write_all(h.as_bytes()).unwrap();
        out.write_all(&[7; 512]).unwrap();
        out.write_all(&[0; 1024]).unwrap();
    });
    // appsnap's own gzip format, with members 64 times the size it ever writes.
    let big_members = {
        let (_, out) = {
            let gz = appsnap::archive::gzip::ParallelGzip::new(Vec::new(), 1, 2, 64 << 20);
            let progress = |_| {};
            let mut sink = appsnap::archive::walk::ChunkSink::new(gz, &progress);
            let mut tar = Vec::new();
            meta_entry(&mut tar);
            sink.write(&tar).unwrap();
            sink.write(header(b"volumes/v/zeros", EntryType::Regular, 1 << 30).as_bytes())
                .unwrap();
            sink.zeros(1 << 30).unwrap();
            sink.write(&[0; 1024]).unwrap();
            sink.finish().unwrap()
        };
        out
    };
    let root = tempfile::tempdir().unwrap();
    let (svc, idle) = importing_service(root.path()).await;
    for (what, bytes, limit) in [
        (
            "1 GiB long name",
            long_name,
            "long name of 1073741824 bytes",
        ),
        ("1 GiB PAX record", pax, "PAX record"),
        (
            "1 GiB long name before the metadata",
            name_first,
            "long name of 1073741824 bytes",
        ),
        ("1 PiB sparse file", sparse, "sparse file of"),
        ("64 MiB gzip members", big_members, "appsnap writes at most"),
    ] {
        assert!(bytes.len() < 16 << 20, "{what}: {} bytes", bytes.len());
        let started = std::time::Instant::now();
        let resp = import(&svc, bytes).await.unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status.as_u16(), 422, "{what}: {body}");
        assert!(
            body["details"].as_str().unwrap().contains(limit),
            "{what}: {body}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
        let peak = peak_rss(svc.child.id());
        assert!(
            peak < idle + (64 << 20),
            "{what}: peak RSS {} MB, idle {} MB",
            peak >> 20,
            idle >> 20
        );
    }
    assert_eq!(
        fs::read_dir(root.path().join(".appsnap"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("import-"))
            .count(),
        0
    );
}

/// The one cost that grows with an archive's entries — what the extractor remembers of each
/// path — is bounded: a 1.5-million-entry archive of empty files (a few MB of gzip) is read
/// up to the default `max_archive_entries`, refused with 422 naming the limit, and the
/// service's peak memory stays within 64 MB of its idle peak. (Before, every name was kept
/// whole and nothing bounded their number: this archive was imported.)
#[tokio::test]
async fn millions_of_tiny_entries_are_refused_in_bounded_memory() {
    let limit = 1_500_000u64;
    let bytes = gz_of(&mut |out| {
        meta_entry(out);
        out.write_all(header(b"volumes/v/", EntryType::Directory, 0).as_bytes())
            .unwrap();
        let mut tar = Vec::with_capacity(1 << 20);
        for i in 0..limit {
            // Long-ish names: what would be kept per entry if names were remembered.
            let name = format!("volumes/v/{i:0>12}-a-name-as-long-as-the-ones-apps-make-{i:0>20}");
            tar.extend_from_slice(header(name.as_bytes(), EntryType::Regular, 0).as_bytes());
            if tar.len() >= 1 << 20 {
                out.write_all(&tar).unwrap();
                tar.clear();
            }
        }
        out.write_all(&tar).unwrap();
        out.write_all(&[0; 1024]).unwrap();
    });
    assert!(bytes.len() < 64 << 20, "{} bytes", bytes.len());
    let root = tempfile::tempdir().unwrap();
    let (svc, idle) = importing_service(root.path()).await;
    let resp = import(&svc, bytes).await.unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains(&format!("more than {limit} entries")),
        "{body}"
    );
    let peak = peak_rss(svc.child.id());
    eprintln!(
        "{limit} entries: peak RSS {} MB, idle {} MB",
        peak >> 20,
        idle >> 20
    );
    assert!(
        peak < idle + (64 << 20),
        "peak RSS {} MB, idle {} MB",
        peak >> 20,
        idle >> 20
    );
}

/// Event streams are bounded: with 64 open on a running job, the next is refused with
/// 429, a JSON body and `Retry-After`; once one is closed, a stream opens again.
#[tokio::test]
async fn event_streams_beyond_the_limit_are_told_when_to_retry() {
    // A backup that stays running: its hook waits.
    let app = TestApp::new("--label 'appsnap.pre-backup=sleep 600'");
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path(), &[]);
    let job = svc
        .post(&format!("/api/v1/backup/{}?wait=false", app.id))
        .await;
    let events = svc.url(&format!(
        "/api/v1/jobs/{}/events",
        job["job_id"].as_str().unwrap()
    ));
    let client = reqwest::Client::new();
    let mut open = Vec::new();
    for _ in 0..64 {
        let resp = client.get(&events).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        open.push(resp);
    }
    let refused = client.get(&events).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["message"], "Too many event streams", "{body}");

    // The server notices the closed connection on its next write (a keep-alive at the
    // latest); until then the slot is still taken.
    drop(open.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let resp = client.get(&events).send().await.unwrap();
        if resp.status() == StatusCode::OK {
            break;
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// File capabilities, `trusted.*` and ACLs come back from this server's own snapshots; from
/// an imported one only `user.*` attributes do (unless `restore_privileged_xattrs`).
#[tokio::test]
async fn privileged_xattrs_come_back_only_from_this_servers_snapshots() {
    let app = TestApp::new("");
    let file = app.volume_path().join("tool");
    fs::write(&file, "binary").unwrap();
    xattr::set(&file, "trusted.appsnap", b"privileged").unwrap();
    xattr::set(&file, "user.appsnap", b"plain").unwrap();
    let a = Harness::new().await;
    let snap = a.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let restore = format!("/api/v1/backup/restore/{}/{id}", app.id);
    let names = || {
        let mut n: Vec<String> = xattr::list(&file)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let (status, body) = a.call("POST", &restore).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(), ["trusted.appsnap", "user.appsnap"], "own snapshot");

    let bytes = fs::read(snap["file_path"].as_str().unwrap()).unwrap();
    drop(a);
    let b = Harness::new().await;
    let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
        .body(axum::body::Body::from(bytes))
        .unwrap();
    let (status, body) = b.call_with(req).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = b.call("POST", &restore).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(), ["user.appsnap"], "imported snapshot");

    // Its archive says `"origin": "manual"` (server A made it). A rebuilt catalog — a
    // `reindex`, or a lost snapshots.json and a restart — must not believe that.
    assert_eq!(b.manager.reindex().unwrap(), 1);
    let (status, body) = b.call("POST", &restore).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        names(),
        ["user.appsnap"],
        "imported snapshot, after a reindex"
    );
    let catalog = b.root.path().join("snapshots.json");
    let b = b.reopen(|_| fs::remove_file(&catalog).unwrap()).await;
    assert_eq!(
        b.manager.get(&id).unwrap().facts.origin,
        appsnap::catalog::Origin::Imported
    );
    let (status, body) = b.call("POST", &restore).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        names(),
        ["user.appsnap"],
        "imported snapshot, after a lost catalog"
    );
}

/// A live app swaps a directory of its volume with a symlink to a host folder, over and
/// over (`renameat2` with RENAME_EXCHANGE), while live backups run. The walk goes by
/// descriptors, so no snapshot ever holds the host folder's files.
#[tokio::test]
async fn a_live_swap_of_a_directory_for_a_symlink_never_leaks_host_files() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::new("");
    let h = Harness::live(&app.id).await;
    let host = tempfile::tempdir().unwrap();
    for i in 0..50 {
        fs::write(host.path().join(format!("host-secret-{i}")), "secret").unwrap();
    }
    let vol = app.volume_path();
    fs::create_dir(vol.join("d")).unwrap();
    for i in 0..50 {
        fs::write(vol.join(format!("d/own-{i}")), "app data").unwrap();
    }
    std::os::unix::fs::symlink(host.path(), vol.join("l")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, vol) = (Arc::clone(&stop), vol.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &vol.join("d"),
                    nix::fcntl::AT_FDCWD,
                    &vol.join("l"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut leaked = Vec::new();
    for _ in 0..16 {
        let snap = h.backup(&app.id).await;
        let listing =
            crate::common::sh(&format!("tar -tzf {}", snap["file_path"].as_str().unwrap()));
        if listing.contains("host-secret") {
            leaked.push(snap["snapshot_id"].clone());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the swap raced the backups ({swaps} swaps)");
    assert!(leaked.is_empty(), "host files in {leaked:?}");
}

/// Heavy work is bounded: with one slot, a backup started while a restore runs waits its
/// turn (its job says so) and then runs.
#[tokio::test]
async fn heavy_operations_beyond_the_limit_wait_their_turn() {
    // A never becomes healthy (its first check is an hour away): its restore holds the
    // only slot until restore_timeout_secs, then rolls back.
    let a = TestApp::new("--health-cmd true --health-interval 1h --health-start-period 1h");
    let b = TestApp::new("");
    let h = Harness::with(|c| {
        c.max_parallel = 1;
        c.restore_timeout_secs = 3;
    })
    .await;
    let snap = h.backup(&a.id).await;
    let restore = h
        .manager
        .start_restore(&a.id, snap["snapshot_id"].as_str().unwrap())
        .await
        .unwrap();
    let mut a_job = restore.job.subscribe();
    a_job
        .wait_for(|j| j.step == "waiting for containers to run")
        .await
        .unwrap();
    let backup = h
        .manager
        .start_backup(&b.id, appsnap::catalog::Origin::Manual, None)
        .await
        .unwrap();
    crate::common::until_waiting_for_a_slot(&backup.job).await;
    let restored = restore.done.await.unwrap();
    assert!(restored.is_err(), "A never got healthy: rolled back");
    let snapshot = backup
        .done
        .await
        .unwrap()
        .expect("B's backup ran once the slot was free");
    assert_eq!(snapshot.app_id, b.id);
}

const META: &str = r#"{"format":1,"appsnap_version":"0.1.0","snapshot_id":"snapshot_20260101T000000Z_bad0",
"app_id":"victim","created_at":"2026-01-01T00:00:00Z","origin":"manual",
"mounts":[{"type":"volume","name":"v","source":"/x","destination":"/data","archive_dir":"volumes/v"}]}"#;

/// A gzip'd tar: the metadata entry, then `entries`.
fn archive(entries: &[Crafted]) -> Vec<u8> {
    let mut all: Vec<Crafted> = vec![(b"volumes/v/", EntryType::Directory, b"", b"")];
    all.extend_from_slice(entries);
    archive_with(META, &all)
}

fn attacks(outside: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let o = outside.to_string_lossy().into_owned();
    let abs_file = format!("{o}/abs");
    vec![
        (
            "dot-dot",
            archive(&[(b"volumes/v/../../escape", EntryType::Regular, b"", b"x")]),
        ),
        (
            "absolute",
            archive(&[(abs_file.as_bytes(), EntryType::Regular, b"", b"x")]),
        ),
        (
            "outside every mount",
            archive(&[(b"volumes/other/x", EntryType::Regular, b"", b"x")]),
        ),
        (
            "symlink then file through it",
            archive(&[
                (b"volumes/v/link", EntryType::Symlink, o.as_bytes(), b""),
                (b"volumes/v/link/pwned", EntryType::Regular, b"", b"x"),
            ]),
        ),
        (
            "symlink then file over it",
            archive(&[
                (
                    b"volumes/v/f",
                    EntryType::Symlink,
                    format!("{o}/target").as_bytes(),
                    b"",
                ),
                (b"volumes/v/f", EntryType::Regular, b"", b"x"),
            ]),
        ),
        (
            "hard link to /etc/passwd",
            archive(&[(b"volumes/v/passwd", EntryType::Link, b"/etc/passwd", b"")]),
        ),
        (
            "hard link with ..",
            archive(&[(
                b"volumes/v/p",
                EntryType::Link,
                b"volumes/v/../../../etc/passwd",
                b"",
            )]),
        ),
        (
            "device node",
            archive(&[(b"volumes/v/sda", EntryType::Block, b"", b"")]),
        ),
        (
            "the mount's root itself a symlink to a host folder",
            archive(&[(b"volumes/v", EntryType::Symlink, o.as_bytes(), b"")]),
        ),
        (
            "a NUL byte inside a GNU long name",
            archive(&[
                (
                    b"././@LongLink",
                    EntryType::GNULongName,
                    b"",
                    b"volumes/v/inno\0cent\0",
                ),
                (b"volumes/v/x", EntryType::Regular, b"", b"x"),
            ]),
        ),
    ]
}

#[test]
fn extractor_refuses_and_writes_nothing_outside() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("target"), "original").unwrap();
    for (name, bytes) in attacks(outside.path()) {
        let work = tempfile::tempdir().unwrap();
        let target = work.path().join("v");
        let targets = [Target {
            archive_dir: "volumes/v".into(),
            path: target.clone(),
            reserved: None,
            discard: false,
            file_root: false,
        }];
        let stream = flate2::read::MultiGzDecoder::new(&bytes[..]);
        let err = extract(stream, &targets, &Options::default(), &|_| {}).expect_err(name);
        assert!(err.to_string().contains("unsafe entry"), "{name}: {err}");
        let mut outside_now: Vec<_> = fs::read_dir(outside.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        outside_now.sort();
        assert_eq!(outside_now, ["target"], "{name}: nothing new outside");
        assert_eq!(
            fs::read_to_string(outside.path().join("target")).unwrap(),
            "original",
            "{name}"
        );
        assert!(
            !work.path().join("escape").exists() && !Path::new("/escape").exists(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn import_refuses_each_attack_with_422() {
    let outside = tempfile::tempdir().unwrap();
    let h = Harness::new().await;
    for (name, bytes) in attacks(outside.path()) {
        let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
            .body(axum::body::Body::from(bytes))
            .unwrap();
        let (status, body) = h.call_with(req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert!(
            body["details"].as_str().unwrap().contains("unsafe entry"),
            "{name}: {body}"
        );
    }
    assert_eq!(h.manager.list(None).unwrap().len(), 0);
    assert_eq!(h.files(), Vec::<String>::new(), "nothing kept");
}

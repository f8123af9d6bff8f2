//! Browsing a snapshot: every folder lists what the app's data held (names, types, sizes,
//! modes, owners, times, link targets), page by page; a path in a request never reaches
//! the filesystem; an index that does not describe the archive is never trusted.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use axum::http::StatusCode;

use crate::common::{Harness, TestApp, fill_every_kind};

/// `s` percent-encoded for a query string.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every entry of a folder, through as many pages of `limit` as it takes.
async fn list_all(h: &Harness, id: &str, path: &str, limit: usize) -> Vec<serde_json::Value> {
    let (mut out, mut cursor) = (Vec::new(), String::new());
    loop {
        let uri = format!(
            "/api/v1/backup/snapshots/{id}/files?path={}&limit={limit}{cursor}",
            enc(path)
        );
        let (status, body) = h.call("GET", &uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        out.extend(body["entries"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
}

/// What the listing must show for each entry under `root`: path relative to it (lossy,
/// as the API shows names) → (type, size, mode, uid, gid, mtime, link target).
fn expected(root: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let t = m.file_type();
            let kind = if t.is_dir() {
                todo.push(e.path());
                "dir"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_fifo() {
                "fifo"
            } else if m.nlink() > 1 {
                "file-or-hardlink"
            } else {
                "file"
            };
            use std::os::unix::fs::FileTypeExt;
            let link = t.is_symlink().then(|| {
                fs::read_link(e.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            });
            out.insert(
                String::from_utf8_lossy(&rel).into_owned(),
                serde_json::json!({
                    "type": kind,
                    "size": if t.is_file() { m.len() } else { 0 },
                    "mode": format!("{:04o}", m.mode() & 0o7777),
                    "uid": m.uid(), "gid": m.gid(), "mtime": m.mtime(), "link": link,
                }),
            );
        }
    }
    out
}

#[tokio::test]
async fn every_folder_lists_what_the_apps_data_held() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    let h = Harness::new().await;
    let snapshot = h.backup(&app.id).await;
    let id = snapshot["snapshot_id"].as_str().unwrap();

    // The top level: the mounts, with the path each has in the containers.
    let top = list_all(&h, id, "", 1).await;
    let vol_dir = format!("volumes/{}", app.volume);
    let vol = top.iter().find(|e| e["path"] == vol_dir.as_str()).unwrap();
    assert_eq!(vol["type"], "dir");
    assert_eq!(vol["container_path"], "/data");
    assert_eq!(top.len(), snapshot["mounts"].as_array().unwrap().len());

    // Below: every folder, page by page (3 a page, so cursors are used).
    let want = expected(&app.volume_path());
    let mut got = BTreeMap::new();
    let mut folders = vec![vol_dir.clone()];
    while let Some(folder) = folders.pop() {
        for e in list_all(&h, id, &folder, 3).await {
            let rel = e["path"].as_str().unwrap()[vol_dir.len() + 1..].to_string();
            if e["type"] == "dir" {
                folders.push(e["path"].as_str().unwrap().to_string());
            }
            got.insert(rel, e);
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        let g = &got[path];
        match w["type"].as_str().unwrap() {
            "file-or-hardlink" => assert!(g["type"] == "file" || g["type"] == "hardlink"),
            t => assert_eq!(g["type"], t, "{path}"),
        }
        if g["type"] != "hardlink" {
            assert_eq!(g["size"], w["size"], "{path}");
        }
        for field in ["mode", "uid", "gid"] {
            assert_eq!(g[field], w[field], "{path}: {field}");
        }
        let mtime = chrono::DateTime::parse_from_rfc3339(g["mtime"].as_str().unwrap()).unwrap();
        assert_eq!(mtime.timestamp(), w["mtime"].as_i64().unwrap(), "{path}");
        if w["type"] == "symlink" {
            assert_eq!(g["link"], w["link"], "{path}");
        }
    }
    let sparse = &got["sparse.img"];
    assert_eq!(sparse["size"], 100u64 << 20, "a sparse file's full length");
    assert!(
        got.contains_key("caf\u{fffd}-\u{fffd}.txt"),
        "non-UTF-8 name shown"
    );
}

#[tokio::test]
async fn a_path_that_could_leave_the_snapshot_is_400_and_an_unknown_folder_404() {
    let app = TestApp::new("");
    fs::write(app.volume_path().join("a"), "a").unwrap();
    let h = Harness::new().await;
    let id = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    for bad in ["/etc", "volumes/../..", "volumes/./x", "a%00b", "a//b"] {
        let (status, body) = h
            .call(
                "GET",
                &format!("/api/v1/backup/snapshots/{id}/files?path={bad}"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["message"], "Invalid path");
    }
    let vol = format!("volumes/{}", app.volume);
    for missing in [format!("{vol}/nope"), format!("{vol}/a")] {
        let (status, body) = h
            .call(
                "GET",
                &format!("/api/v1/backup/snapshots/{id}/files?path={missing}"),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}: {body}");
        assert_eq!(body["message"], "Path not found");
    }
    let (status, _) = h
        .call("GET", "/api/v1/backup/snapshots/snapshot_nope/files")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_index_that_does_not_describe_the_archive_is_never_trusted() {
    let app = TestApp::new("");
    fs::write(app.volume_path().join("real"), "real").unwrap();
    let other = TestApp::new("");
    fs::write(
        other.volume_path().join("planted"),
        "not in the first snapshot",
    )
    .unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let (id, archive) = (
        snap["snapshot_id"].as_str().unwrap().to_string(),
        snap["file_path"].as_str().unwrap().to_string(),
    );
    let planted = h.backup(&other.id).await;
    let vol = format!("volumes/{}", app.volume);
    let names = |entries: Vec<serde_json::Value>| -> Vec<String> {
        entries
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(list_all(&h, &id, &vol, 10).await), ["real"]);
    let index = archive.replace(".tar.gz", ".index");
    assert!(Path::new(&index).exists(), "made by the first listing");

    // Another snapshot's index (another sha256), then garbage: both are made again.
    let planted_index = planted["file_path"]
        .as_str()
        .unwrap()
        .replace(".tar.gz", ".index");
    list_all(&h, planted["snapshot_id"].as_str().unwrap(), "", 10).await;
    let other_vol = format!("volumes/{}", other.volume);
    list_all(&h, planted["snapshot_id"].as_str().unwrap(), &other_vol, 10).await;
    for lie in [fs::read(&planted_index).unwrap(), b"garbage".to_vec()] {
        fs::write(&index, lie).unwrap();
        let (status, body) = h
            .call(
                "GET",
                &format!("/api/v1/backup/snapshots/{id}/files?path={vol}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(names(list_all(&h, &id, &vol, 10).await), ["real"]);
    }

    // The index goes with its snapshot.
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!Path::new(&index).exists());
}

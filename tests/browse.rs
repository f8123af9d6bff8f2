//! Browsing a snapshot: every folder lists what the app's data held (names, types, sizes,
//! modes, owners, times, link targets), page by page; a path in a request never reaches
//! the filesystem; an index that does not describe the archive is never trusted.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use axum::http::StatusCode;

use appsnap::archive::index::{self, Index};
use appsnap::config::BackupMode;

use crate::common::{Entry, Harness, TestApp, fill_every_kind, manifest, set_mode, sh};

/// `s` percent-encoded for a query string.
pub(crate) fn enc(s: &str) -> String {
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
    // What the volume holds, lossy as the API shows names.
    let want: BTreeMap<String, Entry> = manifest(&app.volume_path(), true)
        .into_iter()
        .filter(|(path, _)| !path.is_empty()) // the mount itself: listed at the top
        .map(|(path, e)| (String::from_utf8_lossy(&path).into_owned(), e))
        .collect();
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
        match (w.kind, &w.link_group) {
            // One path of a hard-link group is the file, the others link to it.
            ("file", Some(_)) => assert!(g["type"] == "file" || g["type"] == "hardlink"),
            (kind, _) => assert_eq!(g["type"], kind, "{path}"),
        }
        if g["type"] != "hardlink" {
            assert_eq!(g["size"], w.size, "{path}");
        }
        assert_eq!(g["mode"], format!("{:04o}", w.mode), "{path}");
        assert_eq!(
            (g["uid"].as_u64(), g["gid"].as_u64()),
            (Some(w.uid.into()), Some(w.gid.into()))
        );
        let mtime = chrono::DateTime::parse_from_rfc3339(g["mtime"].as_str().unwrap()).unwrap();
        assert_eq!(mtime.timestamp(), w.mtime, "{path}");
        if g["type"] == "hardlink" {
            // Its target is the archive path of the file of its group.
            let target = &g["link"].as_str().unwrap()[vol_dir.len() + 1..];
            assert_eq!(want[target].link_group, w.link_group, "{path}");
        } else {
            let link = w
                .link
                .as_ref()
                .map(|l| String::from_utf8_lossy(l).into_owned());
            assert_eq!(g["link"].as_str(), link.as_deref(), "{path}");
        }
    }
    // A name search over the whole snapshot, and under one folder.
    let search = |q: &str, under: &str| {
        format!("/api/v1/backup/snapshots/{id}/files?q={q}&path={under}&limit=1")
    };
    let (status, body) = h.call("GET", &search("HELLO", "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["entries"][0]["path"],
        format!("{vol_dir}/sub/hello.php")
    );
    assert!(body["next_cursor"].is_null(), "one match: {body}");
    let (_, body) = h.call("GET", &search("linked", "")).await;
    assert!(
        body["next_cursor"].is_string(),
        "two matches, one a page: {body}"
    );
    let (_, body) = h
        .call("GET", &search("linked", &format!("{vol_dir}/sub")))
        .await;
    assert_eq!(body["entries"][0]["name"], "linked-b");
    assert!(body["next_cursor"].is_null(), "{body}");
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
    let vol = format!("volumes/{}", app.volume);
    let bad = ["/etc", "volumes/../..", "volumes/./x", "a%00b", "a//b"]
        .map(|p| (p.to_string(), StatusCode::BAD_REQUEST, "Invalid path"));
    // Not there, and a file rather than a folder.
    let missing = [format!("{vol}/nope"), format!("{vol}/a")]
        .map(|p| (p, StatusCode::NOT_FOUND, "Path not found"));
    for (path, want, message) in bad.into_iter().chain(missing) {
        let uri = format!("/api/v1/backup/snapshots/{id}/files?path={path}");
        let (status, body) = h.call("GET", &uri).await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body["message"], message);
    }
    let (status, _) = h
        .call("GET", "/api/v1/backup/snapshots/snapshot_nope/files")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The index is written with the archive, in stop mode and by a pre-copy's second pass
/// (entries reused from the first pass and entries read again alike), and it is exactly
/// what one read of the archive makes: browsing starts without reading the archive.
#[tokio::test]
async fn the_index_written_with_the_archive_is_the_one_a_read_of_it_makes() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    for mode in [BackupMode::Stop, BackupMode::Precopy] {
        let h = Harness::with(|c| {
            // Every unchanged entry of the first pass is trusted: reused.
            c.precopy_racy_secs = Some(0);
            set_mode(c, &app.id, mode);
        })
        .await;
        let snap = h.backup(&app.id).await;
        let archive = Path::new(snap["file_path"].as_str().unwrap());
        let sha256 = snap["sha256"].as_str().unwrap();
        let written = Index::load(&index::path_for(archive)).expect("written with the archive");
        let read = index::build(archive, sha256, u64::MAX).unwrap();
        assert_eq!(written.sha256, sha256);
        assert!(written.iter().unwrap().eq(read.iter().unwrap()), "{mode:?}");
        assert!(written.len() > 20, "{mode:?}");
        assert_eq!(written.members.first(), Some(&(0, 0)));
        assert!(
            written.members.iter().all(|m| read.members.contains(m)),
            "{mode:?}: every member the writer noted begins one"
        );
        if mode == BackupMode::Precopy {
            let down = &snap["downtime"];
            let (again, all) = (
                down["stopped_entries"].as_u64().unwrap(),
                snap["entries"].as_u64(),
            );
            assert!(
                again > 0 && Some(again) < all,
                "reused and read again: {snap}"
            );
        }
    }
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
    assert!(Path::new(&index).exists(), "written with the archive");

    // Another snapshot's index (another sha256), then garbage: both are made again.
    let planted_index = planted["file_path"]
        .as_str()
        .unwrap()
        .replace(".tar.gz", ".index");
    list_all(&h, planted["snapshot_id"].as_str().unwrap(), "", 10).await;
    let other_vol = format!("volumes/{}", other.volume);
    for lie in [fs::read(&planted_index).unwrap(), b"garbage".to_vec()] {
        fs::write(&index, lie).unwrap();
        // The index kept in memory is the planted snapshot's now: the file is read.
        list_all(&h, planted["snapshot_id"].as_str().unwrap(), &other_vol, 10).await;
        let (status, body) = h
            .call(
                "GET",
                &format!("/api/v1/backup/snapshots/{id}/files?path={vol}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(names(list_all(&h, &id, &vol, 10).await), ["real"]);
    }

    // A block damaged on disk (its framing intact: the file loads) fails the request
    // that reads it, and is not read again: the next request makes the index anew.
    let mut damaged = fs::read(&index).unwrap();
    let crc = damaged.len() - 6; // the last block's CRC
    damaged[crc] ^= 0xff;
    fs::write(&index, &damaged).unwrap();
    list_all(&h, planted["snapshot_id"].as_str().unwrap(), &other_vol, 10).await;
    let listing = format!("/api/v1/backup/snapshots/{id}/files?path={vol}");
    let (status, body) = h.call("GET", &listing).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("entry index"),
        "{body}"
    );
    assert_eq!(names(list_all(&h, &id, &vol, 10).await), ["real"]);
    assert_ne!(fs::read(&index).unwrap(), damaged, "made again");

    // The index goes with its snapshot.
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!Path::new(&index).exists());
}

#[tokio::test]
async fn every_file_reads_back_as_it_was_whole_or_by_range() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    let h = Harness::new().await;
    let id = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let vol = format!("volumes/{}", app.volume);
    let content = |path: &str| {
        format!(
            "/api/v1/backup/snapshots/{id}/files/content?path={}",
            enc(path)
        )
    };

    // Every regular file (a sparse one with its holes, a hard link as its file, a long
    // name), by its sha256. A name that is not UTF-8 cannot be named in a URL: left out.
    let mut read = 0;
    for (path, e) in manifest(&app.volume_path(), true) {
        let (Some(sha), Ok(path)) = (&e.sha256, String::from_utf8(path)) else {
            continue;
        };
        let (status, body) = h.get_bytes(&content(&format!("{vol}/{path}"))).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let got = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body));
        assert_eq!(&got, sha, "{path}");
        read += 1;
    }
    assert!(read >= 10, "{read} files read");

    // One range: 206 with its place in the file; the file is always an attachment.
    let original = fs::read(app.volume_path().join("sub/hello.php")).unwrap();
    let req = axum::http::Request::get(content(&format!("{vol}/sub/hello.php")))
        .header("range", "bytes=10-29")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(h.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let headers = resp.headers().clone();
    assert_eq!(
        headers["content-range"],
        format!("bytes 10-29/{}", original.len()).as_str()
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"hello.php\"")
    );
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], &original[10..30]);

    for (path, range, want) in [
        ("rel-link", None, StatusCode::BAD_REQUEST),
        ("nope", None, StatusCode::NOT_FOUND),
        (
            "sub/hello.php",
            Some("bytes=999999-"),
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        ("sub/hello.php", Some("bytes=-5"), StatusCode::BAD_REQUEST),
    ] {
        let mut req = axum::http::Request::get(content(&format!("{vol}/{path}")));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let (status, body) = h
            .call_with(req.body(axum::body::Body::empty()).unwrap())
            .await;
        assert_eq!(status, want, "{path} {range:?}: {body}");
    }
}

/// A folder downloads as a `.tar.gz` named from the folder down, which the system's
/// `tar -x` turns into exactly what the app's folder held (owners, modes, times, links,
/// xattrs, a sparse file, a FIFO); a hard link to a file outside the folder comes as that
/// file.
#[tokio::test]
async fn a_folder_downloads_as_a_tarball_of_exactly_its_tree() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    let h = Harness::new().await;
    let id = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = tempfile::tempdir().unwrap();
    for folder in ["", "/sub"] {
        let path = format!("volumes/{}{folder}", app.volume);
        let uri = format!(
            "/api/v1/backup/snapshots/{id}/files/content?path={}",
            enc(&path)
        );
        let req = axum::http::Request::get(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(h.router.clone(), req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let name = path.rsplit('/').next().unwrap().to_string();
        assert_eq!(resp.headers()["content-type"], "application/gzip");
        assert!(
            resp.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains(&format!("filename=\"{name}.tar.gz\"")),
            "{:?}",
            resp.headers()
        );
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let tarball = out.path().join(format!("{name}.tar.gz"));
        fs::write(&tarball, &body).unwrap();
        let into = out.path().join(format!("x-{name}"));
        fs::create_dir(&into).unwrap();
        sh(&format!(
            "tar --xattrs --xattrs-include='*' --same-owner -xzf {} -C {}",
            tarball.display(),
            into.display()
        ));
        let listed = sh(&format!("tar -tzf {}", tarball.display()));
        assert!(
            listed.lines().all(|l| l.starts_with(&format!("{name}/"))),
            "names from the folder down: {listed}"
        );
        let mut want = manifest(
            &app.volume_path().join(folder.trim_start_matches('/')),
            false,
        );
        let got = manifest(&into.join(&name), false);
        if folder == "/sub" {
            // `linked-b`'s other name is outside the folder: it comes as the file itself.
            assert_eq!(got[b"linked-b".as_slice()].link_group, None);
            want.get_mut(b"linked-b".as_slice()).unwrap().link_group = None;
        }
        assert_eq!(got, want, "{path}");
    }
}

/// A folder's tarball reads the archive only from the folder's first entry to its last:
/// not on to the end of the snapshot.
#[tokio::test]
async fn a_folders_download_reads_only_its_own_part_of_the_archive() {
    let app = TestApp::new("");
    let data = app.volume_path();
    for folder in ["a", "b", "c"] {
        fs::create_dir(data.join(folder)).unwrap();
        for i in 0..50 {
            let body: Vec<u8> = (0..40_000u32).map(|x| (x * 7 + i) as u8).collect();
            fs::write(data.join(format!("{folder}/f{i}")), body).unwrap();
        }
    }
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let archive = Path::new(snap["file_path"].as_str().unwrap());
    let index = std::sync::Arc::new(Index::load(&index::path_for(archive)).unwrap());
    // The middle one: folders before it and after it.
    let folder = index
        .get(format!("volumes/{}/b", app.volume).as_bytes())
        .unwrap()
        .unwrap()
        .to_owned();
    let tar = std::sync::Arc::new(index::Local {
        archive: archive.to_path_buf(),
        index: index.clone(),
    });
    let mut tree = appsnap::archive::subtree::open(tar, index.clone(), &folder).unwrap();
    std::io::copy(&mut tree, &mut std::io::sink()).unwrap();
    let last = index
        .iter()
        .unwrap()
        .filter(|e| e.path.starts_with(&folder.path))
        .map(|e| e.data_offset + e.size.div_ceil(512) * 512)
        .max()
        .unwrap();
    // Its own entries, and the header of the next one (which tells the folder ended).
    let read = tree.read_from_archive();
    assert!(
        read <= last - folder.header_offset + 3 * 512,
        "read {read} bytes for a folder of {}",
        last - folder.header_offset
    );
}

//! Archives built to attack the extractor: `..`, absolute paths, symlink-then-file,
//! hard links out of the mount, devices, entries outside every mount. Each is refused by
//! import and verify, and — tested directly — the extractor writes nothing outside.

use std::fs;
use std::io::Write;
use std::path::Path;

use appsnap::archive::extract::{Options, Target, extract};
use axum::http::StatusCode;
use tar::{EntryType, Header};

use crate::common::Harness;

const META: &str = r#"{"format":1,"appsnap_version":"0.1.0","snapshot_id":"snapshot_20260101T000000Z_bad0",
"app_id":"victim","created_at":"2026-01-01T00:00:00Z","origin":"manual",
"mounts":[{"type":"volume","name":"v","source":"/x","destination":"/data","archive_dir":"volumes/v"}]}"#;

/// One crafted entry: name, type, link target, data.
pub type Crafted<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// A gzip'd tar: the metadata entry, then `entries`.
fn archive(entries: &[Crafted]) -> Vec<u8> {
    let mut all: Vec<Crafted> = vec![(b"volumes/v/", EntryType::Directory, b"", b"")];
    all.extend_from_slice(entries);
    archive_with(META, &all)
}

/// A gzip'd tar: `meta` as the metadata entry, then `entries`.
pub fn archive_with(meta: &str, entries: &[Crafted]) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut add = |name: &[u8], kind: EntryType, link: &[u8], data: &[u8]| {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if kind == EntryType::Block {
            h.set_device_major(8).unwrap();
            h.set_device_minor(0).unwrap();
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    add(b"appsnap.json", EntryType::Regular, b"", meta.as_bytes());
    for (name, kind, link, data) in entries {
        add(name, *kind, link, data);
    }
    tar.extend_from_slice(&[0; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
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

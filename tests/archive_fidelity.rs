//! The archive is a plain `.tar.gz` that GNU tar reads back with everything appsnap
//! promises to keep, made from a real app's volume, bind mount and project dir.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::{Harness, TestApp, fill_every_kind, manifest, sh};

#[tokio::test]
async fn every_file_kind_survives_backup_and_gnu_tar() {
    let app = TestApp::new("");
    fill_every_kind(&app.volume_path());
    fill_every_kind(&app.bind());
    let h = Harness::new().await;

    let snapshot = h.backup(&app.id).await;
    let archive = snapshot["file_path"].as_str().unwrap();

    // Small although it holds a 100 MiB sparse file twice: holes are not stored.
    let size = fs::metadata(archive).unwrap().len();
    assert!(size < 2 << 20, "archive is {size} bytes");
    assert_eq!(snapshot["size_bytes"], size);
    assert_eq!(
        snapshot["sha256"].as_str().unwrap(),
        sh(&format!("sha256sum {archive} | cut -d' ' -f1"))
    );
    sh(&format!("gzip -t {archive}"));

    let listing = sh(&format!("tar -tzf {archive}"));
    assert_eq!(
        listing.lines().next(),
        Some("appsnap.json"),
        "metadata entry comes first"
    );
    let vol_dir = format!("volumes/{}", app.volume);
    let bind_dir = format!(
        "binds/{}",
        appsnap::model::escape_path(&app.bind().to_string_lossy())
    );
    for want in [
        &vol_dir,
        &bind_dir,
        "project/docker-compose.yml",
        "project/.env",
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with(want)),
            "{want} missing from:\n{listing}"
        );
    }

    let out = tempfile::tempdir().unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -xpzf {archive} -C {}",
        out.path().display()
    ));
    for (source, extracted) in [
        (app.volume_path(), out.path().join(&vol_dir)),
        (app.bind(), out.path().join(&bind_dir)),
    ] {
        let (want, got) = (manifest(&source, true), manifest(&extracted, true));
        for (path, entry) in &want {
            assert_eq!(
                got.get(path),
                Some(entry),
                "{} differs after extraction",
                String::from_utf8_lossy(path)
            );
        }
        assert_eq!(want.len(), got.len(), "same number of paths");
        // Sparse both ways: GNU tar recreates the holes.
        let sparse = fs::metadata(extracted.join("sparse.img")).unwrap();
        assert_eq!(sparse.len(), 100 << 20);
        assert!(
            sparse.blocks() * 512 < 1 << 20,
            "{} blocks",
            sparse.blocks()
        );
    }

    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(out.path().join("appsnap.json")).unwrap()).unwrap();
    assert_eq!(meta["app_id"], app.id.as_str());
    assert_eq!(meta["snapshot_id"], snapshot["snapshot_id"]);
}

#[tokio::test]
async fn archive_is_made_of_independent_members_and_stores_noise() {
    let app = TestApp::new("");
    let vol = app.volume_path();
    // 6 MiB of text and 6 MiB of noise: several 1 MiB chunks, so several members.
    fs::write(
        vol.join("text.sql"),
        "INSERT INTO posts VALUES (1, 'hello world');\n".repeat(140_000),
    )
    .unwrap();
    sh(&format!(
        "head -c 6291456 /dev/urandom > {}",
        vol.join("media.jpg").display()
    ));
    let h = Harness::new().await;
    let snapshot = h.backup(&app.id).await;
    let archive = fs::read(snapshot["file_path"].as_str().unwrap()).unwrap();

    let mut pos = 0;
    let mut members = 0;
    while pos < archive.len() {
        pos += appsnap::archive::gzip::member_len(&archive[pos..]).expect("an appsnap gzip member");
        members += 1;
    }
    assert_eq!(pos, archive.len(), "members cover the whole file");
    assert!(members >= 12, "{members} members");
    // Noise costs its own size (stored), text almost nothing.
    let size = archive.len() as u64;
    assert!(
        size > 6 << 20 && size < (6 << 20) + (1 << 20),
        "{size} bytes"
    );
    assert_eq!(sha_of(Path::new(&vol.join("media.jpg"))), {
        let out = tempfile::tempdir().unwrap();
        sh(&format!(
            "tar -xzf {} -C {}",
            snapshot["file_path"].as_str().unwrap(),
            out.path().display()
        ));
        sha_of(&out.path().join(format!("volumes/{}/media.jpg", app.volume)))
    });
}

fn sha_of(p: &Path) -> String {
    sh(&format!("sha256sum '{}' | cut -d' ' -f1", p.display()))
}

//! Pre-copy backups (the default mode) against an app that never stops writing: the
//! snapshot must be exactly the data at the moment the app stopped, run after run, and
//! the same as a `stop` mode backup's would be.
//!
//! The churn container appends with sequence numbers, rewrites files (another size, and
//! the same size with `touch -r` back to an old mtime, which only ctime reveals), renames
//! over, makes and deletes directories, adds and drops hard links — as fast as busybox
//! goes, during both passes. On SIGTERM (the backup's stop) it writes a manifest of its
//! data (every path, every file's md5) into the data itself and exits: the snapshot must
//! hold that manifest, and files that match it. Writes through a shared memory mapping
//! cannot be made from busybox; the unit tests of `archive::precopy` cover the window
//! that handles them.

use std::fs;
use std::path::Path;

use crate::common::{Harness, TestApp, manifest, set_mode, sh};
use appsnap::config::BackupMode;

/// The churn, run by busybox `sh` in the app's container from its bind mount.
const CHURN: &str = r#"cd /data
trap 'find . -type f ! -name "MANIFEST*" | sort | xargs md5sum > MANIFEST.tmp; find . ! -name "MANIFEST*" | sort >> MANIFEST.tmp; mv MANIFEST.tmp MANIFEST; sync; exit 0' TERM
mkdir -p dirs
echo old > old
touch -d 2001-01-01 old
i=0
while true; do
  i=$((i+1))
  echo "$i" >> log
  echo "r$i" > rewrite
  printf '%08d' $i > same-size
  touch -r old same-size
  mkdir -p dirs/d$((i % 7)) && echo $i > dirs/d$((i % 7))/f
  rm -rf dirs/d$(((i + 3) % 7))
  echo $i > tmp && mv tmp renamed
  ln -f renamed hard-$((i % 3))
  [ $((i % 50)) -eq 0 ] && rm -f hard-*
done
"#;

/// An app with 400 files that do not change and a container that churns beside them.
fn churning_app() -> TestApp {
    let mut app = TestApp::new("");
    let vol = app.volume_path();
    for d in 0..20 {
        let dir = vol.join(format!("static/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            fs::write(dir.join(format!("f{f:02}")), format!("{d}/{f}").repeat(100)).unwrap();
        }
    }
    fs::write(app.bind().join("churn.sh"), CHURN).unwrap();
    app.add_container_running("churn", "", "exec sh /bind/churn.sh;");
    app
}

/// A harness backing `app` up in `mode`, trusting files unchanged for 1 s (no app here
/// writes through a shared mapping).
async fn harness(app: &TestApp, mode: BackupMode) -> Harness {
    Harness::with(|c| {
        c.precopy_racy_secs = Some(1);
        set_mode(c, &app.id, mode);
    })
    .await
}

/// Extracts the snapshot with the system's `tar -xzf` into `into`; checks that the
/// volume's files match the manifest the app wrote when it was stopped.
fn check_against_the_apps_own_manifest(snapshot: &serde_json::Value, volume: &str, into: &Path) {
    fs::create_dir_all(into).unwrap();
    sh(&format!(
        "tar -xzf {} -C {}",
        snapshot["file_path"].as_str().unwrap(),
        into.display()
    ));
    let data = into.join("volumes").join(volume);
    let recorded = fs::read_to_string(data.join("MANIFEST"))
        .unwrap_or_else(|e| panic!("the snapshot holds the app's manifest: {e}"));
    let found = sh(&format!(
        "cd {} && (find . -type f ! -name 'MANIFEST*' | LC_ALL=C sort | xargs md5sum; \
         find . ! -name 'MANIFEST*' | LC_ALL=C sort)",
        data.display()
    ));
    let (found, recorded): (Vec<&str>, Vec<&str>) =
        (found.lines().collect(), recorded.lines().collect());
    let missing: Vec<_> = recorded.iter().filter(|l| !found.contains(l)).collect();
    let unexpected: Vec<_> = found.iter().filter(|l| !recorded.contains(l)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && found.len() == recorded.len(),
        "the snapshot {} is not the data at the stop: the app's manifest has {missing:?}, \
         the snapshot {unexpected:?}",
        snapshot["snapshot_id"]
    );
}

async fn churn_runs(mode: BackupMode, runs: usize) {
    let app = churning_app();
    let h = harness(&app, mode).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut last = serde_json::Value::Null;
    for run in 0..runs {
        let snap = h.backup(&app.id).await;
        check_against_the_apps_own_manifest(
            &snap,
            &app.volume,
            &scratch.path().join(format!("{run}")),
        );
        let downtime = &snap["downtime"];
        assert_eq!(
            downtime["mode"],
            format!("{mode:?}").to_lowercase(),
            "{snap}"
        );
        if run + 1 < runs {
            let (status, body) = h
                .call(
                    "DELETE",
                    &format!(
                        "/api/v1/backup/snapshots/{}",
                        snap["snapshot_id"].as_str().unwrap()
                    ),
                )
                .await;
            assert!(status.is_success(), "{body}");
        }
        fs::remove_dir_all(scratch.path().join(format!("{run}"))).unwrap();
        last = snap;
    }
    let d = &last["downtime"];
    let entries = last["entries"].as_u64().unwrap();
    match mode {
        BackupMode::Precopy => {
            assert_eq!(d["passes"], 2, "{last}");
            // The 400 static files are older than the window by now: not read again.
            assert!(
                d["stopped_entries"].as_u64().unwrap() < entries / 2,
                "read again while stopped: {d} of {entries} entries"
            );
        }
        _ => assert_eq!(d["passes"], 1, "{last}"),
    }

    // The same snapshot through appsnap's restore (the churn gone, so the data holds
    // still): the tree `tar -xzf` gives, metadata and all.
    sh(&format!("docker rm -f {}", app.containers[1]));
    let extracted = scratch.path().join("last");
    check_against_the_apps_own_manifest(&last, &app.volume, &extracted);
    let (status, body) = h
        .call("POST", &crate::common::restore_uri(&app.id, &last))
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(
        manifest(&app.volume_path(), true),
        manifest(&extracted.join("volumes").join(&app.volume), true),
        "appsnap's restore gives what tar -xzf gives"
    );
}

/// 50 pre-copy backups of an app that writes all the time: each one is exactly the data
/// at the stop.
#[tokio::test]
async fn a_precopy_snapshot_is_the_data_at_the_stop_every_time() {
    churn_runs(BackupMode::Precopy, 50).await;
}

/// The control: the same churn, backed up in stop mode.
#[tokio::test]
async fn a_stop_mode_snapshot_is_the_data_at_the_stop_too() {
    churn_runs(BackupMode::Stop, 10).await;
}

//! Partial restores: chosen paths come back in place (the rest of the app's data as it
//! was, a failure rolled back to exactly the data before) or beside (the app never
//! stopped); bad selections are refused before anything is touched.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use axum::http::StatusCode;

use crate::common::{Entry, Harness, TestApp, job_done, manifest, restore_uri};

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        fs::write(root.join(path), content).unwrap();
    }
}

/// The entries of `m` under `folder` (or all but those, with `outside`).
fn part(m: &BTreeMap<Vec<u8>, Entry>, folders: &[&str], outside: bool) -> BTreeMap<Vec<u8>, Entry> {
    m.iter()
        .filter(|(p, _)| {
            let under = folders
                .iter()
                .any(|f| p.as_slice() == f.as_bytes() || p.starts_with(format!("{f}/").as_bytes()));
            under != outside
        })
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// Names appsnap's staging and aside folders carry, anywhere under `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    manifest(dir, false)
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.contains(".appsnap-"))
        .collect()
}

#[tokio::test]
async fn chosen_paths_come_back_in_place_and_nothing_else_moves() {
    let app = TestApp::new("");
    let data = app.volume_path();
    write(
        &data,
        &[
            ("uploads/2024/x.jpg", "x v1"),
            ("uploads/2024/sub/y", "y v1"),
            ("uploads/2023/z", "z v1"),
            ("config.php", "config v1"),
            ("keep", "keep v1"),
        ],
    );
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let at_backup = manifest(&data, false);

    // The app moves on: changes inside and outside the chosen paths.
    write(
        &data,
        &[
            ("uploads/2024/x.jpg", "x v2, longer"),
            ("uploads/2024/new.jpg", "new"),
            ("uploads/2023/z", "z v2"),
            ("config.php", "config v2"),
            ("keep", "keep v2"),
        ],
    );
    fs::remove_dir_all(data.join("uploads/2024/sub")).unwrap();
    let before = manifest(&data, false);
    let started = app.started_at(&app.containers[0]);

    let vol = format!("volumes/{}", app.volume);
    let chosen = ["uploads/2024", "config.php"];
    let (status, body) = h
        .call_json(
            "POST",
            &restore_uri(&app.id, &snap),
            serde_json::json!({
                "paths": chosen.iter().map(|p| format!("{vol}/{p}")).collect::<Vec<_>>(),
                "target": "in_place",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["downtime_ms"].as_u64().is_some(), "{body}");
    job_done(&h, body["cleanup_job"].as_str().unwrap()).await;

    let after = manifest(&data, false);
    assert_eq!(
        part(&after, &chosen, false),
        part(&at_backup, &chosen, false),
        "the chosen paths are the snapshot's"
    );
    assert_eq!(
        part(&after, &chosen, true),
        part(&before, &chosen, true),
        "everything else is as it was before the restore"
    );
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
    assert!(app.running(&app.containers[0]));
    assert_ne!(
        app.started_at(&app.containers[0]),
        started,
        "stopped for the swap"
    );
}

/// A restore that fails after the swap (here the app's container refuses to run on the
/// restored data, a real fault) puts back exactly the data it found, and the app runs.
#[tokio::test]
async fn a_partial_restore_that_fails_is_rolled_back_to_the_data_before() {
    // The container runs only while /data/ctl/ok exists.
    let app = TestApp::new_running("", "test -f /data/ctl/ok || exit 1;");
    let data = app.volume_path();
    fs::create_dir_all(data.join("ctl")).unwrap();
    write(&data, &[("uploads/a", "a v1")]);
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await; // its ctl/ has no `ok`

    write(
        &data,
        &[("ctl/ok", ""), ("uploads/a", "a v2"), ("uploads/b", "b")],
    );
    crate::common::sh(&format!("docker start {}", app.containers[0]));
    assert!(app.running(&app.containers[0]));
    let before = manifest(&data, false);

    let vol = format!("volumes/{}", app.volume);
    let (status, body) = h
        .call_json(
            "POST",
            &restore_uri(&app.id, &snap),
            serde_json::json!({"paths": [format!("{vol}/uploads"), format!("{vol}/ctl")]}),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["message"], "Restore failed, rolled back", "{body}");
    assert_eq!(manifest(&data, false), before, "the data before, exactly");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
    assert!(
        app.running(&app.containers[0]),
        "started again on its own data"
    );
}

#[tokio::test]
async fn beside_puts_the_paths_next_to_the_data_and_never_stops_the_app() {
    let app = TestApp::new("");
    let data = app.volume_path();
    write(
        &data,
        &[("uploads/2024/x.jpg", "x v1"), ("notes.txt", "v1")],
    );
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    write(
        &data,
        &[("uploads/2024/x.jpg", "x v2"), ("notes.txt", "v2")],
    );
    let before = manifest(&data, false);
    let started = app.started_at(&app.containers[0]);

    let vol = format!("volumes/{}", app.volume);
    let (status, body) = h
        .call_json(
            "POST",
            &restore_uri(&app.id, &snap),
            serde_json::json!({
                "paths": [format!("{vol}/uploads/2024"), format!("{vol}/notes.txt")],
                "target": "beside",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    job_done(&h, body["cleanup_job"].as_str().unwrap()).await;
    let folder = data.join(format!("uploads/2024.restored-{id}"));
    let file = data.join(format!("notes.txt.restored-{id}"));
    assert_eq!(
        body["restored_to"],
        serde_json::json!([folder.display().to_string(), file.display().to_string()])
    );
    assert_eq!(fs::read_to_string(folder.join("x.jpg")).unwrap(), "x v1");
    assert_eq!(fs::read_to_string(&file).unwrap(), "v1");
    let after = manifest(&data, false);
    let new: Vec<String> = [folder.clone(), folder.join("x.jpg"), file.clone()]
        .iter()
        .map(|p| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    let rest: BTreeMap<_, _> = after
        .into_iter()
        .filter(|(p, _)| !new.contains(&String::from_utf8_lossy(p).into_owned()))
        .collect();
    assert_eq!(rest, before, "the app's data itself untouched");
    assert_eq!(app.started_at(&app.containers[0]), started, "never stopped");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));

    // Again: the folder of that name exists now, so nothing is done.
    let (status, body) = h
        .call_json(
            "POST",
            &restore_uri(&app.id, &snap),
            serde_json::json!({"paths": [format!("{vol}/notes.txt")], "target": "beside"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn a_selection_that_cannot_be_restored_is_refused_before_anything_is_touched() {
    let app = TestApp::new("");
    let data = app.volume_path();
    write(&data, &[("a/b/c", "c"), ("d", "d")]);
    std::os::unix::fs::symlink("a", data.join("link")).unwrap();
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    // The current data lost the folder `a`.
    fs::remove_dir_all(data.join("a")).unwrap();
    let before = manifest(&data, false);
    let started = app.started_at(&app.containers[0]);
    let vol = format!("volumes/{}", app.volume);
    for (paths, want) in [
        (serde_json::json!([]), StatusCode::BAD_REQUEST),
        (
            serde_json::json!([format!("{vol}/a"), format!("{vol}/a/b")]),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!([format!("{vol}/../x")]),
            StatusCode::BAD_REQUEST,
        ),
        (serde_json::json!(["/etc/passwd"]), StatusCode::BAD_REQUEST),
        (
            serde_json::json!([format!("{vol}/nope")]),
            StatusCode::NOT_FOUND,
        ),
        (
            serde_json::json!([format!("{vol}/link")]),
            StatusCode::BAD_REQUEST,
        ),
        // `a` is gone from the current data: its child has nowhere to go.
        (
            serde_json::json!([format!("{vol}/a/b")]),
            StatusCode::CONFLICT,
        ),
    ] {
        let (status, body) = h
            .call_json(
                "POST",
                &restore_uri(&app.id, &snap),
                serde_json::json!({ "paths": paths }),
            )
            .await;
        assert_eq!(status, want, "{paths}: {body}");
    }
    assert_eq!(manifest(&data, false), before);
    assert_eq!(app.started_at(&app.containers[0]), started);
}

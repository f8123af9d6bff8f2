//! Offsite copies to a real S3 server (s3s-fs): copy after backup, incremental uploads,
//! Debian's `restic` reading the repository, disaster recovery on a new server, and
//! failures that leave the local snapshot alone.

use std::fs;

use axum::http::StatusCode;

use crate::common::{Harness, S3Server, TestApp, job_done, manifest, sh};

/// The newest job of `kind` for `app` (copies are started by the backup itself).
pub(crate) async fn newest_job(h: &Harness, kind: &str, app: &str) -> String {
    let (_, jobs) = h.call("GET", "/api/v1/jobs").await;
    jobs.as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == kind && j["app_id"] == app)
        .max_by_key(|j| j["started_at"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {kind} job for {app} in {jobs}"))["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Backs up `app` and waits for its copy; returns (snapshot, finished copy job).
pub(crate) async fn backup_and_copy(
    h: &Harness,
    app: &str,
) -> (serde_json::Value, serde_json::Value) {
    let snap = h.backup(app).await;
    assert_eq!(snap["copies"]["offsite"]["state"], "pending", "{snap}");
    let job = job_done(h, &newest_job(h, "copy", app).await).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let (_, now) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(job["state"], "succeeded", "{job}\n{}", now["copies"]);
    (snap, job)
}

/// `pigz -dc` of the local archive: the tar stream the backup wrote.
pub(crate) fn inflated_sha256(snapshot: &serde_json::Value) -> String {
    let out = sh(&format!(
        "pigz -dc {} | sha256sum",
        snapshot["file_path"].as_str().unwrap()
    ));
    out.split_whitespace().next().unwrap().to_string()
}

/// The copy of snapshot `id` in a repository's snapshot list.
pub(crate) fn copy_of<'a>(remote: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    remote
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["snapshot_id"] == id)
        .unwrap_or_else(|| panic!("no copy of {id} in {remote}"))
}

pub(crate) fn random_file(path: &std::path::Path, len: usize) {
    sh(&format!("head -c {len} /dev/urandom > {}", path.display()));
}

#[tokio::test]
async fn copies_are_incremental_and_restic_reads_them() {
    let s3 = S3Server::start("backups");
    let app = TestApp::new("");
    // 200 MB of incompressible data in 20 files, so that changing one is 5 %.
    for i in 0..20 {
        random_file(&app.volume_path().join(format!("blob{i:02}")), 10 << 20);
    }
    let repo = s3.repository("offsite", "backups", common_secret());
    let h = Harness::with(|c| c.repositories = vec![repo]).await;

    let (first, job1) = backup_and_copy(&h, &app.id).await;
    let up1 = job1["result"]["bytes_uploaded"].as_u64().unwrap();
    let stored1 = s3.stored_bytes("backups");
    random_file(&app.volume_path().join("blob07"), 10 << 20);
    let (second, job2) = backup_and_copy(&h, &app.id).await;
    let up2 = job2["result"]["bytes_uploaded"].as_u64().unwrap();
    // What the bucket really grew by, beside what rustic says it added.
    let grown = s3.stored_bytes("backups") - stored1;
    eprintln!(
        "first copy: {up1} bytes added, bucket {stored1}; second (5 % changed): {up2} added, \
         bucket +{grown}"
    );
    assert!(
        up1 > 200 << 20 && stored1 > 200 << 20,
        "the first copy holds the data: {up1}"
    );
    for second in [up2, grown] {
        // One file of 20 changed: 5 %, and a little for the trees and the layout.
        assert!(
            (second as f64) < 0.07 * stored1 as f64,
            "the second copy uploads only what changed: {second} of {stored1}"
        );
    }

    // Where each snapshot is, as list and get say.
    let (_, listed) = h
        .call(
            "GET",
            &format!("/api/v1/backup/snapshots?app_id={}", app.id),
        )
        .await;
    for s in listed.as_array().unwrap() {
        assert_eq!(
            s["locations"],
            serde_json::json!(["local", "offsite"]),
            "{s}"
        );
        assert_eq!(s["copies"]["offsite"]["state"], "done", "{s}");
    }
    let (status, remote) = h
        .call(
            "GET",
            &format!("/api/v1/repositories/offsite/snapshots?app_id={}", app.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{remote}");
    let remote = remote.as_array().unwrap().clone();
    assert_eq!(remote.len(), 2, "{remote:?}");

    // Debian's restic, with nothing of appsnap: it lists both and dumps the tar stream.
    let (ok, out) = s3.restic(
        "backups",
        &["snapshots", "--json", "--tag", &format!("app:{}", app.id)],
    );
    assert!(ok);
    let restic: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(restic.as_array().unwrap().len(), 2, "{restic}");
    for snap in [&first, &second] {
        let recorded = snap["tar_sha256"].as_str().unwrap();
        assert_eq!(
            inflated_sha256(snap),
            recorded,
            "the catalog records the tar stream's sha256"
        );
        let r = remote
            .iter()
            .find(|r| r["snapshot_id"] == snap["snapshot_id"])
            .unwrap();
        // A tree: restic restores the app's files, as GNU tar unpacks them.
        assert_eq!(r["format"], "tree", "{r}");
        let (_dir, folder) = s3.restic_restore("backups", r);
        crate::common::assert_same_as_the_archive(snap, &folder);
    }
    s3.restic_check("backups");
    // Nothing in the bucket is readable without the password: not the app's name (in
    // tags, description and paths), not the archive's metadata entry.
    for needle in [app.id.as_str(), "appsnap.json"] {
        let found = sh(&format!(
            "grep -rlaF -e '{needle}' {} || true",
            s3.data.path().display()
        ));
        assert!(
            found.is_empty(),
            "`{needle}` readable in the bucket: {found}"
        );
    }
}

#[tokio::test]
async fn a_new_server_restores_from_the_repository_after_the_first_is_gone() {
    let s3 = S3Server::start("recovery");
    let mut app = TestApp::new("");
    crate::common::fill_every_kind(&app.volume_path());
    fs::write(app.bind().join("config.ini"), "answer=42\n").unwrap();
    let before = (
        manifest(&app.volume_path(), true),
        manifest(&app.bind(), true),
    );
    let repo = s3.repository("offsite", "recovery", common_secret());

    // Server A backs up and copies, then loses its disk.
    let snapshot_id = {
        let a = Harness::with(|c| {
            c.repositories = vec![repo.clone()];
            c.offsite_attempts = 1;
        })
        .await;
        let (snap, _) = backup_and_copy(&a, &app.id).await;
        snap["snapshot_id"].as_str().unwrap().to_string()
    };
    // The app is created afresh on server B: empty volume, empty bind mount.
    app.recreate();
    assert!(manifest(&app.volume_path(), true).len() <= 1);

    let b = Harness::with(|c| c.repositories = vec![repo]).await;
    let (_, local) = b.call("GET", "/api/v1/backup/snapshots").await;
    assert_eq!(
        local,
        serde_json::json!([]),
        "server B starts with nothing local"
    );
    let (status, remote) = b
        .call("GET", "/api/v1/repositories/offsite/snapshots")
        .await;
    assert_eq!(status, StatusCode::OK, "{remote}");
    assert!(
        remote
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["snapshot_id"] == snapshot_id.as_str()),
        "A's snapshot is visible from B: {remote}"
    );
    let (status, body) = b
        .call(
            "POST",
            &format!("/api/v1/backup/restore/{}/{snapshot_id}", app.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        manifest(&app.volume_path(), true),
        before.0,
        "the volume is back, every entry"
    );
    assert_eq!(manifest(&app.bind(), true), before.1, "and the bind mount");
    // The fetched copy is now a local snapshot: the next restore needs no network.
    let (_, got) = b
        .call("GET", &format!("/api/v1/backup/snapshots/{snapshot_id}"))
        .await;
    assert_eq!(
        got["locations"],
        serde_json::json!(["local", "offsite"]),
        "{got}"
    );
    let (status, verified) = b
        .call(
            "POST",
            &format!("/api/v1/backup/snapshots/{snapshot_id}/verify"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
}

#[tokio::test]
async fn refused_credentials_fail_the_copy_not_the_snapshot() {
    // A bucket that does not exist is not tested here: s3s-fs 0.14.1 accepts writes to
    // one (real S3 answers NoSuchBucket, which the copy reports like any refusal).
    let s3 = S3Server::start("real");
    let app = TestApp::new("");
    fs::write(app.volume_path().join("data"), "precious\n").unwrap();
    let wrong = s3.repository("wrongkey", "real", "not-the-secret");
    let h = Harness::with(|c| {
        c.repositories = vec![wrong];
        c.offsite_retry_secs = 1;
        c.offsite_attempts = 2;
    })
    .await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let (_, jobs) = h.call("GET", "/api/v1/jobs").await;
    let copies: Vec<String> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "copy")
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(copies.len(), 1, "{jobs}");
    for job in copies {
        let done = job_done(&h, &job).await;
        assert_eq!(done["state"], "failed", "{done}");
    }
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(got["locations"], serde_json::json!(["local"]), "{got}");
    let copy = &got["copies"]["wrongkey"];
    assert_eq!(copy["state"], "failed", "{got}");
    assert_eq!(copy["attempts"], 2, "{got}");
    let error = copy["error"].as_str().unwrap();
    assert!(
        error.contains("repository `wrongkey`") && error.contains("403"),
        "a clear error naming the repository and the refusal: {error}"
    );
    assert!(
        !s3.data.path().join("real/appsnap/config").exists(),
        "a refused credential never creates a repository"
    );
    // The local snapshot is untouched and restores.
    let (status, v) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/verify"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The password never shows.
    let (_, repos) = h.call("GET", "/api/v1/repositories").await;
    assert!(!repos.to_string().contains("correct horse"), "{repos}");
    assert!(!repos.to_string().contains("not-the-secret"), "{repos}");
    assert_eq!(repos.as_array().unwrap().len(), 1);
}

fn common_secret() -> &'static str {
    crate::common::S3_SECRET
}

#[tokio::test]
async fn an_imported_snapshot_is_checked_and_hashed_before_its_first_copy_and_deleted_per_location()
{
    let s3 = S3Server::start("imports");
    let app = TestApp::new("");
    fs::write(
        app.volume_path().join("data"),
        "moved from another server\n",
    )
    .unwrap();
    let mut repo = s3.repository("offsite", "imports", common_secret());
    repo.copy = appsnap::offsite::CopyWhen::Manual;
    let h = Harness::with(|c| c.repositories = vec![repo]).await;
    let snap = h.backup(&app.id).await;
    assert_eq!(
        snap["copies"],
        serde_json::json!({}),
        "manual: nothing owed"
    );
    let id = snap["snapshot_id"].as_str().unwrap();
    let recorded = snap["tar_sha256"].as_str().unwrap().to_string();

    // The same archive, imported: an import knows no tar stream sha256 of its own.
    let bytes = fs::read(snap["file_path"].as_str().unwrap()).unwrap();
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let req = axum::http::Request::post("/api/v1/backup/snapshots/import")
        .body(axum::body::Body::from(bytes))
        .unwrap();
    let (status, imported) = h.call_with(req).await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    assert!(
        imported["snapshot"].get("tar_sha256").is_none(),
        "{imported}"
    );

    h.copy_to(id, "offsite").await;
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(
        got["tar_sha256"],
        recorded.as_str(),
        "hashed once, before the copy"
    );
    assert_eq!(
        got["locations"],
        serde_json::json!(["local", "offsite"]),
        "{got}"
    );

    // Unknown repository or snapshot: 404, nothing started.
    for uri in [
        format!("/api/v1/backup/snapshots/{id}/copy?repository=nowhere"),
        "/api/v1/backup/snapshots/snapshot_20200101T000000Z_0000/copy?repository=offsite".into(),
        "/api/v1/repositories/nowhere/snapshots".into(),
    ] {
        let (status, body) = h
            .call(if uri.contains("/copy") { "POST" } else { "GET" }, &uri)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
    }
    // Deleting per location: an unknown one deletes nothing; the repository's copy goes
    // alone; `all` takes what is left.
    let uri = |location: &str| format!("/api/v1/backup/snapshots/{id}?location={location}");
    let (status, body) = h.call("DELETE", &uri("nowhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = h.call("DELETE", &uri("offsite")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(got["locations"], serde_json::json!(["local"]), "{got}");
    let (_, remote) = h
        .call("GET", "/api/v1/repositories/offsite/snapshots")
        .await;
    assert_eq!(remote, serde_json::json!([]), "forgotten in the repository");
    let (status, _) = h.call("DELETE", &uri("offsite")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no copy there any more");
    let (status, body) = h.call("DELETE", &uri("all")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Waits until the job's state satisfies `until`; returns it.
pub(crate) async fn job_until(
    h: &Harness,
    job_id: &str,
    until: impl Fn(&appsnap::jobs::JobInfo) -> bool,
) -> appsnap::jobs::JobInfo {
    let mut rx = h.manager.jobs.get(job_id).expect("job exists").subscribe();
    loop {
        let info = rx.borrow_and_update().clone();
        if until(&info) {
            return info;
        }
        rx.changed().await.expect("job channel open");
    }
}

#[tokio::test]
async fn a_copy_cut_by_the_server_dying_completes_once_it_is_back() {
    let mut s3 = S3Server::start("flaky");
    let app = TestApp::new("");
    for i in 0..20 {
        random_file(&app.volume_path().join(format!("blob{i:02}")), 10 << 20);
    }
    let repo = s3.repository("offsite", "flaky", common_secret());
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.offsite_retry_secs = 1;
        c.offsite_attempts = 3;
    })
    .await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let job = newest_job(&h, "copy", &app.id).await;
    // Mid-upload: the stream is being read (and packs sent) when the server dies.
    let seen = job_until(&h, &job, |j| {
        j.bytes_done > 0 || j.state != appsnap::jobs::JobState::Running
    })
    .await;
    assert_eq!(
        seen.state,
        appsnap::jobs::JobState::Running,
        "copied before the kill: {seen:?}"
    );
    // The job shows what reached the storage as it goes, beside what it read.
    let uploading = job_until(&h, &job, |j| {
        j.step.contains("bytes uploaded") || j.state != appsnap::jobs::JobState::Running
    })
    .await;
    assert_eq!(
        uploading.state,
        appsnap::jobs::JobState::Running,
        "{uploading:?}"
    );
    s3.kill();
    let waiting = job_until(&h, &job, |j| {
        j.step.contains("retrying") || j.state != appsnap::jobs::JobState::Running
    })
    .await;
    assert!(waiting.step.contains("retrying"), "{waiting:?}");
    let (_, during) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(
        during["locations"],
        serde_json::json!(["local"]),
        "{during}"
    );
    assert!(during["copies"]["offsite"]["error"].is_string(), "{during}");
    // Asking for the copy again while it waits to retry does not start a second one.
    let (status, body) = h
        .call(
            "POST",
            &format!("/api/v1/backup/snapshots/{id}/copy?repository=offsite"),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    s3.restart();

    let done = job_done(&h, &job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(got["copies"]["offsite"]["state"], "done", "{got}");
    assert!(
        got["copies"]["offsite"]["attempts"].as_u64().unwrap() >= 2,
        "{got}"
    );
    // Nothing half-listed: one copy of the snapshot, and the repository is sound.
    let (_, remote) = h
        .call("GET", "/api/v1/repositories/offsite/snapshots")
        .await;
    let copies = remote
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["snapshot_id"] == id)
        .count();
    assert_eq!(copies, 1, "{remote}");
    // The copy reads back whole through the exit that needs no appsnap.
    let r = copy_of(&remote, id);
    let (_dir, folder) = s3.restic_restore("flaky", r);
    crate::common::assert_same_as_the_archive(&snap, &folder);
    // And the repository is sound: rustic's check, and restic's (which does not take
    // index entries of packs that never arrived).
    let checked = repository_job(&h, "/api/v1/repositories/offsite/check").await;
    assert_eq!(checked["errors"], serde_json::json!([]), "{checked}");
    s3.restic_check("flaky");
}

/// Starts a repository job (`prune`, `check`) through the API and waits for its result.
pub(crate) async fn repository_job(h: &Harness, uri: &str) -> serde_json::Value {
    let (status, job) = h.call("POST", uri).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{uri}: {job}");
    let done = job_done(h, job["job_id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{uri}: {done}");
    done["result"].clone()
}

/// Waits for every job of `kind` started so far.
pub(crate) async fn all_done(h: &Harness, kind: &str) {
    let ids: Vec<String> = h
        .manager
        .jobs
        .list()
        .into_iter()
        .filter(|j| j.kind == kind)
        .map(|j| j.job_id)
        .collect();
    for id in ids {
        let done = job_done(h, &id).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
}

#[tokio::test]
async fn forgotten_copies_are_pruned_in_two_phases_and_check_finds_a_lost_pack() {
    let s3 = S3Server::start("quick");
    fs::create_dir(s3.data.path().join("careful")).unwrap();
    let app = TestApp::new("");
    let blobs = |app: &TestApp| {
        for i in 0..3 {
            random_file(&app.volume_path().join(format!("blob{i}")), 10 << 20);
        }
    };
    blobs(&app);
    // `quick` frees space at the next prune; `careful` keeps rustic's 23 h delay.
    let mut quick = s3.repository("quick", "quick", common_secret());
    quick.keep_delete_secs = 0;
    let careful = s3.repository("careful", "careful", common_secret());
    assert_eq!(careful.keep_delete_secs, 23 * 3600, "the safe default");
    let h = Harness::with(|c| c.repositories = vec![quick, careful]).await;

    let first = h.backup(&app.id).await;
    all_done(&h, "copy").await;
    blobs(&app); // all new data: nothing of the first copy is shared with the second
    let second = h.backup(&app.id).await;
    all_done(&h, "copy").await;
    for repo in ["quick", "careful"] {
        let checked = repository_job(&h, &format!("/api/v1/repositories/{repo}/check")).await;
        assert_eq!(checked["errors"], serde_json::json!([]), "{checked}");
    }
    let full = [s3.stored_bytes("quick"), s3.stored_bytes("careful")];
    assert!(full.iter().all(|b| *b > 60 << 20), "{full:?}");

    // Forget the first snapshot in both repositories: each starts a prune that marks.
    let id1 = first["snapshot_id"].as_str().unwrap();
    for repo in ["quick", "careful"] {
        let (status, body) = h
            .call(
                "DELETE",
                &format!("/api/v1/backup/snapshots/{id1}?location={repo}"),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    all_done(&h, "prune").await;
    let pruned: Vec<serde_json::Value> = h
        .manager
        .jobs
        .list()
        .into_iter()
        .filter(|j| j.kind == "prune")
        .map(|j| j.result.unwrap())
        .collect();
    assert_eq!(pruned.len(), 2, "one prune per forget: {pruned:?}");
    for p in &pruned {
        // Packs of the first copy hold its files' chunks; those also holding a chunk the
        // second copy shares (a file unchanged between them) are repacked, the others
        // marked.
        let touched = p["packs_marked"].as_u64().unwrap() + p["packs_repacked"].as_u64().unwrap();
        assert!(touched > 0, "{p}");
        assert_eq!(p["packs_deleted"], 0, "the first prune only marks: {p}");
    }
    // The second prune deletes what the first marked, unless the delay has not passed.
    let quick2 = repository_job(&h, "/api/v1/repositories/quick/prune").await;
    let careful2 = repository_job(&h, "/api/v1/repositories/careful/prune").await;
    let after = [s3.stored_bytes("quick"), s3.stored_bytes("careful")];
    eprintln!(
        "bucket bytes with two copies {full:?}, after forgetting one and pruning twice \
         {after:?} (quick: keep_delete 0; careful: 23 h)\n{quick2}\n{careful2}"
    );
    assert!(quick2["packs_deleted"].as_u64().unwrap() > 0, "{quick2}");
    assert!(
        after[0] + (25 << 20) < full[0],
        "the first copy's 30 MB are freed: {full:?} → {after:?}"
    );
    assert_eq!(careful2["packs_deleted"], 0, "{careful2}");
    assert!(
        after[1] + (5 << 20) > full[1],
        "within the delay nothing is deleted: {full:?} → {after:?}"
    );

    // What is left is whole: the second snapshot reads back, and the deep check
    // (every pack downloaded) finds nothing.
    let (_, remote) = h.call("GET", "/api/v1/repositories/quick/snapshots").await;
    let remote = remote.as_array().unwrap();
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["snapshot_id"], second["snapshot_id"]);
    let (_dir, folder) = s3.restic_restore("quick", &remote[0]);
    crate::common::assert_same_as_the_archive(&second, &folder);
    let deep = repository_job(&h, "/api/v1/repositories/quick/check?read_data=true").await;
    assert_eq!(deep["errors"], serde_json::json!([]), "{deep}");
    assert_eq!(deep["read_data"], true);
    s3.restic_check("quick");
    s3.restic_check("careful");

    // A pack lost by the storage is found by the check.
    let data = s3.data.path().join("quick/appsnap/data");
    let pack = sh(&format!("find {} -type f | head -1", data.display()));
    fs::remove_file(pack.trim()).unwrap();
    let broken = repository_job(&h, "/api/v1/repositories/quick/check").await;
    assert!(
        !broken["errors"].as_array().unwrap().is_empty(),
        "a missing pack is an error: {broken}"
    );
    // Unknown repository: 404, nothing started.
    let (status, body) = h.call("POST", "/api/v1/repositories/nowhere/prune").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// The appsnap ids a repository holds of `app`, oldest first.
async fn held(h: &Harness, repository: &str, app: &str) -> Vec<String> {
    let (status, remote) = h
        .call(
            "GET",
            &format!("/api/v1/repositories/{repository}/snapshots?app_id={app}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{remote}");
    remote
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["snapshot_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn retention_and_quota_bind_per_repository() {
    let s3 = S3Server::start("kept");
    let app = TestApp::new("");
    let mut repo = s3.repository("offsite", "kept", common_secret());
    repo.keep_delete_secs = 0;
    let h = Harness::with(|c| c.repositories = vec![repo]).await;
    // Keep 3 local snapshots but only the newest 2 offsite.
    let (status, body) = h
        .call_json(
            "PUT",
            &format!("/api/v1/backup/apps/{}/policies", app.id),
            serde_json::json!({
                "retention": {"policy": "keep-last", "config": {"n": 3}},
                "repositories": {"offsite": {"retention": {"policy": "keep-last", "config": {"n": 2}}}},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["repositories"]["offsite"]["retention"]["config"]["n"],
        2
    );
    // A binding naming a repository that is not configured stores nothing.
    let (status, body) = h
        .call_json(
            "PUT",
            &format!("/api/v1/backup/apps/{}/policies", app.id),
            serde_json::json!({"repositories": {"nowhere": {"retention": {"policy": "keep-last", "config": {"n": 1}}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Same-size data each time, so that every tar stream has the same length.
    let mut ids = Vec::new();
    let mut tar_bytes = 0;
    for i in 0..4 {
        random_file(&app.volume_path().join("data"), 200_000);
        let (snap, job) = backup_and_copy(&h, &app.id).await;
        ids.push(snap["snapshot_id"].as_str().unwrap().to_string());
        tar_bytes = snap["tar_bytes"].as_u64().unwrap();
        if i == 1 {
            // Pinned: kept in both places whatever the policies say.
            h.pin(&ids[1], true).await;
        }
        if i == 2 {
            assert_eq!(
                job["result"]["retention"]["deleted"][0]["snapshot_id"], ids[0],
                "the copy's own retention pass forgot the oldest: {job}"
            );
        }
    }
    all_done(&h, "prune").await;
    let local: Vec<String> = h
        .manager
        .list(Some(&app.id))
        .unwrap()
        .into_iter()
        .rev()
        .map(|s| s.snapshot_id)
        .collect();
    assert_eq!(local, ids[1..4], "3 kept locally");
    assert_eq!(
        held(&h, "offsite", &app.id).await,
        ids[1..4],
        "offsite: the newest 2, plus the pinned one"
    );
    let oldest = h.manager.get(&ids[1]).unwrap();
    assert_eq!(oldest.locations, ["local", "offsite"]);

    // On demand, per location: nothing more to forget.
    let (status, report) = h
        .call(
            "POST",
            &format!("/api/v1/backup/apps/{}/retention?location=offsite", app.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["repository"], "offsite");
    assert_eq!(report["deleted"], serde_json::json!([]), "{report}");
    assert_eq!(report["protected"][0]["snapshot_id"], ids[1], "{report}");

    // A quota bound to the repository: room for 2.5 copies. Unpinned, the two oldest
    // copies are evicted once the next copy is complete.
    h.pin(&ids[1], false).await;
    let quota = |max: u64| serde_json::json!({"repositories": {"offsite": {"quota": {"policy": "quota-oldest-first", "config": {"max_bytes": max}}}}});
    let (status, body) = h
        .call_json(
            "PUT",
            &format!("/api/v1/backup/apps/{}/policies", app.id),
            quota(tar_bytes * 5 / 2),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    random_file(&app.volume_path().join("data"), 200_000);
    let (fifth, job) = backup_and_copy(&h, &app.id).await;
    assert_eq!(
        job["result"]["evicted"],
        serde_json::json!([ids[1], ids[2]]),
        "{job}"
    );
    all_done(&h, "prune").await;
    let fifth = fifth["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(held(&h, "offsite", &app.id).await, [ids[3].clone(), fifth]);

    // A copy the quota refuses fails at once (no retry changes a refusal); the local
    // snapshot is untouched.
    let (status, _) = h
        .call_json(
            "PUT",
            &format!("/api/v1/backup/apps/{}/policies", app.id),
            quota(1000),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sixth = h.backup(&app.id).await;
    let job = job_done(&h, &newest_job(&h, "copy", &app.id).await).await;
    assert_eq!(job["state"], "failed", "{job}");
    let id6 = sixth["snapshot_id"].as_str().unwrap();
    let got = h.manager.get(id6).unwrap();
    let copy = &got.facts.copies["offsite"];
    assert_eq!(copy.attempts, 1, "{copy:?}");
    assert!(
        copy.error.as_deref().unwrap().contains("max_bytes"),
        "the policy's reason: {copy:?}"
    );
    assert_eq!(got.locations, ["local"]);
    assert_eq!(
        held(&h, "offsite", &app.id).await.len(),
        2,
        "nothing evicted"
    );
}

#[tokio::test]
async fn a_fetch_cut_by_the_server_dying_leaves_nothing_and_a_download_fetches_it_later() {
    let mut s3 = S3Server::start("fetch");
    let app = TestApp::new("");
    for i in 0..10 {
        random_file(&app.volume_path().join(format!("blob{i}")), 10 << 20);
    }
    let repo = s3.repository("offsite", "fetch", common_secret());
    let h = Harness::with(|c| c.repositories = vec![repo]).await;
    let (snap, _) = backup_and_copy(&h, &app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let recorded = snap["tar_sha256"].as_str().unwrap();
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "only the repository holds it now"
    );
    let state_dir = h.root.path().join(".appsnap");

    // The server dies while the copy comes back: the fetch fails with the repository's
    // error, and leaves no snapshot and no partial file behind.
    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/fetch"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().unwrap().to_string();
    let seen = job_until(&h, &job_id, |j| {
        j.bytes_done > 0 || j.state != appsnap::jobs::JobState::Running
    })
    .await;
    assert_eq!(seen.state, appsnap::jobs::JobState::Running, "{seen:?}");
    s3.kill();
    job_done(&h, &job_id).await;
    let (_, failed) = h.call("GET", &format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    eprintln!("the cut fetch: {}", failed["error"]);
    assert!(
        failed["error"]["details"]
            .as_str()
            .unwrap()
            .contains("offsite"),
        "names the repository: {failed}"
    );
    assert!(h.manager.get(id).is_err(), "nothing half-listed");
    let leftovers: Vec<_> = fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("fetch-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new(), "no partial file left");

    // Back up: a download of the snapshot fetches it, checks it, keeps it, serves it.
    s3.restart();
    let resp = h
        .get_bytes(&format!("/api/v1/backup/snapshots/{id}/download"))
        .await;
    assert_eq!(
        resp.0,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&resp.1)
    );
    let downloaded = tempfile::NamedTempFile::new().unwrap();
    fs::write(downloaded.path(), &resp.1).unwrap();
    let out = sh(&format!(
        "pigz -dc {} | sha256sum",
        downloaded.path().display()
    ));
    assert_eq!(out.split_whitespace().next().unwrap(), recorded);
    let local = h.manager.get(id).expect("kept as a local snapshot");
    assert_eq!(local.locations, ["local", "offsite"]);
    assert_eq!(local.facts.tar_sha256.as_deref(), Some(recorded));
}

#[tokio::test]
async fn the_cli_leaves_a_failed_copy_pending_for_the_service_instead_of_waiting() {
    let s3 = S3Server::start("refusing");
    let app = TestApp::new("");
    fs::write(app.volume_path().join("f"), b"data").unwrap();
    let repo = s3.repository("offsite", "refusing", "not-the-secret");
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.offsite_attempts = 4;
        c.offsite_retry_secs = 3600; // a waiting CLI would hang for an hour
    })
    .await;
    let snap = h.backup(&app.id).await;
    // What `appsnap backup` does before it exits. The timeout only bounds a failure.
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        h.manager.offsite_finished(),
    )
    .await
    .expect("the CLI does not wait through the retry backoff");
    let got = h
        .manager
        .get(snap["snapshot_id"].as_str().unwrap())
        .unwrap();
    let copy = &got.facts.copies["offsite"];
    assert_eq!(copy.state, appsnap::catalog::CopyState::Pending, "{copy:?}");
    assert_eq!(copy.attempts, 1, "{copy:?}");
    assert!(
        copy.error.as_deref().is_some_and(|e| e.contains("offsite")),
        "the attempt's error, naming the repository: {copy:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_never_opens_nor_replaces_the_repository() {
    let s3 = S3Server::start("shared");
    let app = TestApp::new("");
    fs::write(app.volume_path().join("f"), b"data").unwrap();
    let right = s3.repository("offsite", "shared", common_secret());
    let h = Harness::with(|c| c.repositories = vec![right.clone()]).await;
    backup_and_copy(&h, &app.id).await;
    let config = s3.data.path().join("shared/appsnap/config");
    let before = fs::read(&config).unwrap();

    // A second server whose password is wrong: the copy fails, nothing is initialised
    // over the repository, and listing it is a clear 502.
    let mut wrong = right;
    wrong.password = Some("not the password".into());
    let other = Harness::with(|c| {
        c.repositories = vec![wrong];
        c.offsite_attempts = 1;
    })
    .await;
    let snap = other.backup(&app.id).await;
    let job = job_done(&other, &newest_job(&other, "copy", &app.id).await).await;
    assert_eq!(job["state"], "failed", "{job}");
    let got = other
        .manager
        .get(snap["snapshot_id"].as_str().unwrap())
        .unwrap();
    let error = got.facts.copies["offsite"].error.clone().unwrap();
    assert!(error.contains("password does not open it"), "{error}");
    assert_eq!(
        fs::read(&config).unwrap(),
        before,
        "the repository is untouched"
    );
    let (status, body) = other
        .call("GET", "/api/v1/repositories/offsite/snapshots")
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(!body.to_string().contains("not the password"), "{body}");
    // The right password still sees the one copy.
    assert_eq!(held(&h, "offsite", &app.id).await.len(), 1);
}

/// A fetch (or `download?from=`) never replaces a local archive that checks out; it mends
/// a damaged one only with the tar stream the local record names, and the record keeps
/// its server facts (origin above all: an own snapshot never turns into an import).
#[tokio::test]
async fn a_fetch_keeps_a_good_local_archive_and_mends_a_damaged_one_only_with_its_own_stream() {
    use std::os::unix::fs::MetadataExt;
    let s3 = S3Server::start("mend");
    let app = TestApp::new("");
    random_file(&app.volume_path().join("blob"), 2 << 20);
    let repo = s3.repository("offsite", "mend", common_secret());
    let h = Harness::with(|c| c.repositories = vec![repo.clone()]).await;
    let (snap, _) = backup_and_copy(&h, &app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let path = std::path::PathBuf::from(snap["file_path"].as_str().unwrap());
    let before = h.manager.get(&id).unwrap();
    let inode = fs::metadata(&path).unwrap().ino();

    // A good local archive: served as it is, not replaced, the record untouched.
    let (status, bytes) = h
        .get_bytes(&format!(
            "/api/v1/backup/snapshots/{id}/download?from=offsite"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, fs::read(&path).unwrap());
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "not replaced");
    assert_eq!(h.manager.get(&id).unwrap(), before);

    // Damaged: mended from the copy, the record's facts kept.
    let damage = || {
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&path, bytes).unwrap();
    };
    damage();
    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/fetch"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = job_done(&h, job["job_id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let mended = h.manager.get(&id).unwrap();
    assert_eq!(mended.facts.origin, appsnap::catalog::Origin::Manual);
    assert_eq!(
        (
            &mended.facts.created_at,
            &mended.facts.warnings,
            &mended.facts.tar_sha256
        ),
        (
            &before.facts.created_at,
            &before.facts.warnings,
            &before.facts.tar_sha256
        )
    );
    assert_eq!(
        inflated_sha256(&snap),
        before.facts.tar_sha256.clone().unwrap()
    );
    let (status, body) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/verify"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A record naming another tar stream than the copy's: nothing is replaced.
    let catalog = h.root.path().join("snapshots.json");
    let mut list: serde_json::Value = serde_json::from_slice(&fs::read(&catalog).unwrap()).unwrap();
    list[0]["tar_sha256"] = "0".repeat(64).into();
    let h = h
        .reopen(|c| {
            fs::write(&catalog, list.to_string()).unwrap();
            c.repositories = vec![repo];
        })
        .await;
    damage();
    let damaged = fs::read(&path).unwrap();
    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/fetch"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().unwrap();
    job_done(&h, job_id).await;
    // The API's view of the job carries its error (as a request's would be answered).
    let (_, done) = h.call("GET", &format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"]["details"]
            .as_str()
            .unwrap()
            .contains("not the snapshot this server recorded"),
        "{done}"
    );
    assert_eq!(fs::read(&path).unwrap(), damaged, "nothing replaced");
    assert_eq!(
        h.manager.get(&id).unwrap().facts.origin,
        appsnap::catalog::Origin::Manual
    );
}

/// Two servers share a repository and hold copies of one snapshot id (B imported A's
/// snapshot, under another app, and copied it). A forgets only its own copy, and says so
/// when only B's is left; B's copy stays listed, done, and can be fetched back even
/// though its archive names the app it was taken of, not the one B filed it under.
#[tokio::test]
async fn servers_sharing_a_repository_forget_only_their_own_copies() {
    let s3 = S3Server::start("shared");
    let app = TestApp::new("");
    random_file(&app.volume_path().join("blob"), 1 << 20);
    let repo = s3.repository("offsite", "shared", common_secret());
    let a = Harness::with(|c| c.repositories = vec![repo.clone()]).await;
    let b = Harness::with(|c| c.repositories = vec![repo.clone()]).await;
    let (snap, _) = backup_and_copy(&a, &app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let moved = format!("{}_moved", app.id);
    let bytes = fs::read(snap["file_path"].as_str().unwrap()).unwrap();
    let (status, body) = b.import(bytes, &format!("?app_id={moved}")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    b.copy_to(&id, "offsite").await;
    let copies_of_id = |h: &Harness| {
        let (m, id) = (std::sync::Arc::clone(&h.manager), id.clone());
        async move {
            m.remote_snapshots("offsite", None)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.snapshot_id == id)
                .count()
        }
    };
    assert_eq!(copies_of_id(&a).await, 2);

    // A forgets its copy: B's stays.
    let delete = format!("/api/v1/backup/snapshots/{id}?location=offsite");
    let (status, body) = a.call("DELETE", &delete).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(copies_of_id(&a).await, 1, "B's copy is still there");
    let (status, body) = a.call("DELETE", &delete).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("another server"),
        "{body}"
    );
    assert_eq!(copies_of_id(&a).await, 1);
    assert_eq!(b.manager.get(&id).unwrap().locations, ["local", "offsite"]);
    // A's forget started a prune there; B's fetch comes after it (a fetch that reads the
    // index while another server's prune rewrites it fails, and is tried again).
    all_done(&a, "prune").await;

    // B loses its local archive and fetches its copy back, filed under `moved`.
    let (status, body) = b
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, job) = b
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/fetch"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = job_done(&b, job["job_id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let fetched = b.manager.get(&id).unwrap();
    assert_eq!(fetched.app_id, moved);
    assert_eq!(
        fetched.facts.tar_sha256,
        snap["tar_sha256"].as_str().map(String::from)
    );
}

/// A pre-copy backup that reused first-pass members never saw their tar bytes, so it
/// records no tar stream sha256; its first copy takes it from the archive, which is
/// proven the checked one by its sha256 alone (no second full read), and the copy holds
/// exactly that stream.
#[tokio::test]
async fn a_precopy_snapshot_gets_its_tar_hash_at_its_first_copy() {
    let mut s3 = S3Server::start("precopy");
    let app = TestApp::new("");
    for i in 0..4 {
        random_file(&app.volume_path().join(format!("blob{i}")), 4 << 20);
    }
    let repo = s3.repository("offsite", "precopy", common_secret());
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.precopy_racy_secs = Some(1);
    })
    .await;
    // The files are trusted once their ctime is 1 s old: back up until a backup reuses.
    // A file written just before each backup is always read again, so that the archive
    // is assembled (with nothing changed, the first pass is kept and its hash known).
    let mut tries = 0;
    let (snap, job) = loop {
        fs::write(app.volume_path().join("young"), tries.to_string()).unwrap();
        let (snap, job) = backup_and_copy(&h, &app.id).await;
        if snap.get("tar_sha256").is_none() {
            break (snap, job);
        }
        tries += 1;
        assert!(tries < 20, "no backup reused its first pass: {snap}");
    };
    assert!(
        snap["downtime"]["stopped_entries"].as_u64().unwrap() < snap["entries"].as_u64().unwrap(),
        "{snap}"
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = snap["snapshot_id"].as_str().unwrap();
    let (_, now) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(now["tar_sha256"], inflated_sha256(&snap).as_str(), "{now}");
    let (_, remote) = h
        .call("GET", "/api/v1/repositories/offsite/snapshots")
        .await;
    let r = copy_of(&remote, id);
    let (_dir, folder) = s3.restic_restore("precopy", r);
    crate::common::assert_same_as_the_archive(&snap, &folder);
    s3.kill();
}

/// `GET …/files` of `path` in the copy of `id` in repository `offsite`: (status, body).
async fn list_copy(h: &Harness, id: &str, path: &str) -> (StatusCode, serde_json::Value) {
    h.call(
        "GET",
        &format!("/api/v1/backup/snapshots/{id}/files?repository=offsite&path={path}&limit=1000"),
    )
    .await
}

#[tokio::test]
async fn a_copy_is_browsed_from_a_new_server_reading_only_the_chunks_it_needs() {
    let s3 = S3Server::start("browse");
    let app = TestApp::new("");
    crate::common::fill_every_kind(&app.volume_path());
    // 24 MiB of random data before the small file: chunks that a read of the small
    // file must not download.
    random_file(&app.volume_path().join("big.bin"), 24 << 20);
    fs::write(app.volume_path().join("small.txt"), "hello from the copy\n").unwrap();
    let repo = s3.repository("offsite", "browse", common_secret());
    let a = Harness::with(|c| {
        c.repositories = vec![repo.clone()];
        c.offsite_attempts = 1;
    })
    .await;
    let (snap, _) = backup_and_copy(&a, &app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let vol = format!("volumes/{}", app.volume);
    let local = format!("/api/v1/backup/snapshots/{id}/files?path={vol}&limit=1000");
    let (status, on_a) = a.call("GET", &local).await;
    assert_eq!(status, StatusCode::OK, "{on_a}");

    // Server B has nothing local: the copy is listed as A lists its snapshot.
    let b = Harness::with(|c| c.repositories = vec![repo.clone()]).await;
    let (status, _) = b.call("GET", &local).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, top) = list_copy(&b, id, "").await;
    assert_eq!(status, StatusCode::OK, "{top}");
    assert!(
        top["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == vol.as_str() && e["container_path"] == "/data"),
        "{top}"
    );
    let (status, on_b) = list_copy(&b, id, &vol).await;
    assert_eq!(status, StatusCode::OK, "{on_b}");
    assert_eq!(on_b["entries"], on_a["entries"]);
    assert_eq!(on_b["repository"], "offsite");

    // One small file: right bytes, and the download stays far below the copy's size.
    let content = format!(
        "/api/v1/backup/snapshots/{id}/files/content?repository=offsite&path={vol}/small.txt"
    );
    let (status, bytes) = b.get_bytes(&content).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"hello from the copy\n");
    let (_, after) = list_copy(&b, id, &vol).await;
    let downloaded = after["downloaded_bytes"].as_u64().unwrap();
    let tar_bytes = snap["tar_bytes"].as_u64().unwrap_or(24 << 20);
    assert!(
        downloaded < 8 << 20 && downloaded < tar_bytes / 2,
        "{downloaded} bytes downloaded for a listing and a 20-byte file of a {tar_bytes}-byte copy"
    );
    // Every regular file of the tree reads back as the original (a name that is not
    // UTF-8 cannot be named in a URL: left out).
    let mut checked = 0;
    for (path, e) in crate::common::manifest(&app.volume_path(), false) {
        let (Some(sha), Ok(path)) = (&e.sha256, String::from_utf8(path)) else {
            continue;
        };
        let (status, bytes) = b
            .get_bytes(&format!(
                "/api/v1/backup/snapshots/{id}/files/content?repository=offsite&path={}",
                crate::browse::enc(&format!("{vol}/{path}"))
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let got = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(&got, sha, "{path}");
        checked += 1;
    }
    assert!(checked > 3);
    // A folder of the copy comes as a tarball of its tree, read from the copy too.
    let (status, tarball) = b
        .get_bytes(&format!(
            "/api/v1/backup/snapshots/{id}/files/content?repository=offsite&path={vol}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("t.tar.gz"), &tarball).unwrap();
    let listed = sh(&format!(
        "tar -tzf {}",
        dir.path().join("t.tar.gz").display()
    ));
    let top = vol.rsplit('/').next().unwrap();
    for name in ["big.bin", "small.txt"] {
        assert!(listed.contains(&format!("{top}/{name}")), "{listed}");
    }
    assert!(
        b.files().iter().all(|f| !f.ends_with(".tar.gz")),
        "browsing fetched nothing: {:?}",
        b.files()
    );

    // A copy made without its entry index (as copies were before) is refused clearly.
    let plain = "snapshot_20200101T000000Z_0badc0de";
    let archive = std::path::Path::new(snap["file_path"].as_str().unwrap());
    let description = appsnap::offsite::Description {
        appsnap: 1,
        app_id: app.id.clone(),
        snapshot_id: plain.into(),
        created_at: chrono::Utc::now(),
        tar_sha256: inflated_sha256(&snap),
        tar_bytes: snap["tar_bytes"].as_u64().unwrap(),
        entries: None,
        mounts: Vec::new(),
        origin: appsnap::catalog::Origin::Manual,
        note: None,
        root_id: None,
        format: appsnap::offsite::Format::Tar,
        pinned: false,
    };
    let tar =
        appsnap::offsite::Input::Tar(appsnap::archive::read::open_tar_stream(archive, 1).unwrap());
    let progress = std::sync::Arc::new(appsnap::offsite::Progress::default());
    tokio::task::spawn_blocking(move || {
        appsnap::offsite::copy(&repo, &description, None, tar, &progress, None, false)
    })
    .await
    .unwrap()
    .unwrap();
    let (status, body) = list_copy(&b, plain, &vol).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("fetch it"),
        "{body}"
    );
    let (status, _) = b
        .call(
            "GET",
            &format!("/api/v1/backup/snapshots/{id}/files?repository=nowhere&path={vol}"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A copy cancelled while it waits to retry (its server is down, the next attempt an hour
/// away) ends at once: the job `Job cancelled`, the copy recorded `failed` with why, and
/// nothing retries it. Asked for again once the server is back, it is made.
#[tokio::test]
async fn a_copy_cancelled_while_it_waits_to_retry_ends_at_once_and_can_be_asked_again() {
    let mut s3 = S3Server::start("cancelled");
    let app = TestApp::new("");
    random_file(&app.volume_path().join("blob"), 1 << 20);
    let repo = s3.repository("offsite", "cancelled", common_secret());
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.offsite_retry_secs = 3600;
        c.offsite_attempts = 3;
    })
    .await;
    s3.kill();
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let job = newest_job(&h, "copy", &app.id).await;
    let waiting = job_until(&h, &job, |j| {
        j.step.contains("retrying") || j.state != appsnap::jobs::JobState::Running
    })
    .await;
    assert!(waiting.step.contains("retrying in 3600 s"), "{waiting:?}");
    assert!(waiting.cancellable);

    let (status, asked) = h.call("POST", &format!("/api/v1/jobs/{job}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    job_done(&h, &job).await;
    let (_, ended) = h.call("GET", &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(
        (&ended["state"], &ended["error"]["message"]),
        (&"failed".into(), &"Job cancelled".into()),
        "{ended}"
    );
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    let copy = &got["copies"]["offsite"];
    assert_eq!(copy["state"], "failed", "{got}");
    assert!(
        copy["error"]
            .as_str()
            .unwrap()
            .contains("the copy was cancelled on request"),
        "{got}"
    );

    s3.restart();
    h.copy_to(id, "offsite").await;
}

//! Repository kinds and rules beyond S3: a real REST server (rustic_server), append-only
//! repositories (with a stand-in for `rest-server --append-only`), rate limits, and copies
//! of the format before trees.

use std::fs;

use axum::http::StatusCode;

use crate::common::rest::{REST_ADMIN_PASSWORD, REST_PASSWORD, RefusingProxy, RestServer};
use crate::common::{Harness, TestApp, local_repository, manifest};
use crate::offsite::{
    all_done, backup_and_copy, copy_of, inflated_sha256, random_file, repository_job,
};

/// Binds keep-last 1 to `app`'s copies in `offsite` (its local snapshots keep no rule).
async fn keep_only_the_newest_copy(h: &Harness, app: &str) {
    let (status, body) = h
        .call_json(
            "PUT",
            &format!("/api/v1/backup/apps/{app}/policies"),
            serde_json::json!({"repositories": {"offsite": {"retention": {"policy": "keep-last", "config": {"n": 1}}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The repository's snapshot list, as the API gives it.
async fn remote(h: &Harness) -> serde_json::Value {
    let (status, remote) = h
        .call("GET", "/api/v1/repositories/offsite/snapshots")
        .await;
    assert_eq!(status, StatusCode::OK, "{remote}");
    remote
}

/// An admin machine: a copy of the server's policies and an `admin.toml` with full rights
/// on repository `offsite`, whose `repository`, `password` and other lines are `entry`.
struct AdminMachine {
    dir: tempfile::TempDir,
    policies: std::path::PathBuf,
}

impl AdminMachine {
    fn new(h: &Harness, entry: &str) -> AdminMachine {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("server-policies");
        crate::common::sh(&format!(
            "cp -a {} {}",
            h.root.path().join(".appsnap/policies").display(),
            policies.display()
        ));
        fs::write(
            dir.path().join("admin.toml"),
            format!(
                "backup_root = '{}'\n\n[[repositories]]\nname = 'offsite'\n{entry}\
                 keep_delete_secs = 0\n",
                dir.path().display(),
            ),
        )
        .unwrap();
        AdminMachine { dir, policies }
    }

    /// The `appsnap` CLI with the admin's config (success asserted): its stdout.
    fn appsnap(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_appsnap"))
            .arg("--config")
            .arg(self.dir.path().join("admin.toml"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "appsnap {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test]
async fn a_rest_repository_copies_lists_checks_forgets_prunes_and_restores_on_a_new_server() {
    let server = RestServer::start("Modify");
    let mut app = TestApp::new("");
    crate::common::fill_every_kind(&app.volume_path());
    let repo = RestServer::repository(
        "offsite",
        &RestServer::url(server.port),
        "appsnap",
        REST_PASSWORD,
    );
    let (first, second, before) = {
        let a = Harness::with(|c| {
            c.repositories = vec![repo.clone()];
            c.offsite_attempts = 1;
        })
        .await;
        let (first, job) = backup_and_copy(&a, &app.id).await;
        let first = first["snapshot_id"].as_str().unwrap().to_string();
        random_file(&app.volume_path().join("changed"), 300_000);
        let before = manifest(&app.volume_path(), true);
        let (snap, _) = backup_and_copy(&a, &app.id).await;
        let second = snap["snapshot_id"].as_str().unwrap().to_string();

        // Debian's restic restores over REST what appsnap wrote: the app's files.
        let listed = remote(&a).await;
        let copy = copy_of(&listed, &second);
        assert_eq!(copy["tar_sha256"], inflated_sha256(&snap).as_str());
        let target = tempfile::tempdir().unwrap();
        let path = copy["path"].as_str().unwrap();
        let (ok, _) = server.restic(
            "admin",
            REST_ADMIN_PASSWORD,
            &[
                "restore",
                copy["repository_snapshot"].as_str().unwrap(),
                "--target",
                target.path().to_str().unwrap(),
                "--include",
                path,
            ],
        );
        assert!(ok, "restic restore over REST");
        crate::common::assert_same_as_the_archive(
            &snap,
            &target.path().join(path.trim_start_matches('/')),
        );

        // The REST server's password shows nowhere.
        let (_, repos) = a.call("GET", "/api/v1/repositories").await;
        for shown in [repos.to_string(), job.to_string(), listed.to_string()] {
            assert!(!shown.contains(REST_PASSWORD), "{shown}");
        }
        let checked = repository_job(&a, "/api/v1/repositories/offsite/check").await;
        assert_eq!(checked["errors"], serde_json::json!([]), "{checked}");

        // Forget the first copy there; the prune that follows runs over REST too.
        let (status, body) = a
            .call(
                "DELETE",
                &format!("/api/v1/backup/snapshots/{first}?location=offsite"),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        all_done(&a, "prune").await;
        let listed = remote(&a).await;
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(server.files("snapshots"), 1);
        (first, second, before)
    };
    let _ = first;

    // Server A is gone; server B, same configuration, restores the app from REST.
    app.recreate();
    let b = Harness::with(|c| c.repositories = vec![repo]).await;
    let (status, body) = b
        .call(
            "POST",
            &format!("/api/v1/backup/restore/{}/{second}", app.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        manifest(&app.volume_path(), true),
        before,
        "every entry back"
    );
}

#[tokio::test]
async fn a_refused_rest_login_is_named_and_creates_nothing() {
    let server = RestServer::start("Modify");
    let app = TestApp::new("");
    fs::write(app.volume_path().join("data"), "precious\n").unwrap();
    let wrong = "not-the-Rest-pw";
    let repo = RestServer::repository("offsite", &RestServer::url(server.port), "appsnap", wrong);
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.offsite_attempts = 1;
    })
    .await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let job =
        crate::common::job_done(&h, &crate::offsite::newest_job(&h, "copy", &app.id).await).await;
    assert_eq!(job["state"], "failed", "{job}");
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    let error = got["copies"]["offsite"]["error"].as_str().unwrap();
    assert!(
        error.contains("REST server refused the login") && error.contains("(HTTP 403)"),
        "a wrong REST password is told apart from a missing repository: {error}"
    );
    assert!(!error.contains(wrong), "{error}");
    assert!(
        !server.data.path().join("repo/config").exists(),
        "a refused login never creates a repository"
    );
    assert_eq!(got["locations"], serde_json::json!(["local"]), "{got}");
}

#[tokio::test]
async fn an_append_only_repository_is_never_asked_to_delete_and_a_refused_delete_loses_nothing() {
    let server = RestServer::start("Append");
    let proxy = RefusingProxy::start(server.port);
    let app = TestApp::new("");
    let mut repo = RestServer::repository(
        "offsite",
        &RestServer::url(proxy.port),
        "appsnap",
        REST_PASSWORD,
    );
    repo.append_only = true;
    let h = Harness::with(|c| {
        c.repositories = vec![repo.clone()];
        c.offsite_attempts = 1;
    })
    .await;
    // Keep only the newest copy there: the rule this server must leave to its admin.
    keep_only_the_newest_copy(&h, &app.id).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        random_file(&app.volume_path().join("data"), 100_000);
        let (snap, job) = backup_and_copy(&h, &app.id).await;
        assert!(job["result"]["retention"].is_null(), "{job}");
        ids.push(snap["snapshot_id"].as_str().unwrap().to_string());
    }
    assert_eq!(remote(&h).await.as_array().unwrap().len(), 2);

    let refused = |status: StatusCode, body: &serde_json::Value| {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let message = body["message"].as_str().unwrap_or_default().to_string()
            + body["details"].as_str().unwrap_or_default();
        assert!(message.contains("append-only"), "{body}");
    };
    for location in ["offsite", "all"] {
        let (status, body) = h
            .call(
                "DELETE",
                &format!("/api/v1/backup/snapshots/{}?location={location}", ids[0]),
            )
            .await;
        refused(status, &body);
    }
    let retention = format!("/api/v1/backup/apps/{}/retention?location=offsite", app.id);
    let (status, body) = h.call("POST", &retention).await;
    refused(status, &body);
    let (status, body) = h.call("POST", "/api/v1/repositories/offsite/prune").await;
    refused(status, &body);
    // A dry run says what the admin's pass would forget.
    let (status, report) = h.call("POST", &format!("{retention}&dry_run=true")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["deleted"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(
        report["deleted"][0]["snapshot_id"],
        ids[0].as_str(),
        "{report}"
    );
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        proxy.refused.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "appsnap never even tried to delete there"
    );
    let (_, local) = h.call("GET", "/api/v1/backup/snapshots").await;
    assert_eq!(
        local.as_array().unwrap().len(),
        2,
        "nothing local went either"
    );

    // The same store, not marked append-only here: the server's refusal fails the
    // delete cleanly and nothing is lost.
    repo.append_only = false;
    let h = h.reopen(|c| c.repositories = vec![repo]).await;
    let (status, body) = h
        .call(
            "DELETE",
            &format!("/api/v1/backup/snapshots/{}?location=offsite", ids[0]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(proxy.refused.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(
        remote(&h).await.as_array().unwrap().len(),
        2,
        "both copies stay"
    );
    let (_, got) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{}", ids[0]))
        .await;
    assert_eq!(
        got["locations"],
        serde_json::json!(["local", "offsite"]),
        "{got}"
    );

    // The admin machine, with full rights straight on the server and a copy of the
    // server's policies: applies the retention bound there, then prunes.
    let admin = AdminMachine::new(
        &h,
        &format!(
            "repository = 'rest:{}'\npassword = '{}'\n\
             options = {{ rest_user = 'admin', rest_password = '{REST_ADMIN_PASSWORD}' }}\n",
            RestServer::url(server.port),
            crate::common::rest::REPO_PASSWORD,
        ),
    );
    let policies = admin.policies.to_str().unwrap();
    let forget = ["repo", "forget", "offsite", "--policies", policies];
    let dry: serde_json::Value =
        serde_json::from_str(&admin.appsnap(&[&forget[..], &["--dry-run"]].concat())).unwrap();
    assert_eq!(
        dry[0]["deleted"][0]["snapshot_id"],
        ids[0].as_str(),
        "{dry}"
    );
    assert_eq!(
        remote(&h).await.as_array().unwrap().len(),
        2,
        "a dry run forgets nothing"
    );
    let done: serde_json::Value = serde_json::from_str(&admin.appsnap(&forget)).unwrap();
    assert_eq!(
        done[0]["deleted"][0]["snapshot_id"],
        ids[0].as_str(),
        "{done}"
    );
    for _ in 0..2 {
        // Two prunes: the first marks what the forget left unused, the second deletes it.
        assert!(
            admin
                .appsnap(&["repo", "prune", "offsite"])
                .contains("pruned")
        );
    }
    assert_eq!(remote(&h).await.as_array().unwrap().len(), 1);
}

/// When the job's log says `step` began (the first line that starts with it).
fn step_began(job: &serde_json::Value, step: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let line = job["log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["text"].as_str().unwrap().starts_with(step))
        .unwrap_or_else(|| panic!("no step `{step}` in {job}"));
    chrono::DateTime::parse_from_rfc3339(line["at"].as_str().unwrap()).unwrap()
}

/// A 100 MB copy and its fetch, each limited to 8 MiB/s, keep within ±15 % of the limit,
/// measured over the transfer itself: from the job's step that starts it to the step
/// after it (the copy's end; the check of the fetched archive), so that the local
/// archive's check before a first copy does not count.
#[tokio::test]
async fn copies_and_fetches_keep_to_the_repository_rate_limits() {
    let app = TestApp::new("");
    let store = tempfile::tempdir().unwrap();
    let limit_kib = 8192;
    let mut repo = local_repository(
        &store.path().join("repo"),
        &format!("limit_upload_kib = {limit_kib}\nlimit_download_kib = {limit_kib}\n"),
    );
    repo.keep_delete_secs = 0;
    // Random bytes: compression cannot shrink what goes over the wire.
    random_file(&app.volume_path().join("data"), 100_000_000);
    let h = Harness::with(|c| c.repositories = vec![repo]).await;
    let limit = (limit_kib * 1024) as f64;
    let within = |what: &str, bytes: f64, secs: f64| {
        let rate = bytes / secs;
        eprintln!(
            "{what}: {bytes} bytes in {secs:.2} s, {:.0} KiB/s (limit {limit_kib}, {:.3}x)",
            rate / 1024.0,
            rate / limit
        );
        assert!(
            (limit * 0.85..=limit * 1.15).contains(&rate),
            "{what} at {rate} B/s, limit {limit}"
        );
    };

    let (snap, job) = backup_and_copy(&h, &app.id).await;
    let uploaded = job["result"]["bytes_uploaded"].as_u64().unwrap() as f64;
    assert!(uploaded > 100e6, "{job}");
    let ended = chrono::DateTime::parse_from_rfc3339(job["finished_at"].as_str().unwrap()).unwrap();
    let copying = (ended - step_began(&job, "copying to `offsite`")).as_seconds_f64();
    within("upload", uploaded, copying);

    // The local archive goes; a fetch brings it back from the repository, paced too.
    let id = snap["snapshot_id"].as_str().unwrap();
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, job) = h
        .call("POST", &format!("/api/v1/backup/snapshots/{id}/fetch"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job = crate::common::job_done(&h, job["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let downloaded = crate::common::dir_bytes(&store.path().join("repo/data")) as f64;
    let fetching = (step_began(&job, "checking the fetched copy")
        - step_began(&job, "fetching from repository"))
    .as_seconds_f64();
    within("download", downloaded, fetching);
}

#[tokio::test]
async fn a_copy_made_as_one_tar_file_is_still_listed_restored_forgotten_and_pruned() {
    let mut app = TestApp::new("");
    crate::common::fill_every_kind(&app.volume_path());
    let before = manifest(&app.volume_path(), true);
    let store = tempfile::tempdir().unwrap();
    let mut repo = local_repository(&store.path().join("repo"), "");
    repo.keep_delete_secs = 0;

    // Server A backs up; its copy is made the way copies were before trees: one tar file.
    let a = Harness::new().await;
    let snap = a.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let description = appsnap::offsite::Description {
        appsnap: 1,
        app_id: app.id.clone(),
        snapshot_id: id.clone(),
        created_at: chrono::Utc::now(),
        tar_sha256: inflated_sha256(&snap),
        tar_bytes: snap["tar_bytes"].as_u64().unwrap(),
        entries: None,
        mounts: serde_json::from_value(snap["mounts"].clone()).unwrap(),
        origin: appsnap::catalog::Origin::Manual,
        note: None,
        root_id: None,
        format: appsnap::offsite::Format::Tar,
        pinned: false,
    };
    let archive = std::path::PathBuf::from(snap["file_path"].as_str().unwrap());
    let cfg = repo.clone();
    let copied = tokio::task::spawn_blocking(move || {
        let tar = appsnap::archive::read::open_tar_stream(&archive, 1).unwrap();
        let progress = std::sync::Arc::new(appsnap::offsite::Progress::default());
        appsnap::offsite::copy(
            &cfg,
            &description,
            None,
            appsnap::offsite::Input::Tar(tar),
            &progress,
            None,
            false,
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(copied.format, appsnap::offsite::Format::Tar);
    drop(a);

    // Server B: lists it as such, restores from it, forgets it and prunes.
    app.recreate();
    let b = Harness::with(|c| c.repositories = vec![repo]).await;
    let listed = remote(&b).await;
    let copy = copy_of(&listed, &id);
    assert_eq!(copy["format"], "tar", "{copy}");
    assert!(copy["path"].as_str().unwrap().ends_with(".tar"), "{copy}");
    let (status, body) = b
        .call("POST", &format!("/api/v1/backup/restore/{}/{id}", app.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(manifest(&app.volume_path(), true), before);
    let (status, body) = b
        .call(
            "DELETE",
            &format!("/api/v1/backup/snapshots/{id}?location=offsite"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    all_done(&b, "prune").await;
    assert_eq!(remote(&b).await, serde_json::json!([]));
}

#[tokio::test]
async fn the_count_rule_keeps_an_archive_whose_copy_is_still_owed() {
    let app = TestApp::new("");
    // A repository nobody serves: every copy fails and waits to retry (pending).
    let port = crate::common::rest::free_port();
    let repo = RestServer::repository("offsite", &RestServer::url(port), "appsnap", "x");
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.max_snapshots_per_app = 1;
        c.offsite_attempts = 3;
        c.offsite_retry_secs = 3600;
    })
    .await;
    let first = h.backup(&app.id).await;
    let id = first["snapshot_id"].as_str().unwrap();
    let job = crate::offsite::newest_job(&h, "copy", &app.id).await;
    crate::offsite::job_until(&h, &job, |j| j.step.contains("retrying in")).await;
    let (_, pending) = h
        .call("GET", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(
        pending["copies"]["offsite"]["state"], "pending",
        "{pending}"
    );
    h.backup(&app.id).await;
    let (_, list) = h
        .call(
            "GET",
            &format!("/api/v1/backup/snapshots?app_id={}", app.id),
        )
        .await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&id),
        "the first archive stays while its copy is owed: {ids:?}"
    );
}

#[tokio::test]
async fn a_pin_recorded_at_copy_time_keeps_a_copy_from_the_admins_forget() {
    let app = TestApp::new("");
    let store = tempfile::tempdir().unwrap();
    let location = store.path().join("repo");
    // Append-only here: this server never forgets there; its admin does, elsewhere.
    let repo = local_repository(
        &location,
        "append_only = true\ncopy = 'manual'\nkeep_delete_secs = 0\n",
    );
    let h = Harness::with(|c| c.repositories = vec![repo]).await;
    keep_only_the_newest_copy(&h, &app.id).await;
    // Three copies, the first pinned before it was copied (so its copy says so).
    let mut ids = Vec::new();
    for i in 0..3 {
        random_file(&app.volume_path().join("data"), 50_000);
        let snap = h.backup(&app.id).await;
        let id = snap["snapshot_id"].as_str().unwrap().to_string();
        if i == 0 {
            h.pin(&id, true).await;
        }
        h.copy_to(&id, "offsite").await;
        ids.push(id);
    }
    let listed = remote(&h).await;
    assert_eq!(copy_of(&listed, &ids[0])["pinned"], true, "{listed}");
    assert_eq!(copy_of(&listed, &ids[1])["pinned"], false, "{listed}");

    // The admin's pass, with the server's policies: keeps the newest and the pinned one.
    let admin = AdminMachine::new(
        &h,
        &format!("repository = '{}'\npassword = 'pw'\n", location.display()),
    );
    let policies = admin.policies.to_str().unwrap();
    let out = admin.appsnap(&["repo", "forget", "offsite", "--policies", policies]);
    let done: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deleted: Vec<&str> = (done[0]["deleted"].as_array().unwrap().iter())
        .map(|d| d["snapshot_id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, [ids[1].as_str()], "{done}");
    let protected = done[0]["protected"].to_string();
    assert!(protected.contains(&ids[0]), "{done}");
    let held: Vec<String> = (remote(&h).await.as_array().unwrap().iter())
        .map(|r| r["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        held.contains(&ids[0]) && held.contains(&ids[2]) && held.len() == 2,
        "{held:?}"
    );
}

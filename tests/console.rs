//! The web console, server side: pages rendered from the real catalog and Docker, in
//! English and Chinese, with the security headers and access rules of the API; and in a
//! real browser (Chromium driven by Playwright, checked by axe).

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::common::{Harness, Service, TestApp};

/// GET `uri` with `headers`: (status, headers, body as text).
async fn page(
    h: &Harness,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::get(uri).header(header::HOST, "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = h
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// What a browser's own form sends: an `Origin` naming this service.
const ORIGIN: (&str, &str) = ("origin", "http://localhost");

/// POSTs a form (`application/x-www-form-urlencoded`) to `uri`, addressed to
/// `localhost`, with `headers`.
async fn post_form(
    h: &Harness,
    uri: &str,
    body: String,
    headers: &[(&str, &str)],
) -> axum::response::Response {
    let mut req = Request::post(uri)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    h.router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap()
}

/// An answer's status and body, as text.
async fn body_text(resp: axum::response::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Presses Back up now: the form of the page at `page_uri` (its CSRF token), posted to
/// `action`. Returns the job page the answer leads to.
async fn back_up_now(h: &Harness, page_uri: &str, action: &str) -> String {
    let (_, _, body) = page(h, page_uri, &[]).await;
    let resp = post_form(h, action, format!("csrf={}", csrf_of(&body)), &[ORIGIN]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}

/// The CSRF token of a page's first form.
fn csrf_of(body: &str) -> String {
    body.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_string()
}

#[tokio::test]
async fn the_console_lists_the_apps_and_their_snapshots_in_english_and_chinese() {
    let app = TestApp::new("");
    let idle = TestApp::new("");
    let h = Harness::new().await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();

    let (status, headers, body) = page(&h, "/", &[("accept-language", "en-US,en;q=0.9")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(body.contains(r#"<html lang="en">"#), "{body}");
    // The app with a snapshot, and the one Docker runs without any.
    for a in [&app.id, &idle.id] {
        assert!(
            body.contains(&format!(r#"<a href="/apps/{a}">{a}</a>"#)),
            "{a}: {body}"
        );
    }
    assert!(body.contains("running"), "{body}");
    assert!(
        body.contains("never"),
        "the idle app has no snapshot: {body}"
    );

    // Chinese, from the browser's preferences; then chosen, and kept in a cookie.
    let (_, _, zh) = page(&h, "/", &[("accept-language", "zh-CN,zh;q=0.9,en;q=0.5")]).await;
    assert!(zh.contains(r#"<html lang="zh-CN">"#), "{zh}");
    assert!(zh.contains(">应用</h1>"), "{zh}");
    let (_, headers, _) = page(&h, "/?lang=zh", &[("accept-language", "en")]).await;
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("appsnap_lang=zh;"), "{cookie}");
    let (_, _, kept) = page(&h, "/", &[("cookie", "appsnap_lang=zh")]).await;
    assert!(kept.contains(">应用</h1>"), "{kept}");

    // The app's page: its snapshot, newest first; an unknown app is a 404 page.
    let (status, _, body) = page(&h, &format!("/apps/{}", app.id), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(id), "{body}");
    assert!(body.contains("manual"), "{body}");
    let (status, _, body) = page(&h, &format!("/apps/{}", idle.id), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("No snapshot of this app yet."), "{body}");
    for unknown in ["/apps/no_such_app", "/apps/..", "/apps/a%00b"] {
        let (status, headers, body) = page(&h, unknown, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }

    // Back up now: a form with the page's CSRF token starts a backup and shows its job.
    let (_, _, body) = page(&h, &format!("/apps/{}", app.id), &[]).await;
    assert!(!body.contains("Sign out"), "no key, no sign-in: {body}");
    let csrf = csrf_of(&body);
    let backup = format!("/apps/{}/backup", app.id);
    let resp = post_form(&h, &backup, "csrf=forged".into(), &[ORIGIN]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = post_form(&h, &backup, format!("csrf={csrf}"), &[ORIGIN]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let job = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(job.starts_with("/jobs/job_"), "{job}");
    let job_id = job.trim_start_matches("/jobs/");
    crate::common::job_done(&h, job_id).await;
    let (status, _, body) = page(&h, &job, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Done") && body.contains("backup"), "{body}");
    let (_, _, body) = page(&h, &format!("/apps/{}", app.id), &[]).await;
    assert_eq!(body.matches("<code>snapshot_").count(), 2, "{body}");
    // Its job history names the backup's job; its policies are listed (none bound).
    assert!(
        body.contains(&format!(r#"href="/jobs/{job_id}""#)),
        "{body}"
    );
    assert!(
        body.contains("<dt>Retention</dt><dd><code>–</code></dd>"),
        "{body}"
    );

    // Pin, note, delete: each a form with the page's token, each answered by the app's page.
    let back = format!("/apps/{}", app.id);
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/pin"),
        format!("csrf={csrf}&pinned=true"),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[header::LOCATION], back.as_str());
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/note"),
        format!("csrf={csrf}&note=before+the+upgrade"),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let s = h.manager.get(id).unwrap();
    assert!(s.facts.pinned);
    assert_eq!(s.facts.note.as_deref(), Some("before the upgrade"));
    let (status, _, confirm) = page(&h, &format!("/snapshots/{id}/delete"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        confirm.contains(id) && confirm.contains("It is pinned"),
        "{confirm}"
    );
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/delete"),
        "csrf=forged".into(),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(h.manager.get(id).is_ok(), "a forged form deletes nothing");
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/delete"),
        format!("csrf={csrf}"),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(h.manager.get(id).is_err(), "deleted");
    let (_, _, body) = page(&h, &back, &[]).await;
    assert_eq!(body.matches("<code>snapshot_").count(), 1, "{body}");

    // The assets are the binary's own.
    let (status, headers, css) = page(&h, "/assets/console.css", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(css.contains("prefers-color-scheme: dark"));
    // The apps page weighs far less than 150 KB with its assets (HTML, CSS, script,
    // icon; uncompressed).
    let (_, _, html) = page(&h, "/", &[]).await;
    let (_, _, js) = page(&h, "/assets/console.js", &[]).await;
    let (_, _, icon) = page(&h, "/assets/favicon.svg", &[]).await;
    let weight = html.len() + css.len() + js.len() + icon.len();
    assert!(weight < 150_000, "the apps page weighs {weight} bytes");
}

#[tokio::test]
async fn the_console_keeps_the_apis_access_rules() {
    let h = Harness::new().await;
    // Without a key, only loopback names (DNS rebinding).
    let resp = h
        .router
        .clone()
        .oneshot(
            Request::get("/")
                .header(header::HOST, "evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // With a key: a page sends to the sign-in form; the assets stay open.
    let key = "k".repeat(32);
    let h = Harness::with(|c| c.api_key = Some("k".repeat(32))).await;
    let (status, headers, _) = page(&h, "/", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/sign-in");
    let (status, _, form) = page(&h, "/sign-in", &[("accept-language", "zh-CN")]).await;
    assert_eq!(status, StatusCode::OK, "{form}");
    assert!(
        form.contains("API 密钥") && form.contains(r#"type="password""#),
        "{form}"
    );
    let (status, _, _) = page(&h, "/assets/console.css", &[]).await;
    assert_eq!(status, StatusCode::OK);

    // A form post must come from this service's own page, and the key must be right.
    let resp = post_form(&h, "/sign-in", format!("key={key}"), &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "no Origin: not a browser's form"
    );
    let evil = ("origin", "http://evil.example");
    let resp = post_form(&h, "/sign-in", format!("key={key}"), &[evil]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = post_form(&h, "/sign-in", "key=wrong".into(), &[ORIGIN]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let resp = post_form(&h, "/sign-in", format!("key={key}"), &[ORIGIN]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let session = set.split(';').next().unwrap().to_string();
    assert!(!session.contains(&key), "the cookie is not the key");

    // Signed in: the pages, with a sign-out form carrying the session's CSRF token.
    let (status, _, body) = page(&h, "/", &[("cookie", &session)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let csrf = csrf_of(&body);
    let cookie = ("cookie", session.as_str());
    let resp = post_form(&h, "/sign-out", "csrf=forged".into(), &[ORIGIN, cookie]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (status, _, _) = page(&h, "/", &[("cookie", &session)]).await;
    assert_eq!(status, StatusCode::OK, "a forged sign-out ends nothing");
    // A job's event stream (an EventSource sends no key header): by the cookie only.
    let job = h.manager.jobs.create("verify", "some_app");
    let events = format!("/jobs/{}/events", job.id());
    let (status, headers, _) = page(&h, &events, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "no session, no stream");
    assert_eq!(headers[header::LOCATION], "/sign-in");
    job.succeed(serde_json::json!({}));
    let (status, headers, stream) = page(&h, &events, &[("cookie", &session)]).await;
    assert_eq!(status, StatusCode::OK, "{stream}");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(stream.starts_with("event: finished\n"), "{stream}");
    let resp = post_form(&h, "/sign-out", format!("csrf={csrf}"), &[ORIGIN, cookie]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (status, _, _) = page(&h, "/", &[("cookie", &session)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the session ended");
}

/// The service's address as a browser names it (`localhost`: the Host rule wants a
/// loopback name).
fn browser_base(service: &Service) -> String {
    let port = service.addr.rsplit(':').next().unwrap();
    format!("http://localhost:{port}")
}

/// A backup of `app` through the real service's API; its snapshot id.
fn backup_over_http(base: &str, app: &str) -> String {
    let url = format!("{base}/api/v1/backup/{app}");
    let out = std::process::Command::new("curl")
        .args(["-sf", "-X", "POST", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    snap["snapshot_id"].as_str().unwrap().to_string()
}

/// Copies `snapshot` to `repository` through the real service's API and returns once the
/// copy's job has ended (its event stream closes then), asserting it succeeded.
fn copy_over_http(base: &str, snapshot: &str, repository: &str) {
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        out.stdout
    };
    let url = format!("{base}/api/v1/backup/snapshots/{snapshot}/copy?repository={repository}");
    let job: serde_json::Value =
        serde_json::from_slice(&curl(&["-sf", "-X", "POST", &url])).unwrap();
    let job = job["job_id"].as_str().unwrap().to_string();
    curl(&["-sfN", &format!("{base}/api/v1/jobs/{job}/events")]);
    let ended: serde_json::Value =
        serde_json::from_slice(&curl(&["-sf", &format!("{base}/api/v1/jobs/{job}")])).unwrap();
    assert_eq!(ended["state"], "succeeded", "{ended}");
}

#[test]
fn the_console_reads_well_in_chromium_in_both_languages_and_axe_finds_nothing_serious() {
    let app = TestApp::new("");
    let root = tempfile::tempdir().unwrap();
    // A repository on a local path, copied to on request: its screens are shown too.
    let config = root.path().join("appsnap.toml");
    std::fs::write(
        &config,
        format!(
            "[[repositories]]\nname = \"nas\"\nrepository = \"{}\"\n\
             password = \"browser test\"\ncopy = \"manual\"\n",
            root.path().join("repo").display()
        ),
    )
    .unwrap();
    let service = Service::start(
        &root.path().join("backups"),
        &[("APPSNAP_CONFIG", config.to_str().unwrap())],
    );
    let base = browser_base(&service);
    // One snapshot, so the app's page has a row, and its copy.
    let snap = backup_over_http(&base, &app.id);
    copy_over_http(&base, &snap, "nas");
    // An app whose backups wait for /bind/go: one is cancelled from its page.
    let held =
        TestApp::new("--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done'");
    let go = held.bind().join("go");
    crate::common::browser_test(
        "console.mjs",
        &[&base, &app.id, &snap, &held.id, go.to_str().unwrap()],
    );
    assert!(held.running(&held.containers[0]));
}

#[test]
fn signing_in_with_the_key_works_from_the_keyboard_in_chromium() {
    let root = tempfile::tempdir().unwrap();
    let key = "a-long-enough-api-key-for-the-test-0123";
    let service = Service::start(root.path(), &[("APPSNAP_API_KEY", key)]);
    crate::common::browser_test("sign_in.mjs", &[&browser_base(&service), key]);
}

/// The job behind a console redirect to `/jobs/{id}`, once it has ended; then its page.
async fn ended_job_page(h: &Harness, resp: axum::response::Response) -> String {
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let job_id = to.strip_prefix("/jobs/").expect("a job's page");
    crate::common::job_done(h, job_id).await;
    let (status, _, body) = page(h, &to, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_restore_shows_its_pre_checks_asks_for_the_apps_name_and_ends_in_one_of_three_states() {
    use crate::common::manifest;
    let app = TestApp::new_running("", "[ -e /data/broken ] && exit 3;");
    let h = Harness::live(&app.id).await;
    std::fs::write(app.volume_path().join("kept"), "v1").unwrap();
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let snapshot_state = manifest(&app.volume_path(), false);
    std::fs::write(app.volume_path().join("kept"), "v2, after the snapshot").unwrap();
    let before = manifest(&app.volume_path(), false);

    let name = crate::common::sh(&format!(
        "docker inspect -f '{{{{.Name}}}}' {}",
        app.containers[0]
    ));
    let name = name.trim().trim_start_matches('/');
    // The pre-checks: the container that stops, each mount and where it goes, the space,
    // the downtime, the rollback; and the confirmation.
    let uri = format!("/snapshots/{id}/restore");
    let (status, _, body) = page(&h, &uri, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for expected in [
        "Containers stopped, then started again",
        &format!("<code>{}</code>", name),
        &format!("<code>{}</code>", app.volume),
        "replaced (the current data is kept aside",
        "while the app runs",
        "Disk space",
        "About as long as stopping and starting the containers",
        "the data is put back as it was",
        &format!(r#"data-must-be="{}""#, app.id),
    ] {
        assert!(body.contains(expected), "{expected}: {body}");
    }
    // The API answers the same pre-checks.
    let (status, preview) = h
        .call(
            "GET",
            &format!("/api/v1/backup/restore/{}/{id}/preview", app.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["stops"][0], name, "{preview}");
    assert_eq!(preview["fits"], true, "{preview}");
    assert!(
        preview["space"][0]["need"].as_u64().unwrap() > 0,
        "{preview}"
    );
    let other = TestApp::new("");
    let (status, _) = h
        .call(
            "GET",
            &format!("/api/v1/backup/restore/{}/{id}/preview", other.id),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a foreign snapshot");

    // A forged form and a wrong name do nothing.
    let csrf = csrf_of(&body);
    let resp = post_form(
        &h,
        &uri,
        format!("csrf=forged&confirm={}", app.id),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = post_form(&h, &uri, format!("csrf={csrf}&confirm=wrong"), &[ORIGIN]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let wrong = body_text(resp).await.1;
    assert!(
        wrong.contains("is not the app&#39;s name") || wrong.contains("is not the app's name"),
        "{wrong}"
    );
    assert!(h.manager.jobs.list().iter().all(|j| j.kind != "restore"));
    assert_eq!(manifest(&app.volume_path(), false), before);

    // The name typed: the restore runs as a job whose page ends in "Restored".
    let resp = post_form(
        &h,
        &uri,
        format!("csrf={csrf}&confirm={}", app.id),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains(">Restored</h2>"), "{ended}");
    assert!(!ended.contains("rolled back"), "{ended}");
    assert!(
        ended.contains("swapping in the restored data"),
        "the log: {ended}"
    );
    assert_eq!(manifest(&app.volume_path(), false), snapshot_state);

    // Its event stream, by the console's route: at once the one `finished` event.
    let restore_job = h
        .manager
        .jobs
        .list()
        .into_iter()
        .find(|j| j.kind == "restore")
        .unwrap();
    let (status, headers, stream) =
        page(&h, &format!("/jobs/{}/events", restore_job.job_id), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(stream.starts_with("event: finished\n"), "{stream}");

    // A snapshot of a state the app cannot start on: "Failed – rolled back", data intact.
    std::fs::write(app.volume_path().join("broken"), "a bad state").unwrap();
    let bad = h.backup(&app.id).await;
    std::fs::remove_file(app.volume_path().join("broken")).unwrap();
    let before = manifest(&app.volume_path(), false);
    let uri = format!(
        "/snapshots/{}/restore",
        bad["snapshot_id"].as_str().unwrap()
    );
    let resp = post_form(
        &h,
        &uri,
        format!("csrf={csrf}&confirm={}", app.id),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains("Failed – rolled back"), "{ended}");
    assert!(ended.contains("exit code 3"), "the reason: {ended}");
    assert!(!ended.contains(">Restored</h2>"), "{ended}");
    assert_eq!(manifest(&app.volume_path(), false), before);
    assert!(
        app.running(&app.containers[0]),
        "started again on the old data"
    );

    // The jobs page lists both restores.
    let (_, _, jobs) = page(&h, "/jobs", &[]).await;
    assert_eq!(jobs.matches("<td>restore</td>").count(), 2, "{jobs}");
}

#[tokio::test]
async fn under_a_base_path_every_link_and_redirect_keeps_the_prefix_and_a_panel_may_frame_it() {
    let app = TestApp::new("");
    let h = Harness::with(|c| {
        c.base_path = "/appsnap".into();
        c.frame_ancestors = vec!["https://panel.example.com".into()];
    })
    .await;
    let (status, headers, _) = page(&h, "/", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/appsnap");
    let (status, headers, _) = page(&h, "/appsnap/", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/appsnap");
    let (status, headers, body) = page(&h, "/appsnap", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.ends_with("frame-ancestors https://panel.example.com"),
        "{csp}"
    );
    assert!(
        body.contains(&format!(r#"href="/appsnap/apps/{}""#, app.id)),
        "{body}"
    );
    assert!(
        body.contains(r#"href="/appsnap/assets/console.css""#),
        "{body}"
    );
    // Every link and form of the page is under the prefix.
    for attr in [r#"href="/"#, r#"action="/"#, r#"src="/"#] {
        for at in body.match_indices(attr) {
            let rest = &body[at.0 + attr.len()..];
            assert!(
                rest.starts_with("appsnap/") || rest.starts_with("appsnap\""),
                "{}",
                &body[at.0..at.0 + 60]
            );
        }
    }
    let (status, _, _) = page(&h, "/appsnap/assets/console.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = page(&h, "/apps/x", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not outside the prefix");

    // A form's answer leads to a page under the prefix too.
    let to = back_up_now(
        &h,
        &format!("/appsnap/apps/{}", app.id),
        &format!("/appsnap/apps/{}/backup", app.id),
    )
    .await;
    assert!(to.starts_with("/appsnap/jobs/job_"), "{to}");
    crate::common::job_done(&h, to.trim_start_matches("/appsnap/jobs/")).await;
    // The API stays where it was.
    let (status, list) = h.call("GET", "/api/v1/backup/snapshots").await;
    assert_eq!(status, StatusCode::OK, "{list}");
}

#[test]
fn restoring_from_the_keyboard_in_chromium_ends_restored_or_rolled_back() {
    let app = TestApp::new_running("", "[ -e /data/broken ] && exit 3;");
    let root = tempfile::tempdir().unwrap();
    // Live mode, so that a snapshot can hold the state the app cannot start on.
    let config = root.path().join("appsnap.toml");
    std::fs::write(&config, format!("[apps.{}]\nmode = \"live\"\n", app.id)).unwrap();
    let service = Service::start(
        &root.path().join("backups"),
        &[("APPSNAP_CONFIG", config.to_str().unwrap())],
    );
    let base = browser_base(&service);
    let backup = || backup_over_http(&base, &app.id);
    let data = app.volume_path();
    std::fs::write(data.join("kept"), "v1").unwrap();
    let good = backup();
    std::fs::write(data.join("broken"), "a bad state").unwrap();
    let bad = backup();
    std::fs::remove_file(data.join("broken")).unwrap();
    std::fs::write(data.join("kept"), "v2").unwrap();

    crate::common::browser_test("restore.mjs", &[&base, &app.id, &good, &bad]);
    // The good restore put v1 back; the failing one was rolled back to it.
    assert_eq!(std::fs::read_to_string(data.join("kept")).unwrap(), "v1");
    assert!(!data.join("broken").exists());
    assert!(app.running(&app.containers[0]));
}

#[tokio::test]
async fn a_snapshots_page_browses_searches_downloads_and_restores_a_path_beside() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let data = app.volume_path();
    std::fs::create_dir_all(data.join("uploads/2024")).unwrap();
    std::fs::write(data.join("uploads/2024/photo one.jpg"), "JPEG bytes").unwrap();
    std::fs::write(data.join("readme.txt"), "hello").unwrap();
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let vol = format!("volumes/{}", app.volume);

    // The details, the mounts with their container paths, and the top level.
    let (status, _, body) = page(&h, &format!("/snapshots/{id}"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for expected in [
        snap["sha256"].as_str().unwrap(),
        "/data",
        "Browse",
        &app.volume,
    ] {
        assert!(body.contains(expected), "{expected}: {body}");
    }
    // A folder: its entries, folders first as links.
    let (status, _, body) = page(&h, &format!("/snapshots/{id}?path={vol}"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(&format!("?path={vol}/uploads#files")),
        "{body}"
    );
    assert!(body.contains("readme.txt"), "{body}");
    // A search below the folder finds the photo, by its path.
    let (_, _, body) = page(&h, &format!("/snapshots/{id}?path={vol}&q=PHOTO"), &[]).await;
    assert!(
        body.contains(&format!("{vol}/uploads/2024/photo one.jpg")),
        "{body}"
    );
    assert!(!body.contains("readme.txt"), "{body}");
    // A file, downloaded by the link the page gives.
    let link = format!("/snapshots/{id}/file?path={vol}/uploads/2024/photo%20one.jpg");
    assert!(body.contains(&link), "{body}");
    let (status, headers, photo) = page(&h, &link, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(photo, "JPEG bytes");
    assert!(
        headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment"),
    );
    // A path that is not there, or leaves the snapshot: a clear 4xx page.
    for bad in ["no/such", "../etc", "/etc/passwd"] {
        let (status, _, body) = page(&h, &format!("/snapshots/{id}?path={bad}"), &[]).await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
    }

    // Restore beside: the folder comes back next to the current one, the app running.
    std::fs::remove_dir_all(data.join("uploads/2024")).unwrap();
    let (_, _, body) = page(&h, &format!("/snapshots/{id}?path={vol}/uploads"), &[]).await;
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/restore-beside"),
        format!("csrf={}&path={vol}/uploads/2024", csrf_of(&body)),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains(">Restored</h2>"), "{ended}");
    assert!(ended.contains(".restored-"), "the folder it made: {ended}");
    let beside = data.join(format!("uploads/2024.restored-{id}/photo one.jpg"));
    assert_eq!(std::fs::read_to_string(&beside).unwrap(), "JPEG bytes");
    assert!(!data.join("uploads/2024").exists(), "nothing replaced");
    assert!(app.running(&app.containers[0]));
}

#[tokio::test]
async fn the_apps_page_says_which_backup_failed_what_is_stale_and_the_quota_used() {
    let failing = TestApp::new("--label 'appsnap.pre-backup=echo dump failed >&2; exit 3'");
    let old = TestApp::new("");
    let h = Harness::with(|c| c.stale_after_hours = 24).await;
    // A backup that fails, started from the apps page's button.
    let (_, _, body) = page(&h, "/", &[]).await;
    let resp = post_form(
        &h,
        &format!("/apps/{}/backup", failing.id),
        format!("csrf={}", csrf_of(&body)),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains("dump failed"), "{ended}");
    // A snapshot of two days ago (its sidecar dated back), under a quota.
    let snap = h.backup(&old.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();
    let mut s = h.manager.get(id).unwrap();
    s.facts.created_at -= chrono::Duration::hours(49);
    let sidecar = appsnap::catalog::sidecar_path(std::path::Path::new(&s.file_path));
    std::fs::write(&sidecar, serde_json::to_vec(&s.facts).unwrap()).unwrap();
    h.manager.reindex().unwrap();
    let (status, body) = h
        .call_json(
            "PUT",
            &format!("/api/v1/backup/apps/{}/policies", old.id),
            serde_json::json!({"quota": {"policy": "quota-oldest-first", "config": {"max_bytes": 5_000_000_000u64}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, _, body) = page(&h, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let row = |app: &str| {
        let at = body.find(&format!(r#"<a href="/apps/{app}">"#)).unwrap();
        body[at..at + body[at..].find("</tr>").unwrap()].to_string()
    };
    let failed = row(&failing.id);
    assert!(
        failed.contains("last backup failed") && failed.contains("dump failed"),
        "{failed}"
    );
    let stale = row(&old.id);
    assert!(stale.contains("stale: no recent backup"), "{stale}");
    assert!(stale.contains("2 days ago"), "{stale}");
    assert!(stale.contains(" of 5.0 GB"), "{stale}");
    assert!(stale.contains("only on request"), "{stale}");
}

#[tokio::test]
async fn the_policies_page_dry_runs_a_policy_in_words_and_shows_why_an_upload_is_refused() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    h.backup(&app.id).await;
    h.backup(&app.id).await;
    let (status, _, body) = page(&h, "/policies", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for name in [
        "keep-last",
        "gfs",
        "quota-oldest-first",
        "daily-weekly-cron",
    ] {
        assert!(
            body.contains(&format!("<code>{name}</code>")),
            "{name}: {body}"
        );
    }
    let csrf = csrf_of(&body);
    let dry = |policy: &str, config: &str| {
        format!(
            "csrf={csrf}&policy={policy}&app={}&config={}",
            app.id,
            config
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        )
    };

    // Retention: which would go, and why; nothing goes.
    let resp = post_form(
        &h,
        "/policies/dry-run",
        dry("keep-last", r#"{"n": 1}"#),
        &[ORIGIN],
    )
    .await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("Would delete (1)") && body.contains("Would keep (1)"),
        "{body}"
    );
    assert_eq!(
        h.manager.list(Some(&app.id)).unwrap().len(),
        2,
        "a dry run deletes nothing"
    );
    // A schedule: in words, and its next five runs.
    let resp = post_form(
        &h,
        "/policies/dry-run",
        dry(
            "daily-weekly-cron",
            r#"{"weekly": {"day": "sun", "at": "03:00"}}"#,
        ),
        &[ORIGIN],
    )
    .await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("every week on Sunday 03:00 (UTC)"), "{body}");
    assert_eq!(body.matches("03:00 UTC</td>").count(), 5, "{body}");
    // Settings that are not JSON, or that the policy refuses: 422 with the reason.
    let resp = post_form(
        &h,
        "/policies/dry-run",
        dry("keep-last", "{last"),
        &[ORIGIN],
    )
    .await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("The settings are not JSON"), "{body}");
    let resp = post_form(
        &h,
        "/policies/dry-run",
        dry("keep-last", r#"{"n": "x"}"#),
        &[ORIGIN],
    )
    .await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("the policy refuses these settings"), "{body}");
    assert!(body.contains("Would delete (0)"), "{body}");

    // Binding from the page: checked by the policy first; a refusal changes nothing.
    let bind = |config: &str| {
        format!(
            "csrf={csrf}&target={}&slot=retention&policy=keep-last&config={}",
            app.id,
            config
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        )
    };
    let resp = post_form(&h, "/policies/bind", bind(r#"{"n": "x"}"#), &[ORIGIN]).await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        h.manager
            .policies
            .bindings(Some(&app.id))
            .retention
            .is_none()
    );
    let resp = post_form(&h, "/policies/bind", bind(r#"{"n": 5}"#), &[ORIGIN]).await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bound = h
        .manager
        .policies
        .bindings(Some(&app.id))
        .retention
        .unwrap();
    assert_eq!(
        (bound.policy.as_str(), bound.config["n"].as_u64()),
        ("keep-last", Some(5))
    );
    assert!(body.contains(&format!("Bound for {}", app.id)), "{body}");
    assert!(
        body.contains("<code>keep-last {&#34;n&#34;:5}</code>"),
        "{body}"
    );

    // An upload that is not a component: refused with the engine's reason, nothing stored.
    let boundary = "appsnapboundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nmine\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"x.wasm\"\r\n\
         Content-Type: application/wasm\r\n\r\nnot wasm at all\r\n--{boundary}--\r\n"
    );
    let req = Request::post("/policies/upload")
        .header(header::HOST, "localhost")
        .header("origin", "http://localhost")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(multipart))
        .unwrap();
    let (status, body) = body_text(h.router.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("role=\"alert\""), "{body}");
    let (_, list) = h.call("GET", "/api/v1/policies").await;
    assert!(
        list.as_array().unwrap().iter().all(|p| p["name"] != "mine"),
        "{list}"
    );
}

#[tokio::test]
async fn repositories_and_alerts_verify_copy_check_and_send_a_test_from_the_console() {
    use crate::common::S3Server;
    let s3 = S3Server::start("console");
    let mut repo = s3.repository("offsite", "console", crate::common::S3_SECRET);
    repo.copy = appsnap::offsite::CopyWhen::Manual; // copied from the page, not after the backup
    let app = TestApp::new("");
    std::fs::write(app.volume_path().join("hello.txt"), b"hello from the copy").unwrap();
    let dead: appsnap::notify::Target = serde_json::from_value(serde_json::json!({
        "name": "ops-hook", "type": "webhook", "url": "http://127.0.0.1:9/hook"
    }))
    .unwrap();
    let h = Harness::with(|c| {
        c.repositories = vec![repo];
        c.notify = vec![dead];
    })
    .await;
    let snap = h.backup(&app.id).await;
    let id = snap["snapshot_id"].as_str().unwrap();

    // The snapshot's page: download, verify, copy to the repository.
    let (_, _, body) = page(&h, &format!("/snapshots/{id}"), &[]).await;
    let csrf = csrf_of(&body);
    assert!(body.contains(r#"<option>offsite</option>"#), "{body}");
    let (status, archive) = h.get_bytes(&format!("/snapshots/{id}/download")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        archive,
        std::fs::read(&h.manager.get(id).unwrap().file_path).unwrap()
    );
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/verify"),
        format!("csrf={csrf}"),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let (_, _, body) = page(&h, &to, &[]).await;
    assert!(body.contains("Verified: every entry reads"), "{body}");
    let resp = post_form(
        &h,
        &format!("/snapshots/{id}/copy"),
        format!("csrf={csrf}&repository=offsite"),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains("Done"), "{ended}");

    // The copy's state on the snapshot's page, what it added offsite on the apps page.
    let (_, _, body) = page(&h, &format!("/snapshots/{id}"), &[]).await;
    assert!(
        body.contains("<dt>Copy to offsite</dt><dd>done</dd>"),
        "{body}"
    );
    let (_, _, body) = page(&h, "/", &[]).await;
    assert!(body.contains("<small>offsite "), "{body}");
    // The repository's page lists the copy; a check runs as a job.
    let (status, _, body) = page(&h, "/repositories", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(r#"href="/repositories/offsite""#) && body.contains("ops-hook"),
        "{body}"
    );
    let (status, _, body) = page(&h, "/repositories/offsite", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(id), "{body}");
    let (status, _, _) = page(&h, "/repositories/nope", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = post_form(
        &h,
        "/repositories/offsite/check",
        format!("csrf={csrf}"),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains("Done"), "{ended}");

    // Bindings per repository: what the app's copies there keep. A schedule is the
    // app's, not a repository's; an unknown repository is refused. Nothing changes then.
    let bind = |repository: &str, slot: &str| {
        format!(
            "csrf={csrf}&target={}&repository={repository}&slot={slot}&policy=keep-last&config=%7B%22n%22%3A+3%7D",
            app.id
        )
    };
    let (_, _, body) = page(&h, "/policies", &[]).await;
    assert!(
        body.contains(r#"<option value="offsite">Repository offsite</option>"#),
        "{body}"
    );
    for (repository, slot) in [("offsite", "schedule"), ("nope", "retention")] {
        let resp = post_form(&h, "/policies/bind", bind(repository, slot), &[ORIGIN]).await;
        let (status, body) = body_text(resp).await;
        assert!(status.is_client_error(), "{status} {body}");
        assert_eq!(
            h.manager.policies.bindings(Some(&app.id)),
            Default::default()
        );
    }
    let resp = post_form(
        &h,
        "/policies/bind",
        bind("offsite", "retention"),
        &[ORIGIN],
    )
    .await;
    let (status, body) = body_text(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bound = h.manager.policies.bindings(Some(&app.id));
    assert!(bound.retention.is_none(), "the local slot is untouched");
    let kept = bound.repositories["offsite"].retention.clone().unwrap();
    assert_eq!(
        (kept.policy.as_str(), kept.config["n"].as_u64()),
        ("keep-last", Some(3))
    );
    assert!(body.contains("<code>offsite</code>: keep-last"), "{body}");

    // A snapshot only the repository holds now: its page lists the files read from there,
    // a file downloads from there, and a restore fetches it, after the typed name.
    let before = crate::common::manifest(&app.volume_path(), true);
    let wanted = std::fs::read(app.volume_path().join("hello.txt")).unwrap();
    let (status, _) = h
        .call("DELETE", &format!("/api/v1/backup/snapshots/{id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    std::fs::write(app.volume_path().join("hello.txt"), b"changed since").unwrap();
    let (_, _, body) = page(&h, &format!("/apps/{}", app.id), &[]).await;
    let listed = format!("/repositories/offsite?app={}", app.id);
    assert!(body.contains(&format!(r#"href="{listed}""#)), "{body}");
    let (status, _, body) = page(&h, &listed, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let copy = format!("/repositories/offsite/snapshots/{id}");
    assert!(
        body.contains(&format!(r#"href="{copy}/restore""#)),
        "{body}"
    );
    let (status, _, body) = page(&h, &copy, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("kept in a repository"), "{body}");
    let (status, _, body) = page(&h, &format!("{copy}?path=volumes"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = page(&h, &format!("{copy}?q=hello.txt"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let file = body
        .split(r#"href=""#)
        .map(|rest| rest.split('"').next().unwrap())
        .find(|link| link.starts_with(&format!("{copy}/file?path=")) && link.ends_with("hello.txt"))
        .unwrap_or_else(|| panic!("a download link for hello.txt: {body}"))
        .to_string();
    assert!(
        !body.contains("restore-beside"),
        "only a local snapshot restores beside"
    );
    let (status, bytes) = h.get_bytes(&file).await;
    assert_eq!((status, bytes), (StatusCode::OK, wanted));
    let (status, _, body) = page(&h, &format!("{copy}/restore"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Fetched first"), "{body}");
    assert!(
        body.contains(&format!(r#"action="{copy}/restore""#)),
        "{body}"
    );
    let resp = post_form(
        &h,
        &format!("{copy}/restore"),
        format!("csrf={csrf}&confirm=wrong"),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(h.manager.get(id).is_err(), "nothing fetched");
    let resp = post_form(
        &h,
        &format!("{copy}/restore"),
        format!("csrf={csrf}&confirm={}", app.id),
        &[ORIGIN],
    )
    .await;
    let ended = ended_job_page(&h, resp).await;
    assert!(ended.contains("Restored"), "{ended}");
    assert_eq!(crate::common::manifest(&app.volume_path(), true), before);
    let (status, _, _) = page(
        &h,
        "/repositories/offsite/snapshots/snapshot_19990101T000000Z_00000000",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A test alert to a target that is down: the page says it failed, and why.
    let resp = post_form(
        &h,
        "/alerts/test",
        format!("csrf={csrf}&target=ops-hook"),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_text(resp).await.1;
    assert!(
        body.contains(r#"<span class="status bad">failed</span> <code>ops-hook</code>:"#),
        "{body}"
    );
    let resp = post_form(
        &h,
        "/alerts/test",
        "csrf=forged&target=ops-hook".to_string(),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// A running backup's page offers Cancel; pressing it (with the page's CSRF token) asks
/// the job to stop and shows it again, saying so; the job ends cancelled and its page
/// has no button any more. A form without the token changes nothing.
#[tokio::test]
async fn a_running_jobs_page_cancels_it() {
    let app =
        TestApp::new("--label 'appsnap.pre-backup=while [ ! -e /bind/go ]; do sleep 0.05; done'");
    let h = Harness::new().await;
    let to = back_up_now(&h, "/", &format!("/apps/{}/backup", app.id)).await;
    let (status, _, body) = page(&h, &to, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let form = format!(r#"action="{to}/cancel""#);
    assert!(
        body.contains(&form) && body.contains("Cancel this job"),
        "{body}"
    );

    let forged = post_form(&h, &format!("{to}/cancel"), "csrf=forged".into(), &[ORIGIN]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let job_id = to.strip_prefix("/jobs/").unwrap();
    assert!(!h.manager.jobs.get(job_id).unwrap().info().cancel_requested);

    let resp = post_form(
        &h,
        &format!("{to}/cancel"),
        format!("csrf={}", csrf_of(&body)),
        &[ORIGIN],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[header::LOCATION], to.as_str());
    let (_, _, body) = page(&h, &to, &[]).await;
    assert!(
        body.contains("Cancel asked for") && !body.contains(&form),
        "{body}"
    );

    std::fs::write(app.bind().join("go"), "").unwrap();
    crate::common::job_done(&h, job_id).await;
    let (_, _, body) = page(&h, &to, &[("accept-language", "zh-CN")]).await;
    assert!(
        body.contains("the backup was cancelled on request"),
        "{body}"
    );
    assert!(!body.contains("取消此任务"), "{body}");
}

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

    // With a key, the pages say that sign-in is needed (HTML, in the browser's language);
    // the assets stay open.
    let h = Harness::with(|c| c.api_key = Some("k".repeat(32))).await;
    let (status, headers, body) = page(&h, "/", &[("accept-language", "zh-CN")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.contains("需要登录"), "{body}");
    let (status, _, _) = page(&h, "/assets/console.css", &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn the_console_reads_well_in_chromium_in_both_languages_and_axe_finds_nothing_serious() {
    let app = TestApp::new("");
    let root = tempfile::tempdir().unwrap();
    let service = Service::start(root.path(), &[]);
    let base = format!(
        "http://localhost:{}",
        service.addr.rsplit(':').next().unwrap()
    );
    // One snapshot, so the app's page has a row.
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            &format!("{base}/api/v1/backup/{}", app.id),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::common::browser_test("console.mjs", &[&base, &app.id]);
}

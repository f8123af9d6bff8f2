//! WASM policies with real components: the built-ins from `policies/`, and hostile test
//! guests built from `policies/test-guests/` by the same build (looping, hoarding memory,
//! naming snapshots they were not shown, deleting everything, a foreign world, a newer
//! WIT). Retention, quota and the scheduler act on real snapshots of a real app.

use std::time::{Duration, Instant};

use appsnap::policy::engine::SnapshotInfo;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, TimeZone, Utc};

use crate::common::{Harness, TestApp, sh};

fn guest(file: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{file}.wasm", env!("APPSNAP_GUESTS_DIR")))
        .expect("guest built by build.rs")
}

async fn put_policy(h: &Harness, name: &str, bytes: Vec<u8>) -> (StatusCode, serde_json::Value) {
    h.call_with(
        Request::put(format!("/api/v1/policies/{name}"))
            .header("content-type", "application/wasm")
            .body(Body::from(bytes))
            .unwrap(),
    )
    .await
}

async fn send_json(
    h: &Harness,
    method: &str,
    uri: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    h.call_json(method, uri, body).await
}

async fn bind(
    h: &Harness,
    app: &str,
    bindings: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    send_json(
        h,
        "PUT",
        &format!("/api/v1/backup/apps/{app}/policies"),
        bindings,
    )
    .await
}

fn ids(h: &Harness, app: &str) -> Vec<String> {
    h.manager
        .list(Some(app))
        .unwrap()
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect()
}

#[tokio::test]
async fn builtins_are_listed_and_bad_uploads_get_precise_422s() {
    let h = Harness::new().await;
    let (status, list) = h.call("GET", "/api/v1/policies").await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, kind) in [
        ("keep-last", "retention"),
        ("keep-within", "retention"),
        ("gfs", "retention"),
        ("quota-oldest-first", "quota"),
        ("daily-weekly-cron", "schedule"),
    ] {
        assert!(
            kinds.contains(&(name.into(), kind.into())),
            "{name} missing: {kinds:?}"
        );
    }

    for (what, bytes, expect) in [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "wrong world",
            guest("wrong_world"),
            "exports none of the worlds",
        ),
        ("newer WIT", guest("newer_wit"), "appsnap:policy"),
    ] {
        let (status, body) = put_policy(&h, "candidate", bytes).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["message"], "Invalid policy component", "{what}");
        assert!(
            body["details"].as_str().unwrap().contains(expect),
            "{what}: {body}"
        );
    }
    let (status, body) = put_policy(&h, "candidate", vec![0u8; 17 << 20]).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("Upload too large")),
        "{body}"
    );
    let (status, _) = h.call("GET", "/api/v1/policies/candidate").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
    let (status, _) = put_policy(&h, "gfs", guest("delete_all")).await;
    assert_eq!(status, StatusCode::CONFLICT, "built-in names are taken");
    let (status, _) = put_policy(&h, "..%2Fx", guest("delete_all")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Each hostile guest is stopped or its answer refused within about a second, deletes
/// nothing it must not, and the service answers other requests meanwhile.
#[tokio::test]
async fn hostile_policies_are_contained() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let first = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    h.backup(&app.id).await;
    h.backup(&app.id).await;
    let (status, _) = send_json(
        &h,
        "PATCH",
        &format!("/api/v1/backup/snapshots/{first}"),
        serde_json::json!({"pinned": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let all = ids(&h, &app.id);

    for (name, file, expect) in [
        ("looper", "loop_forever", "time budget"),
        ("hoarder", "alloc_forever", "memory"),
        ("liar", "unknown_ids", "not shown"),
    ] {
        let (status, body) = put_policy(&h, name, guest(file)).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        assert_eq!(body["kind"], "retention");
        let (status, body) = bind(
            &h,
            &app.id,
            serde_json::json!({"retention": {"policy": name, "config": {}}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let start = Instant::now();
        let uri = format!("/api/v1/backup/apps/{}/retention", app.id);
        let (run, health) = tokio::join!(h.call("POST", &uri), async {
            tokio::time::sleep(Duration::from_millis(100)).await; // let the policy start first
            let t = Instant::now();
            let r = h.call("GET", "/api/v1/backup/snapshots").await;
            (r.0, t.elapsed())
        });
        let elapsed = start.elapsed();
        assert_eq!(run.0, StatusCode::OK, "{name}: {}", run.1);
        let error = run.1["error"].as_str().unwrap_or_default();
        assert!(error.contains(expect), "{name}: {}", run.1);
        assert!(elapsed < Duration::from_secs(3), "{name} took {elapsed:?}");
        assert_eq!(health.0, StatusCode::OK);
        assert!(
            health.1 < Duration::from_millis(500),
            "{name}: other requests waited {:?}",
            health.1
        );
        assert_eq!(ids(&h, &app.id), all, "{name}: nothing deleted");
        let (_, info) = h.call("GET", &format!("/api/v1/policies/{name}")).await;
        assert!(
            info["failures"].as_u64().unwrap() >= 1 && info["last_error"].is_string(),
            "{info}"
        );
    }

    // A policy that deletes everything: only the host rules stand between it and the data.
    put_policy(&h, "wrecker", guest("delete_all")).await;
    bind(
        &h,
        &app.id,
        serde_json::json!({"retention": {"policy": "wrecker"}}),
    )
    .await;
    let (_, report) = h
        .call("POST", &format!("/api/v1/backup/apps/{}/retention", app.id))
        .await;
    let left = ids(&h, &app.id);
    assert_eq!(left.len(), 2, "{report}");
    assert!(left.contains(&first), "pinned survives");
    assert!(left.contains(&all[0]), "the newest survives");
    assert_eq!(report["protected"].as_array().unwrap().len(), 2, "{report}");
}

fn builtin(name: &str) -> &'static [u8] {
    appsnap::policy::BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

/// The schedule policy's answers, in time zones and through DST changes (Berlin, 2026:
/// clocks go forward on 29 March at 02:00, back on 25 October at 03:00).
#[test]
fn schedule_known_answers_in_time_zones() {
    let engine = appsnap::policy::shared();
    let cron = engine.load_builtin(builtin("daily-weekly-cron")).unwrap();
    let berlin = r#"{"daily": "02:30", "tz": "Europe/Berlin"}"#;
    let cases = [
        (
            "winter: 02:30 CET",
            berlin,
            "2026-01-10T12:00:00Z",
            "2026-01-11T01:30:00Z",
        ),
        (
            "summer: 02:30 CEST",
            berlin,
            "2026-07-10T12:00:00Z",
            "2026-07-11T00:30:00Z",
        ),
        (
            "02:30 does not exist: the first minute after the gap",
            berlin,
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
        ),
        (
            "02:30 happens twice: the first",
            berlin,
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
        ),
        (
            "…and only once",
            berlin,
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
        ),
        (
            "weekly, in New York",
            r#"{"weekly": {"day": "sun", "at": "03:00"}, "tz": "America/New_York"}"#,
            "2026-11-25T00:00:00Z",
            "2026-11-29T08:00:00Z",
        ),
        (
            "names",
            r#"{"cron": "0 3 * * MON-FRI"}"#,
            "2026-11-28T00:00:00Z",
            "2026-11-30T03:00:00Z",
        ),
        (
            "@daily, UTC by default",
            r#"{"cron": "@daily"}"#,
            "2026-11-28T10:00:00Z",
            "2026-11-29T00:00:00Z",
        ),
    ];
    for (what, config, last, next) in cases {
        assert_eq!(
            engine.validate_config(&cron, config).unwrap(),
            Ok(()),
            "{what}"
        );
        let got = engine
            .next_run(&cron, at(last), config, Some(at(last)))
            .unwrap();
        assert_eq!(got, Some(at(next)), "{what}: from {last}");
    }
    for (config, why) in [
        (r#"{"daily": "02:30", "tz": "Mars/Olympus"}"#, "IANA"),
        (r#"{"cron": "61 * * * *"}"#, "cron"),
        (r#"{"daily": "02:30", "cron": "@daily"}"#, "exactly one"),
    ] {
        let refused = engine.validate_config(&cron, config).unwrap().unwrap_err();
        assert!(refused.contains(why), "{config}: {refused}");
    }
}

fn at(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp()
}

fn snap(id: &str, t: &str) -> SnapshotInfo {
    SnapshotInfo {
        id: id.into(),
        app_id: "a".into(),
        created_at: at(t),
        size: 1,
        origin: "manual".into(),
        pinned: false,
        verified: true,
    }
}

/// GFS against a table of snapshot times with known answers: leap days, month and year
/// ends, ISO weeks across the new year, snapshots from the future.
#[test]
fn gfs_known_answers() {
    let engine = appsnap::policy::shared();
    let gfs = engine.load_builtin(builtin("gfs")).unwrap();
    let cases: Vec<(&str, &str, Vec<SnapshotInfo>, Vec<&str>)> = vec![
        (
            "leap day",
            r#"{"daily": 3}"#,
            vec![
                snap("feb28", "2024-02-28T10:00:00Z"),
                snap("feb29a", "2024-02-29T09:00:00Z"),
                snap("feb29b", "2024-02-29T18:00:00Z"),
                snap("mar1a", "2024-03-01T00:00:00Z"),
                snap("mar1b", "2024-03-01T23:59:00Z"),
            ],
            vec!["feb28", "feb29b", "mar1b"],
        ),
        (
            "ISO weeks over new year",
            r#"{"weekly": 2}"#,
            vec![
                snap("w52", "2025-12-28T12:00:00Z"),
                snap("w01wed", "2025-12-31T12:00:00Z"),
                snap("w01sun", "2026-01-04T23:00:00Z"),
                snap("w02mon", "2026-01-05T01:00:00Z"),
            ],
            vec!["w01sun", "w02mon"],
        ),
        (
            "monthly or yearly",
            r#"{"monthly": 2, "yearly": 2}"#,
            vec![
                snap("y2024", "2024-06-01T00:00:00Z"),
                snap("dec31", "2025-12-31T23:59:59Z"),
                snap("jan15", "2026-01-15T00:00:00Z"),
                snap("jan31", "2026-01-31T00:00:00Z"),
            ],
            vec!["dec31", "jan31"],
        ),
        (
            "future and last",
            r#"{"last": 1}"#,
            vec![
                snap("future", "2026-03-02T12:00:00Z"),
                snap("h1", "2026-03-01T11:00:00Z"),
                snap("h2", "2026-03-01T10:00:00Z"),
            ],
            vec!["future", "h1"],
        ),
        (
            "unlimited hourly",
            r#"{"hourly": -1}"#,
            vec![
                snap("a", "2026-03-01T10:05:00Z"),
                snap("b", "2026-03-01T10:55:00Z"),
                snap("c", "2026-03-01T11:00:00Z"),
            ],
            vec!["b", "c"],
        ),
    ];
    let now = at("2026-03-01T12:00:00Z").max(0);
    for (name, config, snaps, want) in cases {
        let now = if name == "leap day" {
            at("2024-03-02T00:00:00Z")
        } else if name == "ISO weeks over new year" {
            at("2026-01-06T00:00:00Z")
        } else if name == "monthly or yearly" {
            at("2026-02-01T00:00:00Z")
        } else {
            now
        };
        let verdicts = engine.retention(&gfs, now, config, &snaps).unwrap();
        let mut kept: Vec<&str> = verdicts
            .iter()
            .filter(|v| v.keep)
            .map(|v| v.id.as_str())
            .collect();
        kept.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(kept, want, "{name}: {verdicts:?}");
    }
    let v = engine
        .retention(
            &gfs,
            at("2024-03-02T00:00:00Z"),
            r#"{"daily": 3, "monthly": 1}"#,
            &[snap("x", "2024-02-29T18:00:00Z")],
        )
        .unwrap();
    assert_eq!(v[0].reason, "daily 2024-02-29, monthly 2024-02");
    assert!(
        engine
            .validate_config(&gfs, r#"{"daily": -2}"#)
            .unwrap()
            .is_err()
    );
    assert!(engine.validate_config(&gfs, r#"{}"#).unwrap().is_err());
}

#[tokio::test]
async fn bound_retention_deletes_exactly_the_expected_snapshots() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let (status, body) = bind(
        &h,
        &app.id,
        serde_json::json!({"retention": {"policy": "keep-last", "config": {"n": "x"}}}),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Invalid policy configuration")
        ),
        "{body}"
    );
    let (status, _) = bind(&h, &app.id, serde_json::json!({"retention": {"policy": "quota-oldest-first", "config": {"max_bytes": 1}}})).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a quota policy in the retention slot"
    );

    // An operator's own policy: keep-last uploaded under another name, then bound.
    let (status, body) = put_policy(&h, "mine", appsnap::policy::BUILTINS[0].1.to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = bind(
        &h,
        &app.id,
        serde_json::json!({"retention": {"policy": "mine", "config": {"n": 2}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(h.backup(&app.id).await);
    }
    let left = ids(&h, &app.id);
    let newest2: Vec<String> = made
        .iter()
        .rev()
        .take(2)
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, newest2);
    for s in &made[..2] {
        assert!(
            !std::path::Path::new(s["file_path"].as_str().unwrap()).exists(),
            "deleted from disk too"
        );
    }
    // Dry runs change nothing.
    let (status, dry) = send_json(
        &h,
        "POST",
        "/api/v1/policies/keep-last/dry-run",
        serde_json::json!({"app_id": app.id, "config": {"n": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(ids(&h, &app.id), newest2);
    // Bound policies cannot be deleted; a new version swaps in.
    let (status, _) = h.call("DELETE", "/api/v1/policies/mine").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = put_policy(&h, "mine", guest("delete_all")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["versions"].as_array().unwrap().len(), 2);
    bind(&h, &app.id, serde_json::json!({})).await;
    let (status, _) = h.call("DELETE", "/api/v1/policies/mine").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn quota_denies_and_evicts_after_the_new_snapshot() {
    let app = TestApp::new("");
    sh(&format!(
        "head -c 100000 /dev/urandom > {}/photo.jpg",
        app.volume_path().display()
    ));
    let h = Harness::new().await;
    let (status, _) = bind(&h, &app.id, serde_json::json!({"quota": {"policy": "quota-oldest-first", "config": {"max_bytes": 1000}}})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.call("POST", &format!("/api/v1/backup/{}", app.id)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["message"], "Backup denied by quota policy");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("exceeds max_bytes"),
        "{body}"
    );
    assert!(ids(&h, &app.id).is_empty());

    bind(&h, &app.id, serde_json::json!({"quota": {"policy": "quota-oldest-first", "config": {"max_bytes": 250000}}})).await;
    let a = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = h.backup(&app.id).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ids(&h, &app.id),
        [c, b],
        "the oldest was evicted once the newest was complete"
    );
    assert!(!ids(&h, &app.id).contains(&a));
    let (_, stats) = h.call("GET", "/api/v1/backup/stats").await;
    assert_eq!(
        stats["apps"][&app.id]["quota"]["policy"], "quota-oldest-first",
        "{stats}"
    );
}

#[tokio::test]
async fn scheduler_runs_due_backups_once_with_an_injected_clock() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    let (status, body) = bind(&h, &app.id, serde_json::json!({"schedule": {"policy": "daily-weekly-cron", "config": {"cron": "61 * * * *"}}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = bind(&h, &app.id, serde_json::json!({"schedule": {"policy": "daily-weekly-cron", "config": {"daily": "02:30"}}})).await;
    assert_eq!(status, StatusCode::OK);
    let t = |s: &str| {
        Utc.from_utc_datetime(&chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
    };

    assert!(
        h.manager
            .scheduler_tick(t("2026-03-01 01:00"))
            .await
            .is_empty(),
        "first sight: counts from now"
    );
    assert!(
        h.manager
            .scheduler_tick(t("2026-03-01 02:00"))
            .await
            .is_empty()
    );
    let started = h.manager.scheduler_tick(t("2026-03-01 02:31")).await;
    assert_eq!(started.len(), 1);
    for (_, s) in started {
        let snap = s.done.await.unwrap().unwrap();
        assert_eq!(snap.facts.origin, appsnap::catalog::Origin::Scheduled);
    }
    assert!(
        h.manager
            .scheduler_tick(t("2026-03-01 02:32"))
            .await
            .is_empty(),
        "once per slot"
    );
    // Down for four days: one catch-up run, not four.
    let started = h.manager.scheduler_tick(t("2026-03-05 10:00")).await;
    assert_eq!(started.len(), 1);
    for (_, s) in started {
        s.done.await.unwrap().unwrap();
    }
    assert!(
        h.manager
            .scheduler_tick(t("2026-03-05 10:01"))
            .await
            .is_empty()
    );
    assert_eq!(ids(&h, &app.id).len(), 2);
    let (_, schedules) = h.call("GET", "/api/v1/backup/schedules").await;
    assert_eq!(
        schedules[&app.id]["next_run"], "2026-03-06T02:30:00Z",
        "{schedules}"
    );
}

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(content.len(), out);
    out.extend_from_slice(content);
}

/// A component whose one core module has one function of `nops` instructions.
fn component_with_function(nops: usize) -> Vec<u8> {
    let mut body = vec![0x00]; // no locals
    body.resize(1 + nops, 0x01); // nop
    body.push(0x0b); // end
    component_of(&body)
}

/// A component whose one core module has one function `() -> ()` with `body`.
fn component_of(body: &[u8]) -> Vec<u8> {
    let mut code = vec![0x01];
    leb(body.len(), &mut code);
    code.extend_from_slice(body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[0x01, 0x60, 0x00, 0x00], &mut module);
    section(3, &[0x01, 0x00], &mut module);
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

/// Code too large to compile in bounded time is refused by its measurements, before
/// anything is compiled; the same shape, small, gets past them (and is refused later as
/// no policy at all).
#[tokio::test]
async fn a_component_too_big_to_compile_is_refused_before_compiling() {
    let h = Harness::new().await;
    let (status, body) = put_policy(&h, "huge", component_with_function(256 * 1024 + 1)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains("a function of") && details.contains("the limit is"),
        "{body}"
    );
    let (status, body) = put_policy(&h, "tiny", component_with_function(100)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("exports none"),
        "{body}"
    );
}

/// A component of 88 KB, well inside every size limit, whose one function is built to be
/// costly for cranelift: 8,000 two-way branches, then 8,000 locals read after them (each
/// read threads a value through every branch). Compiled in-process it took 20 s and 2 GB.
fn costly_to_compile() -> Vec<u8> {
    let (branches, locals) = (8_000, 8_000);
    let mut body = vec![0x01];
    leb(locals, &mut body);
    body.push(0x7f); // i32
    for _ in 0..branches {
        // block; i32.const 0; br_if 0; end
        body.extend_from_slice(&[0x02, 0x40, 0x41, 0x00, 0x0d, 0x00, 0x0b]);
    }
    for i in 0..locals {
        body.push(0x20); // local.get i
        leb(i, &mut body);
        body.push(0x1a); // drop
    }
    body.push(0x0b);
    component_of(&body)
}

/// cranelift cannot be interrupted, so an upload compiles in a child process with a
/// memory and a time limit: a component built to be costly is refused with 422 naming
/// the limits, within them, and the service's own memory does not move. A real policy
/// still compiles (and the service keeps serving meanwhile).
#[tokio::test]
async fn a_component_costly_to_compile_is_refused_within_limits() {
    let root = tempfile::tempdir().unwrap();
    let svc = crate::common::Service::start(root.path(), &[]);
    let client = reqwest::Client::new();
    let put = |name: &str, bytes: Vec<u8>| {
        client
            .put(svc.url(&format!("/api/v1/policies/{name}")))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
    };
    let (status, _) = {
        let r = put("warm-up", guest("delete_all")).await.unwrap();
        (r.status(), r.text().await)
    };
    assert_eq!(status, StatusCode::CREATED);
    let idle = crate::common::craft::peak_rss(svc.child.id());
    let started = Instant::now();
    let resp = put("costly", costly_to_compile()).await.unwrap();
    let elapsed = started.elapsed();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    eprintln!("refused after {elapsed:?}: {body}");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let details = body["details"].as_str().unwrap_or_default().to_string()
        + body["message"].as_str().unwrap_or_default();
    assert!(details.contains("too costly to compile"), "{body}");
    assert!(
        elapsed < appsnap::policy::engine::COMPILE_TIME + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    let peak = crate::common::craft::peak_rss(svc.child.id());
    assert!(
        peak < idle + (64 << 20),
        "service peak RSS {} MB, idle {} MB",
        peak >> 20,
        idle >> 20
    );
    let listed = svc.get("/api/v1/policies").await;
    assert!(
        !listed.to_string().contains("\"costly\""),
        "a refused upload is not listed: {listed}"
    );
}

/// A default schedule covers an app from its first day, before it has any snapshot: the
/// scheduler finds it among Docker's compose projects and plans its first run. (Only the
/// first tick runs here: it plans, it starts nothing — the engine holds other tests' apps.)
#[tokio::test]
async fn a_default_schedule_covers_a_new_app_before_its_first_snapshot() {
    let app = TestApp::new("");
    let h = Harness::new().await;
    assert!(ids(&h, &app.id).is_empty());
    let (status, body) = send_json(
        &h,
        "PUT",
        "/api/v1/backup/policies/default",
        serde_json::json!({"schedule": {"policy": "daily-weekly-cron",
            "config": {"daily": "02:30", "tz": "Europe/Berlin"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let now = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap();
    assert!(
        h.manager.scheduler_tick(now).await.is_empty(),
        "first sight plans only"
    );
    let (_, schedules) = h.call("GET", "/api/v1/backup/schedules").await;
    assert_eq!(
        schedules[&app.id]["next_run"], "2026-07-02T00:30:00Z",
        "02:30 in Berlin in summer: {schedules}"
    );
}

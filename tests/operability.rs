//! An operator sees appsnap work in the Prometheus they already run.
//! Prometheus itself (Debian's package) scrapes the service with the API key, and a PromQL
//! query over its HTTP API finds the backup counters; `promtool` finds no naming problem.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Service, TestApp};

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success()),
        "`{tool}` is missing: install Debian's `prometheus` package (scripts/test does)"
    );
}

/// The value of a PromQL query with one result, once it has one.
async fn query(prometheus: &str, promql: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    body["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn prometheus_scrapes_the_backup_counters_with_the_api_key() {
    require("prometheus");
    require("promtool");
    let good = TestApp::new("");
    let bad = TestApp::new("--label 'appsnap.pre-backup=false'");
    let root = tempfile::tempdir().unwrap();
    let key = "metrics-test-key";
    let svc = Service::start(root.path(), &[("APPSNAP_API_KEY", key)]);
    let client = reqwest::Client::new();
    let backup = |app: &str| {
        client
            .post(svc.url(&format!("/api/v1/backup/{app}")))
            .header("x-api-key", key)
            .send()
    };
    assert!(backup(&good.id).await.unwrap().status().is_success());
    assert!(backup(&good.id).await.unwrap().status().is_success());
    assert!(backup(&bad.id).await.unwrap().status().is_server_error());

    // Protected like the API; Prometheus' way of sending the key works.
    let anonymous = client.get(svc.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let text = client
        .get(svc.url("/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("snapshot_2"),
        "a snapshot id in a label:\n{text}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    let problems = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && problems.trim().is_empty(),
        "promtool: {problems}\n{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), key).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: appsnap\n    \
         authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{}']\n",
        dir.path().join("key").display(),
        svc.addr
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let listen = format!("127.0.0.1:{}", crate::common::rest::free_port());
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let expected = [
        (
            format!("appsnap_backup_successes_total{{app=\"{}\"}}", good.id),
            "2",
        ),
        (
            format!("appsnap_backup_attempts_total{{app=\"{}\"}}", bad.id),
            "1",
        ),
        (
            format!("appsnap_backup_failures_total{{app=\"{}\"}}", bad.id),
            "1",
        ),
        (format!("appsnap_snapshots{{app=\"{}\"}}", good.id), "2"),
        (
            format!(
                "appsnap_backup_duration_seconds_count{{app=\"{}\"}}",
                good.id
            ),
            "2",
        ),
        ("up{job=\"appsnap\"}".to_string(), "1"),
    ];
    // Prometheus scrapes every second; a poll with a deadline, not a sleep.
    let deadline = Instant::now() + Duration::from_secs(90);
    for (promql, want) in &expected {
        loop {
            let got = query(&listen, promql).await;
            if got.as_deref() == Some(*want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: Prometheus says {got:?}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The README's code block that starts with `opening` (after the fence), without it.
fn readme_block(opening: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    readme
        .split(opening)
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no README block opening with {opening:?}"))
        .to_string()
}

/// The alert config the README shows is what appsnap reads.
#[test]
fn the_readme_alert_config_parses() {
    let block = readme_block("```toml\nstale_after_hours");
    let config: appsnap::config::Config =
        toml::from_str(&format!("stale_after_hours{block}")).unwrap();
    assert_eq!(config.notify.len(), 3);
    assert_eq!(config.stale_after_hours, 26);
}

/// The alert rules the README gives are valid Prometheus rules.
#[test]
fn the_readme_alert_rules_are_valid() {
    require("promtool");
    let rules = readme_block("```yaml\n# rules.yml\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP receiver started by the test: every POST's signature header and body.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Option<String>, Vec<u8>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let signature = headers
                        .get("x-appsnap-signature")
                        .map(|v| v.to_str().unwrap().to_string());
                    let _ = tx.send((signature, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_notice(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Option<String>, Vec<u8>)>,
    secret: &str,
) -> serde_json::Value {
    let (signature, body) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no notification within 30 s")
        .unwrap();
    // The signature, checked with the `hmac` crate directly: `t=<unix time>,v1=<HMAC-SHA256
    // of "<t>.<body>">`, with a recent `t` (an old alert replayed would carry an old one).
    let signature = signature.expect("signed");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("signature format: {signature}"));
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "signed {age} s ago");
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected);
    serde_json::from_slice(&body).unwrap()
}

fn target(json: serde_json::Value) -> appsnap::notify::Target {
    serde_json::from_value(json).unwrap()
}

/// A failed backup reaches a webhook, signed; the first success after it
/// is announced once as a recovery. A target that is down neither slows nor fails the
/// backup: it is retried, then counted in the metrics.
#[tokio::test]
async fn a_failed_backup_reaches_the_webhook_and_a_dead_target_costs_nothing() {
    // The hook fails while the bind mount's `fail` holds 1.
    let app = TestApp::new("--label 'appsnap.pre-backup=read x < /bind/fail; [ \"$x\" != 1 ]'");
    let flag = |v: &str| std::fs::write(app.bind().join("fail"), v).unwrap();
    let (url, mut rx) = receiver().await;
    let secrets = tempfile::tempdir().unwrap();
    let secret = "hook-secret";
    std::fs::write(secrets.path().join("secret"), secret).unwrap();
    let secret_file = secrets.path().join("secret");
    let h = crate::common::Harness::with(|c| {
        c.notify = vec![
            target(
                serde_json::json!({"name": "ops", "type": "webhook", "url": url,
                "secret_file": secret_file, "events": ["backup_failed"]}),
            ),
            target(serde_json::json!({"name": "dead", "type": "webhook",
                "url": "http://127.0.0.1:1/hook"})),
        ];
    })
    .await;
    let uri = format!("/api/v1/backup/{}", app.id);
    flag("1");
    let started = Instant::now();
    assert_eq!(h.call("POST", &uri).await.0, 500);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the failed backup took {:?}",
        started.elapsed()
    );
    let notice = next_notice(&mut rx, secret).await;
    assert_eq!(notice["event"], "backup_failed", "{notice}");
    assert_eq!(notice["app"], app.id.as_str());
    assert_eq!(notice["level"], "error");
    assert!(
        notice["details"].as_str().unwrap().contains("hook"),
        "{notice}"
    );

    flag("0");
    assert_eq!(h.call("POST", &uri).await.0, 200);
    let notice = next_notice(&mut rx, secret).await;
    assert_eq!(notice["event"], "backup_recovered", "{notice}");
    assert!(notice["snapshot"].is_string());
    // Once: another success says nothing, so the next notice is the next failure's.
    assert_eq!(h.call("POST", &uri).await.0, 200);
    flag("1");
    assert_eq!(h.call("POST", &uri).await.0, 500);
    assert_eq!(next_notice(&mut rx, secret).await["event"], "backup_failed");

    // The dead target: retried with backoff (1 + 2 + 4 s), then given up and counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = h.manager.metrics_text();
        if text.contains("appsnap_notification_failures_total{target=\"dead\"}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery failure counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Mail goes through a real SMTP server (aiosmtpd, Debian's `python3-aiosmtpd`); the test
/// endpoint answers what each target said, a down one included, and 404 for a name that
/// is not configured.
#[tokio::test]
async fn the_test_endpoint_sends_mail_through_a_real_smtp_server() {
    require("aiosmtpd");
    let port = crate::common::rest::free_port();
    let maildir = tempfile::tempdir().unwrap();
    let _smtp = Killed(
        Command::new("aiosmtpd")
            .args([
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("box"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = crate::common::Harness::with(|c| {
        c.notify = vec![
            target(
                serde_json::json!({"name": "mail", "type": "email", "smtp_host": "127.0.0.1",
                "smtp_port": port, "tls": "none", "from": "appsnap@example.org",
                "to": ["ops@example.org"]}),
            ),
            target(serde_json::json!({"name": "dead", "type": "ntfy",
                "url": "http://127.0.0.1:1/alerts"})),
        ];
    })
    .await;
    let (status, body) = h.call("POST", "/api/v1/notify/test").await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{body}");
    assert_eq!(results[0]["target"], "mail");
    assert_eq!(results[0]["ok"], true, "{body}");
    assert_eq!(results[1]["ok"], false, "{body}");
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .contains("request failed"),
        "{body}"
    );
    let mails: Vec<String> = std::fs::read_dir(maildir.path().join("box/new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("Subject: appsnap: appsnap test notification")
            && mails[0].contains("To: ops@example.org"),
        "{}",
        mails[0]
    );
    let (status, body) = h.call("POST", "/api/v1/notify/test?target=nobody").await;
    assert_eq!(status, 404, "{body}");
}

/// A scheduled backup that cannot even start (here: the app's containers are gone) is
/// announced as `backup_missed`.
#[tokio::test]
async fn a_scheduled_backup_that_cannot_start_is_announced() {
    let app = TestApp::new("");
    let app_id = app.id.clone();
    let (url, mut rx) = receiver().await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("secret"), "s").unwrap();
    let secret_file = secrets.path().join("secret");
    let h = crate::common::Harness::with(|c| {
        c.notify = vec![target(serde_json::json!({"name": "ops", "type": "webhook",
            "url": url, "secret_file": secret_file}))];
    })
    .await;
    let req = axum::http::Request::put(format!("/api/v1/backup/apps/{app_id}/policies"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            serde_json::json!({"schedule": {"policy": "daily-weekly-cron",
                "config": {"daily": "02:30"}}})
            .to_string(),
        ))
        .unwrap();
    assert_eq!(h.call_with(req).await.0, 200);
    let t = |h: u32, m: u32| {
        use chrono::TimeZone;
        chrono::Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    };
    assert!(h.manager.scheduler_tick(t(1, 0)).await.is_empty());
    drop(app); // its containers and volume are removed
    assert!(h.manager.scheduler_tick(t(2, 31)).await.is_empty());
    let notice = next_notice(&mut rx, "s").await;
    assert_eq!(notice["event"], "backup_missed", "{notice}");
    assert_eq!(notice["app"], app_id.as_str());
}

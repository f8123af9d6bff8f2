//! Issue 11, item 2: an operator sees appsnap work in the Prometheus they already run.
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let listen = format!("127.0.0.1:{}", free_port());
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

/// The alert rules the README gives are valid Prometheus rules.
#[test]
fn the_readme_alert_rules_are_valid() {
    require("promtool");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let rules = readme
        .split("```yaml\n# rules.yml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's rules.yml block");
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

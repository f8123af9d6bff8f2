//! `gfs`: grandfather-father-son retention, like restic's and kopia's `--keep-*`.
//!
//! Config: `{"last": 3, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 3}`
//! (any subset; `-1` means unlimited). Each rule walks the snapshots newest first and keeps
//! the newest snapshot of each of its most recent N calendar buckets (UTC; weeks are ISO
//! weeks, Monday to Sunday). Rules are ORed and every rule that keeps a snapshot is named
//! in its reason. Snapshots dated in the future are kept and use up no bucket.

wit_bindgen::generate!({ world: "retention", path: "../../wit" });

use chrono::{DateTime, Datelike, Timelike};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    last: i64,
    #[serde(default)]
    hourly: i64,
    #[serde(default)]
    daily: i64,
    #[serde(default)]
    weekly: i64,
    #[serde(default)]
    monthly: i64,
    #[serde(default)]
    yearly: i64,
}

fn parse(config: &str) -> Result<Config, String> {
    let c: Config = serde_json::from_str(config).map_err(|e| format!("gfs config: {e}"))?;
    let all = [c.last, c.hourly, c.daily, c.weekly, c.monthly, c.yearly];
    if all.iter().any(|&n| n < -1) {
        return Err("gfs config: counts are -1 (unlimited), 0 or more".into());
    }
    if all.iter().all(|&n| n == 0) {
        return Err("gfs config: set at least one of last, hourly, daily, weekly, monthly, yearly".into());
    }
    Ok(c)
}

/// The calendar bucket of a time for one rule, as shown in reasons.
fn bucket(rule: &str, t: i64) -> String {
    let d = DateTime::from_timestamp(t, 0).unwrap_or_default();
    match rule {
        "hourly" => format!("{:04}-{:02}-{:02} {:02}h", d.year(), d.month(), d.day(), d.hour()),
        "daily" => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
        "weekly" => {
            let w = d.iso_week();
            format!("{:04}-W{:02}", w.year(), w.week())
        }
        "monthly" => format!("{:04}-{:02}", d.year(), d.month()),
        _ => format!("{:04}", d.year()),
    }
}

struct Gfs;

impl Guest for Gfs {
    fn describe() -> Description {
        Description {
            name: "gfs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: "retention".into(),
            config_help: r#"{"last": 3, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 3}; any subset, -1 = unlimited; UTC calendar, ISO weeks"#.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config).map(|_| ())
    }

    fn decide(now: i64, config: String, snapshots: Vec<SnapshotInfo>) -> Vec<Verdict> {
        let Ok(c) = parse(&config) else { return Vec::new() };
        let mut order: Vec<usize> = (0..snapshots.len()).collect();
        // Stable: snapshots of the same second keep the host's order (newest first).
        order.sort_by(|&a, &b| snapshots[b].created_at.cmp(&snapshots[a].created_at));
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); snapshots.len()];
        for &i in &order {
            if snapshots[i].created_at > now {
                reasons[i].push("in the future".into());
            }
        }
        let past: Vec<usize> = order.iter().copied().filter(|&i| snapshots[i].created_at <= now).collect();
        let mut left = c.last;
        for &i in &past {
            if left == 0 {
                break;
            }
            reasons[i].push("last".into());
            left -= 1;
        }
        for (rule, count) in [("hourly", c.hourly), ("daily", c.daily), ("weekly", c.weekly), ("monthly", c.monthly), ("yearly", c.yearly)] {
            let mut left = count;
            let mut seen: Option<String> = None;
            for &i in &past {
                if left == 0 {
                    break;
                }
                let b = bucket(rule, snapshots[i].created_at);
                if seen.as_ref() != Some(&b) {
                    reasons[i].push(format!("{rule} {b}"));
                    seen = Some(b);
                    left -= 1;
                }
            }
        }
        snapshots
            .iter()
            .zip(reasons)
            .map(|(s, r)| Verdict {
                id: s.id.clone(),
                keep: !r.is_empty(),
                reason: if r.is_empty() { "no rule keeps it".into() } else { r.join(", ") },
            })
            .collect()
    }
}

export!(Gfs);

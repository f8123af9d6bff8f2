//! `quota-oldest-first`: keep an app's snapshots under a byte limit by evicting the
//! oldest ones once a new backup is complete. Config: `{"max_bytes": 10737418240}`.
//! Pinned snapshots and the newest verified one are never offered for eviction; when even
//! evicting everything else cannot make room, the backup is denied.

wit_bindgen::generate!({ world: "quota", path: "../../wit" });


#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    max_bytes: u64,
}

fn parse(config: &str) -> Result<Config, String> {
    let c: Config = serde_json::from_str(config).map_err(|e| format!("quota config: {e}"))?;
    if c.max_bytes == 0 {
        return Err("quota config: max_bytes must be above 0".into());
    }
    Ok(c)
}

struct Quota;

impl Guest for Quota {
    fn describe() -> Description {
        Description {
            name: "quota-oldest-first".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: "quota".into(),
            config_help: r#"{"max_bytes": 10737418240}: an app's snapshots stay under this, oldest evicted first"#.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config).map(|_| ())
    }

    fn admit(_now: i64, config: String, usage: Usage, incoming: u64, snapshots: Vec<SnapshotInfo>) -> Admission {
        let Ok(c) = parse(&config) else { return Admission::Admit };
        let mut used = usage.app_bytes;
        if used + incoming <= c.max_bytes {
            return Admission::Admit;
        }
        if incoming > c.max_bytes {
            return Admission::Deny(format!("the backup (~{incoming} bytes) alone exceeds max_bytes {}", c.max_bytes));
        }
        // The host lists newest first; reversed and stably sorted, ties keep their order.
        let mut oldest_first: Vec<&SnapshotInfo> = snapshots.iter().rev().collect();
        oldest_first.sort_by_key(|s| s.created_at);
        let newest_good = oldest_first.iter().rev().find(|s| s.verified).map(|s| s.id.clone());
        let mut evict = Vec::new();
        for s in oldest_first {
            if used + incoming <= c.max_bytes {
                break;
            }
            if s.pinned || Some(&s.id) == newest_good.as_ref() {
                continue;
            }
            used = used.saturating_sub(s.size);
            evict.push(s.id.clone());
        }
        if used + incoming <= c.max_bytes {
            Admission::AdmitAfterEvicting(evict)
        } else {
            Admission::Deny(format!(
                "~{incoming} more bytes do not fit under max_bytes {} even after evicting every unpinned snapshot but the newest good one",
                c.max_bytes
            ))
        }
    }
}

export!(Quota);

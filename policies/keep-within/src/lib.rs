//! `keep-within`: keep the snapshots younger than an age. Config: `{"days": 30}`
//! (optionally `"hours"` too; both add up).

wit_bindgen::generate!({ world: "retention", path: "../../wit" });


#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    days: u32,
    #[serde(default)]
    hours: u32,
}

fn parse(config: &str) -> Result<i64, String> {
    let c: Config = serde_json::from_str(config).map_err(|e| format!("keep-within config: {e}"))?;
    let secs = i64::from(c.days) * 86_400 + i64::from(c.hours) * 3_600;
    if secs == 0 {
        return Err("keep-within config: set days and/or hours above 0".into());
    }
    Ok(secs)
}

struct KeepWithin;

impl Guest for KeepWithin {
    fn describe() -> Description {
        Description {
            name: "keep-within".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: "retention".into(),
            config_help: r#"{"days": 30, "hours": 0} keeps what is younger than that"#.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config).map(|_| ())
    }

    fn decide(now: i64, config: String, snapshots: Vec<SnapshotInfo>) -> Vec<Verdict> {
        let Ok(window) = parse(&config) else { return Vec::new() };
        snapshots
            .iter()
            .map(|s| {
                let keep = s.created_at >= now - window;
                Verdict {
                    id: s.id.clone(),
                    keep,
                    reason: if keep { "within the window".into() } else { "older than the window".into() },
                }
            })
            .collect()
    }
}

export!(KeepWithin);

//! `keep-last`: keep the N newest snapshots of an app. Config: `{"n": 7}`.

wit_bindgen::generate!({ world: "retention", path: "../../wit" });


#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    n: u32,
}

fn parse(config: &str) -> Result<Config, String> {
    serde_json::from_str(config).map_err(|e| format!("keep-last config: {e}"))
}

struct KeepLast;

impl Guest for KeepLast {
    fn describe() -> Description {
        Description {
            name: "keep-last".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: "retention".into(),
            config_help: r#"{"n": 7} keeps the 7 newest snapshots"#.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config).map(|_| ())
    }

    fn decide(_now: i64, config: String, snapshots: Vec<SnapshotInfo>) -> Vec<Verdict> {
        let Ok(config) = parse(&config) else { return Vec::new() };
        let mut sorted: Vec<&SnapshotInfo> = snapshots.iter().collect();
        // Stable: snapshots of the same second keep the host's order (newest first).
        sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        sorted
            .iter()
            .enumerate()
            .map(|(i, s)| Verdict {
                id: s.id.clone(),
                keep: i < config.n as usize,
                reason: if i < config.n as usize {
                    format!("last {}", i + 1)
                } else {
                    format!("beyond the {} newest", config.n)
                },
            })
            .collect()
    }
}

export!(KeepLast);

//! Test guest `delete-all`: deletes every snapshot: the host invariants must hold.

wit_bindgen::generate!({ world: "retention", path: "../../../wit" });


struct G;

impl Guest for G {
    fn describe() -> Description {
        Description {
            name: "delete-all".into(),
            version: "0.1.0".into(),
            kind: "retention".into(),
            config_help: "test guest".into(),
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    #[allow(unused_variables, unreachable_code)]
    fn decide(now: i64, config: String, snapshots: Vec<SnapshotInfo>) -> Vec<Verdict> {
        snapshots
            .iter()
            .map(|s| Verdict { id: s.id.clone(), keep: false, reason: "delete all".into() })
            .collect()
    }
}

export!(G);

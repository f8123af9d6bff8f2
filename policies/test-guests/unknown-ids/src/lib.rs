//! Test guest `unknown-ids`: deletes everything it was shown and a snapshot it was not shown.

wit_bindgen::generate!({ world: "retention", path: "../../../wit" });


struct G;

impl Guest for G {
    fn describe() -> Description {
        Description {
            name: "unknown-ids".into(),
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
        let mut out: Vec<Verdict> = snapshots
            .iter()
            .map(|s| Verdict { id: s.id.clone(), keep: false, reason: "greedy".into() })
            .collect();
        out.push(Verdict { id: "snapshot_19700101T000000Z_0000".into(), keep: false, reason: "not shown".into() });
        out
    }
}

export!(G);

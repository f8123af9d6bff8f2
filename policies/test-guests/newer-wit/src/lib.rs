//! Test guest `newer-wit`: a retention policy written against a future, incompatible
//! `appsnap:policy@0.2.0`.

wit_bindgen::generate!({ world: "retention", path: "wit" });


struct G;

impl Guest for G {
    fn describe() -> Description {
        Description {
            name: "newer-wit".into(),
            version: "0.2.0".into(),
            kind: "retention".into(),
            config_help: "test guest".into(),
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn decide(_now: i64, _config: String, snapshots: Vec<SnapshotInfo>, _hint: String) -> Vec<Verdict> {
        snapshots.iter().map(|s| Verdict { id: s.id.clone(), keep: true, reason: String::new() }).collect()
    }
}

export!(G);

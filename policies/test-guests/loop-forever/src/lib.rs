//! Test guest `loop-forever`: never returns: fuel and the epoch deadline must stop it.

wit_bindgen::generate!({ world: "retention", path: "../../../wit" });


struct G;

impl Guest for G {
    fn describe() -> Description {
        Description {
            name: "loop-forever".into(),
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
        log("looping");
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

export!(G);

//! Test guest `alloc-forever`: allocates until the memory cap stops it.

wit_bindgen::generate!({ world: "retention", path: "../../../wit" });


struct G;

impl Guest for G {
    fn describe() -> Description {
        Description {
            name: "alloc-forever".into(),
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
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

export!(G);

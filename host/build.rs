//! Builds `policies/` (the built-in policies and the test suite's hostile guests) for
//! wasm32-wasip2 as part of the host's normal `cargo build`, so a newcomer types no extra
//! command. The components are embedded with `include_bytes!` (see `policy/builtin.rs`);
//! their folder is exported as `APPSNAP_GUESTS_DIR` for the tests.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let policies = manifest.join("../policies");
    let wit = manifest.join("../wit");
    // Outside policies/, so that the build's own output does not trigger a rebuild.
    let target = manifest.join("../target/policies");
    for watched in [&wit, &policies] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(policies.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        // The outer build's flags are for the host, not for wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        // Under `cargo clippy` the outer build runs through clippy-driver; the guests'
        // generated bindings are not ours to lint.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .status()
        .expect("run cargo for policies/");
    if !status.success() {
        panic!(
            "building policies/ for wasm32-wasip2 failed (see above). If the target is \
             missing: rustup target add wasm32-wasip2"
        );
    }
    let dir = target.join("wasm32-wasip2/release");
    println!("cargo:rustc-env=APPSNAP_GUESTS_DIR={}", dir.display());
}

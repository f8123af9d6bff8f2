//! Named fail points, so that a test can stop appsnap at *every* step of a journaled
//! operation instead of hoping one kill lands somewhere interesting.
//!
//! Compiled in only with the `failpoints` feature (`scripts/test` enables it); otherwise
//! [`point`] is an empty inline function. With the feature, three environment variables
//! steer it:
//! - `APPSNAP_FAILPOINT_TRACE=1`: print `appsnap failpoint: <name>` on stderr at each point
//!   passed, so a test learns the points of a path by running it once;
//! - `APPSNAP_CRASH_AT=<name>`: abort the process there, as `kill -9` would (no destructor,
//!   no flush: what is on disk is what a crash leaves);
//! - `APPSNAP_FAIL_AT=<name>`: make that step fail with an injected error, to drive the
//!   rollback path (a stand-in for a real fault, named as such in the error);
//! - `APPSNAP_PAUSE_AT=<name>=<file>`: wait there until `<file>` exists, so that a test can
//!   look at work that would otherwise be over before it could (a restore's cleanup).
//!
//! The `fail` crate was considered; it has no "abort the process" action and cannot list
//! the points a run passes, which is what the crash walk needs.

/// Passes the fail point `name`.
#[cfg(feature = "failpoints")]
pub fn point(name: &str) -> Result<(), String> {
    use std::io::Write;
    let var = |k: &str| std::env::var(k).ok();
    if var("APPSNAP_FAILPOINT_TRACE").is_some() {
        let _ = writeln!(std::io::stderr(), "appsnap failpoint: {name}");
    }
    if var("APPSNAP_CRASH_AT").as_deref() == Some(name) {
        let _ = writeln!(std::io::stderr(), "appsnap failpoint: crashing at {name}");
        std::process::abort();
    }
    if let Some((at, file)) = var("APPSNAP_PAUSE_AT")
        .as_deref()
        .and_then(|v| v.split_once('='))
        && at == name
    {
        let _ = writeln!(std::io::stderr(), "appsnap failpoint: paused at {name}");
        while !std::path::Path::new(file).exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if var("APPSNAP_FAIL_AT").as_deref() == Some(name) {
        return Err(format!("fault injected at fail point {name}"));
    }
    Ok(())
}

/// Passes the fail point `name` (a no-op without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &str) -> Result<(), String> {
    Ok(())
}

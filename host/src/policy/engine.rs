//! The sandbox: wasmtime running policy components against the worlds of `wit/`.
//!
//! One process-wide engine loads each component once (cached by sha256). An uploaded
//! component is compiled in a child process (`appsnap compile-policy`) under a memory and a
//! time limit: cranelift cannot be interrupted, and code a few dozen KB long can ask it for
//! gigabytes and minutes (see `compile_untrusted`). Every call gets a fresh `Store` with:
//! fuel and an epoch deadline (a ticker thread advances the epoch every 100 ms; 10 ticks
//! ≈ 1 s wall clock), a 64 MiB memory cap, and a WASI context with nothing in it — no
//! preopened dirs, no env, no args, no sockets, no inherited stdio. The only import beyond
//! WASI's is `log`, rate-limited.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{Kind, PolicyError};

/// Host-side glue generated from `wit/`, one module per world. Each world's bindgen makes
/// its own copy of the shared `types` interface, so values are converted between them
/// (see `to_quota_info`).
pub mod bindings {
    pub mod retention {
        wasmtime::component::bindgen!({ world: "retention", path: "../wit" });
    }
    pub mod quota {
        wasmtime::component::bindgen!({ world: "quota", path: "../wit" });
    }
    pub mod schedule {
        wasmtime::component::bindgen!({ world: "schedule", path: "../wit" });
    }
}

/// The shared `types` as the retention world's bindings name them: the types this module's
/// API speaks for every kind of policy.
pub use bindings::retention::appsnap::policy::types::{
    Admission, Description, SnapshotInfo, Usage, Verdict,
};

/// Memory a policy may use, in bytes: its one linear memory may not grow past it (a grow
/// that would traps, and the call fails saying so).
pub const MEMORY_LIMIT: usize = 64 << 20;
/// Elements of one table (function references); a Rust guest uses a few hundred.
const TABLE_ELEMENTS: usize = 100_000;
/// Instructions (roughly) a call may run; the epoch deadline bounds wall time as well.
const FUEL: u64 = 2_000_000_000;
/// How often the epoch ticker thread advances the engine's epoch.
const TICK: Duration = Duration::from_millis(100);
/// Epoch ticks a call may run: about 1 s of wall time (a little less when the first tick
/// comes right after the call starts).
const DEADLINE_TICKS: u64 = 10;
/// Log lines kept per call; later ones are dropped, and each is logged cut to 500
/// characters, so a guest cannot flood appsnap's log.
const MAX_LOG_LINES: usize = 20;

/// What a guest's store holds. One per call: nothing a call leaves behind reaches the next.
pub struct Host {
    /// Empty: no preopened dir, no environment, no arguments, no network.
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and table caps, enforced through `Store::limiter`.
    limits: StoreLimits,
    /// Lines the guest logged during the call, at most `MAX_LOG_LINES`.
    pub log: Vec<String>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A component, type-checked and ready to instantiate. Shared (`Arc`) by the cache and
/// every evaluation using it; immutable once loaded.
pub struct Compiled {
    /// The world it exports, which its `describe` confirmed.
    pub kind: Kind,
    /// Hex sha256 of the component's bytes: the cache key, and an upload's file name.
    pub sha256: String,
    /// What its `describe` answered when it was loaded.
    pub description: Description,
    /// Imports resolved once; every call instantiates afresh from it.
    pre: Pre,
    /// When it was compiled (the cache evicts the oldest).
    loaded: std::time::Instant,
}

/// Compiled components kept in memory.
const MAX_CACHED: usize = 64;
/// What an uploaded component may ask cranelift to compile. Compile time and memory grow
/// faster than linearly with one function's size, and cranelift cannot be interrupted:
/// so the code is measured (wasmparser, no compilation) before anything is compiled. The
/// built-in policies use a small fraction of each limit (see the test below).
const MAX_FUNCTIONS: usize = 20_000;
/// Bytes of one function body.
const MAX_FUNCTION_BYTES: usize = 256 << 10;
/// Bytes of all function bodies together.
const MAX_CODE_BYTES: usize = 8 << 20;
/// Locals declared by one function.
const MAX_LOCALS: u64 = 10_000;

/// What compiling one uploaded component may take: memory of the compiler process (its
/// data segment, `RLIMIT_DATA`) and wall time. The built-in `gfs` (150 KB) compiles in
/// 0.3 s and 32 MB; an 88 KB function built to be costly (8,000 branches, then 8,000
/// locals read after them) took 20 s and 2 GB in-process.
pub const COMPILE_MEMORY: u64 = 512 << 20;
/// After this the compiler process is killed and the upload refused as too costly.
pub const COMPILE_TIME: Duration = Duration::from_secs(20);

/// Settings shared by the service's engine and the compiler process: a compiled artifact
/// only loads into an engine configured the same way.
fn engine_config() -> Config {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    config
}

/// Set by `set_compiler`; unset, `compile_untrusted` runs `/proc/self/exe`.
static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// The executable that runs `compile-policy` (default: this process's own,
/// `/proc/self/exe`). Tests that run the service in-process point it at `appsnap`.
/// Only the first call counts; later ones are ignored.
pub fn set_compiler(path: PathBuf) {
    let _ = COMPILER.set(path);
}

/// `appsnap compile-policy`: a component on stdin, wasmtime's compiled artifact on stdout,
/// or exit code 2 and why on stderr. Limits its own memory first, so a component built to
/// exhaust the compiler ends this process, not the service. Exit code 1: the compiler
/// itself failed (the limit could not be set, stdin or stdout failed). It reads at most
/// `MAX_COMPONENT_BYTES` + 1 bytes of stdin.
pub fn compile_child() -> std::process::ExitCode {
    use std::process::ExitCode;
    let limit = libc::rlimit {
        rlim_cur: COMPILE_MEMORY,
        rlim_max: COMPILE_MEMORY,
    };
    // SAFETY: plain system call on a struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
        eprintln!(
            "cannot limit the compiler's memory: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(super::MAX_COMPONENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
    {
        eprintln!("cannot read the component: {e}");
        return ExitCode::from(1);
    }
    let compiled = Engine::new(&engine_config()).and_then(|e| e.precompile_component(&bytes));
    match compiled {
        Ok(artifact) => match std::io::stdout().write_all(&artifact) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        Err(e) => {
            // wasmparser appends a multi-line dump of the bytes it expected; the first
            // line says it.
            let why = format!("{e:#}");
            let why = why
                .split(" - expected")
                .next()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default();
            eprint!("{why}");
            ExitCode::from(2)
        }
    }
}

/// Compiles an uploaded component in a child process under [`COMPILE_MEMORY`] and
/// [`COMPILE_TIME`], then loads the artifact it wrote. The child gets no environment and
/// talks through pipes only; its output is read on a helper thread, so the deadline holds
/// even while the child blocks. `Invalid` when the bytes are no component or the code is
/// too costly (killed at the deadline, or out of memory); `Io` when the child cannot
/// start, fails otherwise, or its artifact does not load.
fn compile_untrusted(engine: &Engine, bytes: &[u8]) -> Result<Component, PolicyError> {
    // The running executable itself, even if an upgrade replaced its file since: the
    // artifact must come from the same wasmtime to load.
    let exe = COMPILER
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let mut child = Command::new(&exe)
        .arg("compile-policy")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start the policy compiler {}: {e}", exe.display()),
            )
        })?;
    // The child reads all of its input before it writes anything.
    let fed = child.stdin.take().expect("piped").write_all(bytes);
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut artifact, mut why) = (Vec::new(), String::new());
        let read = out
            .read_to_end(&mut artifact)
            .and_then(|_| err.read_to_string(&mut why));
        let _ = tx.send(read.map(|_| (artifact, why)));
    });
    let outcome = rx.recv_timeout(COMPILE_TIME);
    if outcome.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let too_costly = |what: &str| {
        PolicyError::Invalid(format!(
            "compiling the component {what}: its code is too costly to compile (an upload \
             may take {} MiB and {} s)",
            COMPILE_MEMORY >> 20,
            COMPILE_TIME.as_secs()
        ))
    };
    let (artifact, why) = match outcome {
        Err(_) => {
            return Err(too_costly(&format!(
                "took more than {} s",
                COMPILE_TIME.as_secs()
            )));
        }
        Ok(read) => read?,
    };
    match status.code() {
        Some(0) => {
            fed?;
            // SAFETY: the artifact was just made by `precompile_component` of this same
            // executable with the same engine settings, and went through a pipe only.
            unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| {
                PolicyError::Io(std::io::Error::other(format!(
                    "the compiled policy does not load: {e:#}"
                )))
            })
        }
        Some(2) => Err(PolicyError::Invalid(format!(
            "not a WebAssembly component: {why}"
        ))),
        // Out of memory: the allocator's failure aborts the process.
        _ if why.contains("memory allocation") || status.code().is_none() => Err(too_costly(
            &format!("needed more than {} MiB", COMPILE_MEMORY >> 20),
        )),
        _ => Err(PolicyError::Io(std::io::Error::other(format!(
            "the policy compiler failed ({status}): {}",
            why.trim()
        )))),
    }
}

/// What a component asks to compile: functions, code bytes, the largest function and the
/// most locals of one function. `None` for bytes that do not parse.
fn code_stats(bytes: &[u8]) -> Option<(usize, usize, usize, u64)> {
    let (mut functions, mut code, mut largest, mut most_locals) = (0usize, 0usize, 0usize, 0u64);
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::CodeSectionEntry(body) = payload.ok()? {
            let size = body.range().len();
            functions += 1;
            code += size;
            largest = largest.max(size);
            let mut locals = 0u64;
            if let Ok(reader) = body.get_locals_reader() {
                for local in reader.into_iter().flatten() {
                    locals += u64::from(local.0);
                }
            }
            most_locals = most_locals.max(locals);
        }
    }
    Some((functions, code, largest, most_locals))
}

/// Refuses code too large to compile in bounded time and memory. Malformed bytes pass:
/// the compiler then says what is wrong, as for any invalid component.
fn check_code(bytes: &[u8]) -> Result<(), String> {
    let Some((functions, code, largest, locals)) = code_stats(bytes) else {
        return Ok(());
    };
    if largest > MAX_FUNCTION_BYTES {
        return Err(format!(
            "a function of {largest} bytes (the limit is {MAX_FUNCTION_BYTES})"
        ));
    }
    if locals > MAX_LOCALS {
        return Err(format!(
            "a function with {locals} locals (the limit is {MAX_LOCALS})"
        ));
    }
    if functions > MAX_FUNCTIONS || code > MAX_CODE_BYTES {
        return Err(format!(
            "{functions} functions, {code} bytes of code (the limits are {MAX_FUNCTIONS} \
             and {MAX_CODE_BYTES})"
        ));
    }
    Ok(())
}

/// A component's instance-pre, typed by the one world it exports.
enum Pre {
    Retention(bindings::retention::RetentionPre<Host>),
    Quota(bindings::quota::QuotaPre<Host>),
    Schedule(bindings::schedule::SchedulePre<Host>),
}

/// wasmtime configured for policies (fuel and epoch interruption), the linker that gives
/// a guest WASI (empty) and `log`, and the compiled components by sha256.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<Host>,
    /// At most `MAX_CACHED` entries; the oldest loaded goes first.
    cache: Mutex<HashMap<String, Arc<Compiled>>>,
}

/// The process-wide engine (its epoch ticker thread lives as long as the process).
pub fn shared() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new().expect("wasmtime engine"))
}

impl PolicyEngine {
    /// Builds the engine and starts its epoch ticker. The ticker holds only a weak
    /// reference: it ends once the engine is dropped (never, for `shared`'s).
    fn new() -> wasmtime::Result<PolicyEngine> {
        let engine = Engine::new(&engine_config())?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("appsnap-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        linker.root().func_wrap("log", |mut store, (message,): (String,)| {
            let host: &mut Host = store.data_mut();
            if host.log.len() < MAX_LOG_LINES {
                tracing::info!(target: "appsnap::policy::guest", "{}", message.chars().take(500).collect::<String>());
                host.log.push(message);
            }
            Ok(())
        })?;
        Ok(PolicyEngine {
            engine,
            linker,
            cache: Mutex::default(),
        })
    }

    /// A fresh store for one call, with the full fuel budget, the epoch deadline, the
    /// memory and table caps, and a WASI context that grants nothing.
    fn store(&self) -> Store<Host> {
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        // A policy gets one linear memory (a Rust guest needs no more) and a few small
        // tables; `memory_size` and `table_elements` cap each.
        let limits = StoreLimitsBuilder::new()
            .memory_size(MEMORY_LIMIT)
            .table_elements(TABLE_ELEMENTS)
            .instances(32)
            .tables(8)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            Host {
                wasi,
                table: ResourceTable::new(),
                limits,
                log: Vec::new(),
            },
        );
        store.limiter(|h| &mut h.limits);
        store.set_fuel(FUEL).expect("fuel is enabled");
        store.set_epoch_deadline(DEADLINE_TICKS);
        store
    }

    /// Compiles (in a child process under limits, see [`compile_untrusted`]) and
    /// type-checks a component, cached by sha256: which world it exports decides its kind,
    /// and it must answer `describe` consistently. Refused as `Invalid`, with the reason:
    /// code over the size limits (measured before compiling), a core module rather than
    /// a component, missing imports, no known world, a failing or contradicting
    /// `describe`. `Io` when the compiler process itself fails. A component already in
    /// the cache is returned at once: it passed every check when it was loaded.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Compiled>, PolicyError> {
        self.load_with(bytes, false)
    }

    /// [`load`](Self::load) for the built-in policies, embedded in this executable:
    /// compiled in-process.
    pub fn load_builtin(&self, bytes: &[u8]) -> Result<Arc<Compiled>, PolicyError> {
        self.load_with(bytes, true)
    }

    /// `trusted`: compile in-process (built-ins only). The code limits apply either way.
    fn load_with(&self, bytes: &[u8], trusted: bool) -> Result<Arc<Compiled>, PolicyError> {
        let sha256 = crate::archive::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes));
        if let Some(c) = self.cache.lock().expect("cache lock").get(&sha256) {
            return Ok(Arc::clone(c));
        }
        check_code(bytes).map_err(PolicyError::Invalid)?;
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(PolicyError::Invalid(
                "this is a core WebAssembly module, not a component: build the policy with \
                 `cargo build --target wasm32-wasip2` (see the README)"
                    .into(),
            ));
        }
        let component = if trusted {
            Component::new(&self.engine, bytes).map_err(|e| {
                PolicyError::Invalid(format!("built-in policy does not compile: {e:#}"))
            })?
        } else {
            compile_untrusted(&self.engine, bytes)?
        };
        let pre: InstancePre<Host> = self.linker.instantiate_pre(&component).map_err(|e| {
            PolicyError::Invalid(format!(
                "the component needs imports appsnap does not provide (a different WIT \
                 version than appsnap:policy@0.1.0?): {e:#}"
            ))
        })?;
        let (kind, pre) = if let Ok(p) = bindings::retention::RetentionPre::new(pre.clone()) {
            (Kind::Retention, Pre::Retention(p))
        } else if let Ok(p) = bindings::quota::QuotaPre::new(pre.clone()) {
            (Kind::Quota, Pre::Quota(p))
        } else if let Ok(p) = bindings::schedule::SchedulePre::new(pre) {
            (Kind::Schedule, Pre::Schedule(p))
        } else {
            return Err(PolicyError::Invalid(
                "the component exports none of the worlds of appsnap:policy@0.1.0 \
                 (retention, quota, schedule) with the expected signatures"
                    .into(),
            ));
        };
        let mut compiled = Compiled {
            kind,
            sha256: sha256.clone(),
            description: Description {
                name: String::new(),
                version: String::new(),
                kind: String::new(),
                config_help: String::new(),
            },
            pre,
            loaded: std::time::Instant::now(),
        };
        let description = self
            .describe(&compiled)
            .map_err(|e| PolicyError::Invalid(format!("`describe` failed: {e}")))?;
        if description.kind != kind.as_str() {
            return Err(PolicyError::Invalid(format!(
                "`describe` says kind `{}` but the component exports the {} world",
                description.kind,
                kind.as_str()
            )));
        }
        compiled.description = description;
        let compiled = Arc::new(compiled);
        let mut cache = self.cache.lock().expect("cache lock");
        // Bounded: uploads cannot grow the process without limit. The oldest entry goes
        // (evaluations holding it keep their Arc; it is compiled again when needed).
        while cache.len() >= MAX_CACHED {
            let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, c)| c.loaded)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            cache.remove(&oldest);
        }
        cache.insert(sha256, Arc::clone(&compiled));
        Ok(compiled)
    }

    /// Calls the component's `describe` in a fresh store, whatever its world.
    fn describe(&self, c: &Compiled) -> Result<Description, PolicyError> {
        let mut store = self.store();
        let d = match &c.pre {
            Pre::Retention(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_describe(&mut store)),
            Pre::Quota(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_describe(&mut store))
                .map(convert_quota_description),
            Pre::Schedule(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_describe(&mut store))
                .map(convert_schedule_description),
        };
        d.map_err(trap)
    }

    /// Asks the policy whether it accepts `config` (JSON text). Outer error: the call
    /// failed (trap, time, memory). Inner: the policy's answer, with its reason on refusal.
    pub fn validate_config(
        &self,
        c: &Compiled,
        config: &str,
    ) -> Result<Result<(), String>, PolicyError> {
        let mut store = self.store();
        let r = match &c.pre {
            Pre::Retention(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_validate_config(&mut store, config)),
            Pre::Quota(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_validate_config(&mut store, config)),
            Pre::Schedule(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_validate_config(&mut store, config)),
        };
        r.map_err(trap)
    }

    /// One retention decision: `now` in Unix seconds, `config` as JSON text, `snapshots`
    /// of one app, newest first. The verdicts come back as the policy gave them: the
    /// caller checks that they name only snapshots shown, each once. `WrongKind` when `c`
    /// is not a retention policy; `Failed` on a trap, timeout or memory exhaustion.
    pub fn retention(
        &self,
        c: &Compiled,
        now: i64,
        config: &str,
        snapshots: &[SnapshotInfo],
    ) -> Result<Vec<Verdict>, PolicyError> {
        let Pre::Retention(p) = &c.pre else {
            return Err(PolicyError::WrongKind(c.kind, Kind::Retention));
        };
        let mut store = self.store();
        p.instantiate(&mut store)
            .and_then(|i| i.call_decide(&mut store, now, config, snapshots))
            .map_err(trap)
    }

    /// Whether a backup of about `incoming` bytes may be made, given `usage` (bytes) and
    /// the app's `snapshots`, newest first. The ids to evict are the policy's, unchecked
    /// here. `WrongKind` when `c` is not a quota policy; `Failed` as for `retention`.
    pub fn quota(
        &self,
        c: &Compiled,
        now: i64,
        config: &str,
        usage: Usage,
        incoming: u64,
        snapshots: &[SnapshotInfo],
    ) -> Result<Admission, PolicyError> {
        let Pre::Quota(p) = &c.pre else {
            return Err(PolicyError::WrongKind(c.kind, Kind::Quota));
        };
        use bindings::quota::appsnap::policy::types as q;
        let usage = q::Usage {
            app_bytes: usage.app_bytes,
            total_bytes: usage.total_bytes,
            disk_free: usage.disk_free,
            disk_size: usage.disk_size,
        };
        let snapshots: Vec<q::SnapshotInfo> = snapshots.iter().map(to_quota_info).collect();
        let mut store = self.store();
        let a = p
            .instantiate(&mut store)
            .and_then(|i| i.call_admit(&mut store, now, config, usage, incoming, &snapshots))
            .map_err(trap)?;
        Ok(match a {
            q::Admission::Admit => Admission::Admit,
            q::Admission::AdmitAfterEvicting(ids) => Admission::AdmitAfterEvicting(ids),
            q::Admission::Deny(r) => Admission::Deny(r),
        })
    }

    /// The next run, in Unix seconds, after `last_run`; `None`: no further run. Not checked
    /// here to be after `last_run` (the caller refuses one that is not). `WrongKind` when
    /// `c` is not a schedule policy; `Failed` as for `retention`.
    pub fn next_run(
        &self,
        c: &Compiled,
        now: i64,
        config: &str,
        last_run: Option<i64>,
    ) -> Result<Option<i64>, PolicyError> {
        let Pre::Schedule(p) = &c.pre else {
            return Err(PolicyError::WrongKind(c.kind, Kind::Schedule));
        };
        let mut store = self.store();
        p.instantiate(&mut store)
            .and_then(|i| i.call_next_run(&mut store, now, config, last_run))
            .map_err(trap)
    }
}

/// A trap, a timeout (fuel or epoch), or running out of memory, in words.
fn trap(e: wasmtime::Error) -> PolicyError {
    let detail = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) | Some(wasmtime::Trap::Interrupt) => {
            "ran out of its time budget (~1 s)".to_string()
        }
        Some(t) => format!("trapped: {t}"),
        None if format!("{e:#}").contains("growing memory") => {
            format!("used more than its {} MiB of memory", MEMORY_LIMIT >> 20)
        }
        None => e.root_cause().to_string(),
    };
    PolicyError::Failed(detail)
}

/// The same snapshot record, as the quota world's bindings type it.
fn to_quota_info(s: &SnapshotInfo) -> bindings::quota::appsnap::policy::types::SnapshotInfo {
    bindings::quota::appsnap::policy::types::SnapshotInfo {
        id: s.id.clone(),
        app_id: s.app_id.clone(),
        created_at: s.created_at,
        size: s.size,
        origin: s.origin.clone(),
        pinned: s.pinned,
        verified: s.verified,
    }
}

/// A quota policy's `describe` answer as the shared `Description`.
fn convert_quota_description(
    d: bindings::quota::appsnap::policy::types::Description,
) -> Description {
    Description {
        name: d.name,
        version: d.version,
        kind: d.kind,
        config_help: d.config_help,
    }
}

/// A schedule policy's `describe` answer as the shared `Description`.
fn convert_schedule_description(
    d: bindings::schedule::appsnap::policy::types::Description,
) -> Description {
    Description {
        name: d.name,
        version: d.version,
        kind: d.kind,
        config_help: d.config_help,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_policies_are_well_within_the_code_limits() {
        for (name, bytes) in crate::policy::BUILTINS {
            let (functions, code, largest, locals) = code_stats(bytes).unwrap();
            assert!(
                functions * 4 < MAX_FUNCTIONS
                    && code * 4 < MAX_CODE_BYTES
                    && largest * 4 < MAX_FUNCTION_BYTES
                    && locals * 4 < MAX_LOCALS,
                "{name}: {functions} functions, {code} bytes, largest {largest}, {locals} locals"
            );
        }
    }
}

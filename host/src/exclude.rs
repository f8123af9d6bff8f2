//! Paths an app asks to leave out of its backups, with the `appsnap.exclude` label on a
//! container: globs relative to each of that container's mounts (`cache/**`, `*.tmp`).
//!
//! The rules are `.gitignore`'s, the ones users already know:
//! - a pattern without a `/` matches a name at any depth (`*.tmp`, `node_modules`);
//! - a pattern with a `/` is anchored at the mount's root (`cache/**`, `/tmp`: a leading
//!   `/` only anchors); a trailing `/` is ignored;
//! - `*` and `?` never cross a `/`, `**` does; a matched directory is left out whole.
//!
//! The patterns are recorded in the snapshot (each mount's `exclude`), and a restore
//! carries the current data's excluded paths over into the restored tree (renames, see
//! `manager::aside`): what was never backed up is never lost by a restore.
//!
//! A pattern is only ever *matched* against paths found by a walk, never joined onto a
//! host path, so a hostile one (`../x`) can at worst match nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The label, on any container of an app; its value is a list of patterns separated by
/// commas or newlines.
pub const LABEL: &str = "appsnap.exclude";

/// The patterns of one label value: split on commas and newlines, trimmed, empty ones
/// dropped. Not checked yet ([`check`]).
pub fn split(value: &str) -> impl Iterator<Item = &str> {
    value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Whether `pattern` can be used; `Err` says why not.
pub fn check(pattern: &str) -> Result<(), String> {
    let glob = translate(pattern).ok_or("it matches nothing")?;
    compile(&glob).map(|_| ()).map_err(|e| e.kind().to_string())
}

/// A pattern as a glob over paths relative to the mount's root; `None` when it can
/// match nothing (empty, or naming `.` or `..`, which a walk never yields).
fn translate(pattern: &str) -> Option<String> {
    let anchored = pattern.starts_with('/');
    let p = pattern.trim_matches('/');
    if p.is_empty() || p.split('/').any(|c| c == "." || c == ".." || c.is_empty()) {
        return None;
    }
    Some(if anchored || p.contains('/') {
        p.to_string()
    } else {
        format!("**/{p}")
    })
}

/// The patterns of a mount nested at `rel` inside another, as patterns of the outer
/// one (a nested mount is archived as part of the outer): anchored ones get `rel` in
/// front, name patterns match at any depth below `rel`. `rel`'s own glob characters are
/// escaped.
pub fn rebase(patterns: &[String], rel: &str) -> Vec<String> {
    let mut prefix = String::from("/");
    for c in rel.trim_matches('/').chars() {
        if "*?[]{}\\".contains(c) {
            prefix.push('\\');
        }
        prefix.push(c);
    }
    patterns
        .iter()
        .filter_map(|p| {
            let glob = translate(p)?;
            Some(format!("{prefix}/{glob}"))
        })
        .collect()
}

fn compile(glob: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// The compiled patterns of one mount.
#[derive(Debug, Clone)]
pub struct Exclude {
    set: GlobSet,
    /// Where the paths given to `matches` are, relative to the mount's root (empty: the
    /// root itself); see [`Exclude::below`].
    base: Vec<u8>,
}

impl Exclude {
    /// The matcher for `patterns`, `None` when none is usable (an unusable one is left
    /// out here; [`check`] is where it is reported).
    pub fn new(patterns: &[String]) -> Option<Exclude> {
        let mut builder = GlobSetBuilder::new();
        let mut any = false;
        for glob in patterns.iter().filter_map(|p| translate(p)) {
            if let Ok(g) = compile(&glob) {
                builder.add(g);
                any = true;
            }
        }
        let set = builder.build().ok()?;
        any.then_some(Exclude {
            set,
            base: Vec::new(),
        })
    }

    /// The same patterns for paths given relative to the folder `base` of the mount (a
    /// partial restore's folder): `matches(b"x")` then asks about `base/x`.
    pub fn below(mut self, base: &[u8]) -> Exclude {
        self.base = base.to_vec();
        self
    }

    /// Whether the entry at `rel` (relative to the mount's root, or to the folder of
    /// [`Exclude::below`]; `/`-separated, no leading `/`) is left out, with everything
    /// below it.
    pub fn matches(&self, rel: &[u8]) -> bool {
        if self.base.is_empty() {
            return self.set.is_match(Path::new(OsStr::from_bytes(rel)));
        }
        let full = [&self.base[..], b"/", rel].concat();
        self.set.is_match(Path::new(OsStr::from_bytes(&full)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(patterns: &[&str]) -> Exclude {
        Exclude::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_below_a_folder_match_as_from_the_root() {
        let e = ex(&["uploads/cache/**", "*.tmp"]).below(b"uploads");
        assert!(e.matches(b"cache/a"));
        assert!(e.matches(b"x.tmp"));
        assert!(!e.matches(b"a"));
    }

    #[test]
    fn patterns_follow_gitignore() {
        let e = ex(&["cache/**", "*.tmp", "/logs", "build/"]);
        assert!(e.matches(b"cache/a"));
        assert!(e.matches(b"cache/a/b"));
        assert!(!e.matches(b"cache"), "the folder itself stays, empty");
        assert!(!e.matches(b"sub/cache/a"), "a pattern with a / is anchored");
        assert!(e.matches(b"x.tmp"));
        assert!(
            e.matches(b"deep/down/x.tmp"),
            "a name pattern matches at any depth"
        );
        assert!(!e.matches(b"x.tmp.keep"));
        assert!(e.matches(b"logs"));
        assert!(!e.matches(b"a/logs"), "a leading / anchors");
        assert!(e.matches(b"a/build"), "a trailing / is ignored");
        assert!(!e.matches(b"cachex/a"));
    }

    #[test]
    fn a_nested_mounts_patterns_apply_below_it() {
        let e = Exclude::new(&rebase(&["*.tmp".into(), "cache/**".into()], "data/x[1]")).unwrap();
        assert!(e.matches(b"data/x[1]/a.tmp"));
        assert!(e.matches(b"data/x[1]/deep/a.tmp"));
        assert!(e.matches(b"data/x[1]/cache/a"));
        assert!(!e.matches(b"a.tmp"), "outside the nested mount");
        assert!(
            !e.matches(b"data/x1/a.tmp"),
            "the folder's brackets are literal"
        );
    }

    #[test]
    fn a_star_never_crosses_a_slash() {
        let e = ex(&["data/*.log"]);
        assert!(e.matches(b"data/a.log"));
        assert!(!e.matches(b"data/sub/a.log"));
    }

    #[test]
    fn unusable_patterns_are_reported_and_left_out() {
        assert!(check("[abc").is_err());
        assert!(check("../etc").is_err());
        assert!(check("/").is_err());
        assert!(check("a//b").is_err());
        assert!(check("*.tmp").is_ok());
        assert!(Exclude::new(&["[abc".into()]).is_none());
        assert_eq!(
            split(" a ,b\n\n c,").collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
    }
}

//! The shared model: the types the archive, the catalog, Docker discovery, jobs and the
//! API all speak of — a mount of an app, a tree to archive, an error's body — kept apart
//! so that none of those modules has to lean on another for them. Types and the checks
//! of their own values (a mount list, a bind path's folder name); other functions live
//! with the domain they serve.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `{"message": "...", "details": "..."}`: the body of every API error, and the error of a
/// failed job (jobs carry it without knowing HTTP; `api::error` fills both the same way).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Short and stable: panels match on it.
    pub message: String,
    /// What exactly went wrong.
    pub details: String,
}

/// One piece of an app's data, as recorded in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mount {
    /// `volume`, `bind` or `project` (the compose working dir).
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume name, or the host path of a bind mount / project dir.
    pub name: String,
    /// Host path the data was read from.
    pub source: String,
    /// Where containers see it (comma-separated when several); empty for the project dir
    /// or a volume no container mounts.
    pub destination: String,
    /// Folder of this mount inside the archive.
    pub archive_dir: String,
    /// Paths left out of the archive, as `appsnap.exclude` patterns relative to the mount
    /// (see [`crate::exclude`]); a restore carries the current data's matches over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// One tree to archive: the host path and the folder it becomes in the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    pub archive_dir: String,
    pub path: PathBuf,
    /// The mount's `exclude` patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A host path as one archive folder name: `/srv/app/data` → `srv%2Fapp%2Fdata`.
/// Reversible (`%` is escaped too) and free of `/`.
pub fn escape_path(path: &str) -> String {
    path.trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F")
}

/// Exclude patterns one mount may list, and the longest one: a restore compiles an
/// archive's patterns into one matcher, so an imported archive must not make that huge.
pub const MAX_EXCLUDE: usize = 200;
pub const MAX_EXCLUDE_LEN: usize = 512;

/// Checks what an archive's metadata says about its mounts before anything believes it:
/// known kinds, names that fit their kind, and each mount's archive folder exactly the
/// one its kind and name give (so a folder name cannot smuggle in another meaning).
pub fn check_mounts(mounts: &[Mount]) -> Result<(), String> {
    let mut folders = std::collections::HashSet::new();
    for m in mounts {
        let expected = match m.kind.as_str() {
            "volume" => {
                let ok = m
                    .name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                    && m.name.len() <= 255
                    && m.name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    return Err(format!("`{}` is not a Docker volume name", m.name));
                }
                format!("volumes/{}", m.name)
            }
            "bind" => {
                let p = Path::new(&m.name);
                let ok = p.is_absolute()
                    && !m.name.contains('\0')
                    && p.components().all(|c| c != std::path::Component::ParentDir);
                if !ok {
                    return Err(format!("bind `{}` is not an absolute, plain path", m.name));
                }
                format!("binds/{}", escape_path(&m.name))
            }
            "project" => "project".to_string(),
            other => return Err(format!("unknown mount type `{other}`")),
        };
        if m.archive_dir != expected {
            return Err(format!(
                "{} `{}` must be archived under `{expected}`, not `{}`",
                m.kind, m.name, m.archive_dir
            ));
        }
        // Patterns are only matched, never joined onto a path, but their number and
        // size are still bounded before a restore compiles them.
        if m.exclude.len() > MAX_EXCLUDE || m.exclude.iter().any(|p| p.len() > MAX_EXCLUDE_LEN) {
            return Err(format!(
                "{} `{}` lists more than {MAX_EXCLUDE} exclude patterns or one longer than \
                 {MAX_EXCLUDE_LEN} bytes",
                m.kind, m.name
            ));
        }
        if !folders.insert(expected.clone()) {
            return Err(format!("`{expected}` is listed twice"));
        }
    }
    Ok(())
}

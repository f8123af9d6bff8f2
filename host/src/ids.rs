//! App and snapshot identifiers: the only user input that ever becomes part of a path.
//!
//! Both are checked here, once, at the edge: 1–128 bytes of `[A-Za-z0-9_.-]`, not starting
//! with a dot. That excludes `/`, `..`, NUL and hidden names (appsnap's own temp files and
//! state start with a dot), so an id can never name a path outside the backup root.

use chrono::{DateTime, Utc};

/// Longest accepted id, in bytes (an id is ASCII, so also in characters).
pub const MAX_LEN: usize = 128;

/// Errors of identifier validation: the {kind} `{value}` is refused because {reason}.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct IdError {
    /// What the value was meant to be: `app id`, `snapshot id`, `policy name`…
    pub kind: &'static str,
    /// The refused value, cut to `MAX_LEN` characters and escaped: it is echoed back in
    /// the error answer, and may be hostile.
    pub value: String,
    /// The first rule it breaks.
    pub reason: &'static str,
}

/// Checks an app id (a compose project name) or snapshot id. Policy, repository and
/// notification target names are held to the same rule; `kind` says which was meant, for
/// the error.
pub fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    let fail = |reason| {
        Err(IdError {
            kind,
            // Cut and escape what is echoed back: it may be hostile.
            value: value
                .chars()
                .take(MAX_LEN)
                .collect::<String>()
                .escape_default()
                .to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > MAX_LEN {
        return fail("it is longer than 128 bytes");
    }
    if value.starts_with('.') {
        return fail("it starts with a dot");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return fail("only letters, digits, `_`, `.` and `-` are allowed");
    }
    Ok(())
}

/// A new snapshot id: `snapshot_<UTC time>_<8 hex>`. Ids sort by time to the second; the
/// suffix separates snapshots made in the same second (uniqueness is checked by the caller)
/// and, with 32 random bits, those of two servers sharing a repository.
pub fn new_snapshot_id(now: DateTime<Utc>) -> String {
    format!(
        "snapshot_{}_{:08x}",
        now.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    )
}

/// What [`validate`] accepts, as a regular expression (for the OpenAPI document).
pub const PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$";

/// Gives every `app_id` / `snapshot_id` of the document — path and query parameters, and
/// the fields of request and response schemas — the id schema (pattern and length), so
/// clients see the rule before they are refused by it.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
    let id_schema = || -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(PATTERN))
            .min_length(Some(1))
            .max_length(Some(MAX_LEN))
            .into()
    };
    // `name` is a policy's or a repository's, checked by `validate` too.
    let is_id = |name: &str| matches!(name, "app_id" | "snapshot_id");
    // `repository` / `from` name a repository, whose names are ids too.
    let is_id_param = |name: &str| is_id(name) || matches!(name, "name" | "repository" | "from");
    if let Some(components) = doc.components.as_mut() {
        for schema in components.schemas.values_mut() {
            if let RefOr::T(Schema::Object(object)) = schema {
                for (name, property) in object.properties.iter_mut() {
                    if is_id(name)
                        && matches!(property, RefOr::T(Schema::Object(p)) if p.schema_type == Type::String.into())
                    {
                        *property = RefOr::T(id_schema());
                    }
                }
            }
        }
    }
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                if let RefOr::T(p) = p
                    && is_id_param(&p.name)
                {
                    p.schema = Some(RefOr::T(id_schema()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_websoft9_ids_and_generated_ids() {
        for ok in [
            "wordpress_bl0zt",
            "gitea",
            "a.b-c_d",
            &new_snapshot_id(Utc::now()),
        ] {
            assert_eq!(validate("app id", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_anything_that_could_be_a_path() {
        let long = "a".repeat(129);
        for bad in [
            "", "..", ".", ".hidden", "a/b", "../x", "a\0b", "a b", "é", "a\\b", &long,
        ] {
            assert!(validate("app id", bad).is_err(), "{bad:?} must be refused");
        }
        assert!(validate("app id", &"a".repeat(128)).is_ok());
    }
}

//! A snapshot's page (`/snapshots/{id}`): what it is (metadata, warnings, mounts and their
//! container paths) and its files: one folder at a time or a search, a file or folder
//! downloaded (`/snapshots/{id}/file`), a path put back beside the current data while the
//! app runs (`POST /snapshots/{id}/restore-beside`, a partial restore of kind `beside`).

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::session::Csrf;
use super::{
    Console, Frame, SnapRow, When, bytes, csrf_refusal, job_or_refusal, not_found, refused, to,
};
use crate::archive::index::EntryKind;
use crate::catalog::Snapshot;
use crate::manager::{FileInfo, Listing, PathsTarget, Selection};

/// Entries per page of a folder.
const PAGE: usize = 200;

#[derive(Deserialize)]
pub(super) struct Browse {
    lang: Option<String>,
    /// The folder shown (empty: the mounts).
    #[serde(default)]
    path: String,
    /// A search under `path`.
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
    /// Set after a verify that passed (the page says so).
    #[serde(default)]
    verified: String,
}

#[derive(Template)]
#[template(path = "console/snapshot.html")]
struct SnapshotPage {
    f: Frame,
    s: SnapRow,
    snapshot: Snapshot,
    listing: Listing,
    /// The folders from the top to the one shown: (name, path).
    trail: Vec<(String, String)>,
    q: String,
    /// A verify just passed.
    verified_now: bool,
    /// The configured repositories, for "copy to".
    repositories: Vec<String>,
}

impl SnapshotPage {
    fn is_dir(&self, e: &FileInfo) -> bool {
        e.kind == EntryKind::Dir
    }

    /// A file or folder the server can send (a mount's top level, a link or a device
    /// cannot be).
    fn downloadable(&self, e: &FileInfo) -> bool {
        e.container_path.is_none()
            && matches!(
                e.kind,
                EntryKind::File | EntryKind::Dir | EntryKind::Hardlink
            )
    }

    fn size(&self, e: &FileInfo) -> String {
        if e.kind == EntryKind::Dir {
            String::new()
        } else {
            bytes(e.size)
        }
    }

    fn kind(&self, e: &FileInfo) -> &'static str {
        match e.kind {
            EntryKind::File => self.f.t.kind_file,
            EntryKind::Dir => self.f.t.kind_dir,
            EntryKind::Symlink => self.f.t.kind_symlink,
            EntryKind::Hardlink => self.f.t.kind_hardlink,
            _ => self.f.t.kind_special,
        }
    }

    fn when(&self, e: &FileInfo) -> When {
        e.mtime.into()
    }

    fn query(&self, path: &str) -> String {
        format!("?path={}", urlencode(path))
    }

    fn next(&self) -> Option<String> {
        let cursor = self.listing.next_cursor.as_ref()?;
        Some(format!(
            "?path={}&q={}&cursor={cursor}",
            urlencode(&self.listing.path),
            urlencode(&self.q)
        ))
    }

    fn file_link(&self, e: &FileInfo) -> String {
        format!(
            "{}/snapshots/{}/file?path={}",
            self.f.base,
            self.s.id,
            urlencode(&e.path)
        )
    }
}

/// `GET /snapshots/{id}`: the snapshot and one folder (or a search) of its files.
pub(super) async fn page(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    Query(b): Query<Browse>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let lang = super::LangParam {
        lang: b.lang.clone(),
    };
    let f = Frame::new(&base, &lang, &headers, format!("/snapshots/{id}")).signed_in(csrf);
    let Ok(snapshot) = manager.get(&id) else {
        return not_found(f);
    };
    let cursor = (!b.cursor.is_empty()).then_some(b.cursor.as_str());
    let q = b.q.trim().to_string();
    let listing = match manager
        .files(&id, None, &b.path, Some(&q), cursor, PAGE)
        .await
    {
        Ok(l) => l,
        Err(e) => return refused(f, &e),
    };
    let mut trail = Vec::new();
    let mut at = String::new();
    for part in listing.path.split('/').filter(|p| !p.is_empty()) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        trail.push((part.to_string(), at.clone()));
    }
    let page = SnapshotPage {
        f,
        s: SnapRow::from(&snapshot),
        snapshot,
        listing,
        trail,
        q,
        verified_now: !b.verified.is_empty(),
        repositories: (manager.config().repositories.iter())
            .map(|r| r.name.clone())
            .collect(),
    };
    page.f
        .respond(StatusCode::OK, page.render(), lang.lang.is_some())
}

#[derive(Deserialize)]
pub(super) struct FileParam {
    path: String,
}

/// `GET /snapshots/{id}/file?path=`: one file, or a folder as `.tar.gz`, as an attachment.
pub(super) async fn file(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    Query(p): Query<FileParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    match manager.file_content(&id, None, &p.path, None).await {
        Ok(download) => crate::api::files::download_response(download, None),
        Err(e) => refused(
            Frame::plain(&base, &headers, &format!("/snapshots/{id}")).signed_in(csrf),
            &e,
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct PathForm {
    csrf: String,
    path: String,
}

/// `POST /snapshots/{id}/restore-beside`: puts one path back next to the current data,
/// in a new folder `<name>.restored-<snapshot id>`, with the app running; shows the job.
pub(super) async fn restore_beside(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<PathForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&base, &headers, &format!("/snapshots/{id}")).signed_in(csrf);
    let Ok(snapshot) = manager.get(&id) else {
        return not_found(f);
    };
    let selection = Selection {
        paths: vec![form.path],
        target: PathsTarget::Beside,
    };
    let started = manager
        .start_restore_paths(&snapshot.app_id, &id, &selection)
        .await;
    job_or_refusal(&base, started.map(|s| s.job), f)
}

/// `POST /snapshots/{id}/verify`: reads the whole archive under the extraction's rules
/// and checks its checksum; back to its page, which says it passed, or why it did not.
pub(super) async fn verify(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    match manager.verify(&id).await {
        Ok(_) => to(&base, &format!("/snapshots/{id}?verified=1")).into_response(),
        Err(e) => refused(
            Frame::plain(&base, &headers, &format!("/snapshots/{id}")).signed_in(csrf),
            &e,
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct CopyForm {
    csrf: String,
    repository: String,
}

/// `POST /snapshots/{id}/copy`: copies it to a repository now; the copy's job page.
pub(super) async fn copy(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
    Form(form): Form<CopyForm>,
) -> Response {
    if let Some(forbidden) = csrf_refusal(&form.csrf, &csrf) {
        return forbidden;
    }
    let f = Frame::plain(&base, &headers, &format!("/snapshots/{id}")).signed_in(csrf);
    job_or_refusal(&base, manager.start_copy(&id, &form.repository), f)
}

/// `GET /snapshots/{id}/download`: the local archive as `{id}.tar.gz`.
pub(super) async fn download(
    State(Console { manager, base, .. }): State<Console>,
    Path(id): Path<String>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let f = Frame::plain(&base, &headers, &format!("/snapshots/{id}")).signed_in(csrf);
    match manager.get(&id) {
        Ok(snapshot) => match crate::api::transfer::archive_response(&snapshot).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
        Err(e) => refused(f, &e),
    }
}

/// `s` as a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'/' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

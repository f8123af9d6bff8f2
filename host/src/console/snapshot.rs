//! A snapshot's page (`/snapshots/{id}`): what it is (metadata, warnings, mounts and their
//! container paths) and its files: one folder at a time or a search, a file or folder
//! downloaded (`/snapshots/{id}/file`), a path put back beside the current data while the
//! app runs (`POST /snapshots/{id}/restore-beside`, a partial restore of kind `beside`).
//!
//! A copy only a repository holds has the same page under the repository
//! (`/repositories/{name}/snapshots/{id}`): its description, its files read from the
//! repository (only the chunks a listing or a file needs), and the way to restore it.

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::i18n::Strings;
use super::session::Csrf;
use super::{
    Console, Frame, SnapRow, When, bytes, csrf_refusal, job_or_refusal, not_found, refused, to,
};
use crate::archive::index::EntryKind;
use crate::catalog::Snapshot;
use crate::manager::{BackupManager, FileInfo, Listing, ManagerError, PathsTarget, Selection};
use crate::model::Mount;
use crate::offsite::RemoteSnapshot;

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

/// One folder (or a search) of a snapshot's files, as its page shows them: the local
/// snapshot's, or a copy's read from its repository.
pub(super) struct Files {
    t: &'static Strings,
    /// The page's link (`{base}{here}`): folders, pages and files go below it.
    link: String,
    listing: Listing,
    /// The folders from the top to the one shown: (name, path).
    trail: Vec<(String, String)>,
    q: String,
    /// A path can be put back beside the current data (a local snapshot only).
    beside: bool,
}

impl Files {
    /// The folder or search `b` asks for, of the local snapshot or of its copy in
    /// `repository`.
    async fn load(
        manager: &BackupManager,
        f: &Frame,
        id: &str,
        repository: Option<&str>,
        b: &Browse,
    ) -> Result<Files, ManagerError> {
        let cursor = (!b.cursor.is_empty()).then_some(b.cursor.as_str());
        let q = b.q.trim().to_string();
        let listing = (manager.files(id, repository, &b.path, Some(&q), cursor, PAGE)).await?;
        let mut trail = Vec::new();
        let mut at = String::new();
        for part in listing.path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            trail.push((part.to_string(), at.clone()));
        }
        Ok(Files {
            t: f.t,
            link: format!("{}{}", f.base, f.here),
            listing,
            trail,
            q,
            beside: repository.is_none(),
        })
    }

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
            EntryKind::File => self.t.kind_file,
            EntryKind::Dir => self.t.kind_dir,
            EntryKind::Symlink => self.t.kind_symlink,
            EntryKind::Hardlink => self.t.kind_hardlink,
            _ => self.t.kind_special,
        }
    }

    fn when(&self, e: &FileInfo) -> When {
        e.mtime.into()
    }

    /// The page showing folder `path`.
    fn folder(&self, path: &str) -> String {
        format!("{}?path={}", self.link, urlencode(path))
    }

    fn next(&self) -> Option<String> {
        let cursor = self.listing.next_cursor.as_ref()?;
        Some(format!(
            "{}?path={}&q={}&cursor={cursor}",
            self.link,
            urlencode(&self.listing.path),
            urlencode(&self.q)
        ))
    }

    fn file_link(&self, e: &FileInfo) -> String {
        format!("{}/file?path={}", self.link, urlencode(&e.path))
    }
}

#[derive(Template)]
#[template(path = "console/snapshot.html")]
struct SnapshotPage {
    f: Frame,
    s: SnapRow,
    snapshot: Snapshot,
    files: Files,
    /// A verify just passed.
    verified_now: bool,
    /// The configured repositories, for "copy to".
    repositories: Vec<String>,
}

impl SnapshotPage {
    fn mounts(&self) -> &[Mount] {
        &self.snapshot.mounts
    }

    fn browse(&self) -> Option<&Files> {
        Some(&self.files)
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
    let files = match Files::load(&manager, &f, &id, None, &b).await {
        Ok(files) => files,
        Err(e) => return refused(f, &e),
    };
    let page = SnapshotPage {
        f,
        s: SnapRow::from(&snapshot),
        snapshot,
        files,
        verified_now: !b.verified.is_empty(),
        repositories: (manager.config().repositories.iter())
            .map(|r| r.name.clone())
            .collect(),
    };
    page.f
        .respond(StatusCode::OK, page.render(), lang.lang.is_some())
}

#[derive(Template)]
#[template(path = "console/copy.html")]
struct CopyPage {
    f: Frame,
    s: SnapRow,
    copy: RemoteSnapshot,
    /// Its files, or why they cannot be read from the repository (a copy made before
    /// copies carried their index: fetch it by restoring, or browse a newer copy).
    files: Result<Files, String>,
}

impl CopyPage {
    fn mounts(&self) -> &[Mount] {
        &self.copy.mounts
    }

    fn browse(&self) -> Option<&Files> {
        self.files.as_ref().ok()
    }

    fn copied(&self) -> When {
        self.copy.copied_at.into()
    }

    fn format(&self) -> String {
        serde_json::to_value(self.copy.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// `GET /repositories/{name}/snapshots/{id}`: a copy in a repository, and one folder (or
/// a search) of its files read from there.
pub(super) async fn copy_page(
    State(Console { manager, base, .. }): State<Console>,
    Path((name, id)): Path<(String, String)>,
    Query(b): Query<Browse>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let lang = super::LangParam {
        lang: b.lang.clone(),
    };
    let here = format!("/repositories/{name}/snapshots/{id}");
    let f = Frame::new(&base, &lang, &headers, here).signed_in(csrf);
    let copy = match manager.find_remote(&name, &id).await {
        Ok(copy) => copy,
        Err(e) => return refused(f, &e),
    };
    let files = match Files::load(&manager, &f, &id, Some(&name), &b).await {
        Ok(files) => Ok(files),
        Err(e @ ManagerError::CopyNotBrowsable { .. }) => Err(e.to_string()),
        Err(e) => return refused(f, &e),
    };
    let page = CopyPage {
        f,
        s: SnapRow::from(&copy),
        copy,
        files,
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
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(p): Query<FileParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let here = format!("/snapshots/{id}");
    send_file(console, &id, None, &p.path, &here, csrf, headers).await
}

/// `GET /repositories/{name}/snapshots/{id}/file?path=`: the same from the copy there.
pub(super) async fn copy_file(
    State(console): State<Console>,
    Path((name, id)): Path<(String, String)>,
    Query(p): Query<FileParam>,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    let here = format!("/repositories/{name}/snapshots/{id}");
    send_file(console, &id, Some(&name), &p.path, &here, csrf, headers).await
}

async fn send_file(
    Console { manager, base, .. }: Console,
    id: &str,
    repository: Option<&str>,
    path: &str,
    here: &str,
    csrf: Option<Extension<Csrf>>,
    headers: HeaderMap,
) -> Response {
    match manager.file_content(id, repository, path, None).await {
        Ok(download) => crate::api::files::download_response(download, None),
        Err(e) => refused(Frame::plain(&base, &headers, here).signed_in(csrf), &e),
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

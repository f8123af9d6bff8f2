//! `GET /api/v1/backup/snapshots/{snapshot_id}/files`: browse a snapshot's folders, and
//! `…/files/content`: read one of its files.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::manager::{BackupManager, Download, Listing, ManagerError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesParams {
    /// The folder to list, as an archive path (`volumes/data/uploads`); empty or absent:
    /// the snapshot's mounts.
    pub path: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]*$")]
    pub cursor: Option<String>,
    /// Entries per page (1 to 1000, default 200).
    pub limit: Option<usize>,
    /// Search instead: the entries anywhere under `path` (the whole snapshot without
    /// it) whose name holds this text, case-insensitively. Empty: no search.
    #[param(max_length = 256)]
    pub q: Option<String>,
    /// Browse the snapshot's copy in this repository instead of the local archive (for
    /// a snapshot only a repository holds): the copy's entry index is read once, and
    /// only the chunks holding what is read after it.
    pub repository: Option<String>,
}

/// List one folder of a snapshot, or search its names (`q`).
///
/// The top level lists the snapshot's mounts with the path each has in its containers;
/// below, one folder per call, in name order, paginated. Listed from the snapshot's entry
/// index, which the backup writes; a snapshot without one (an import, a fetch) gets it at
/// its first listing, which reads the archive once (seconds per GiB). The path is
/// matched against the index, never against the server's files: `..`, `.`, an absolute
/// path or a NUL is 400. With `repository`, the snapshot's copy there is listed (a
/// snapshot only a repository holds): the copy's entry index is downloaded once, and
/// `downloaded_bytes` says what browsing it has read from the repository so far.
#[utoipa::path(get, path = "/api/v1/backup/snapshots/{snapshot_id}/files", tag = "backup",
    params(("snapshot_id" = String, Path), FilesParams),
    responses(
        (status = 200, description = "One page of the folder", body = Listing),
        (status = 400, description = "Invalid id, path or cursor", body = ErrorBody),
        (status = 404, description = "Snapshot, folder, repository or copy not found", body = ErrorBody),
        (status = 409, description = "The copy was made before copies carried their entry index", body = ErrorBody),
        (status = 422, description = "The archive cannot be read", body = ErrorBody),
        (status = 502, description = "The repository failed", body = ErrorBody),
    ))]
pub async fn list(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<FilesParams>,
) -> Result<Json<Listing>, ApiError> {
    let (path, cursor, limit) = (
        params.path.as_deref().unwrap_or(""),
        params.cursor.as_deref(),
        params.limit.unwrap_or(200),
    );
    let listing = manager
        .files(
            &snapshot_id,
            params.repository.as_deref(),
            path,
            params.q.as_deref(),
            cursor,
            limit,
        )
        .await?;
    Ok(Json(listing))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContentParams {
    /// The file, as an archive path (`volumes/data/uploads/a.jpg`).
    pub path: String,
    /// Read it from the snapshot's copy in this repository (only the chunks that hold
    /// it are downloaded).
    pub repository: Option<String>,
}

/// Download one file or folder of a snapshot.
///
/// Only the gzip members that hold the file are inflated: a small file comes back in
/// milliseconds whatever the archive's size. One `Range: bytes=` range is honoured (206
/// with `Content-Range`). The file is always an attachment (`Content-Disposition`), its
/// `Content-Type` guessed from its name, sent with `X-Content-Type-Options: nosniff`, so
/// a browser never runs what a snapshot holds. A hard link reads as its file. A folder
/// comes whole as `<name>.tar.gz` (`application/gzip`, names from the folder down, the
/// snapshot's fidelity; a hard link to a file outside it comes as that file). A
/// symlink, a device or a mount's top level is 400.
#[utoipa::path(get, path = "/api/v1/backup/snapshots/{snapshot_id}/files/content", tag = "backup",
    params(("snapshot_id" = String, Path), ContentParams),
    responses(
        (status = 200, description = "The file (its type guessed from its name), or a folder as application/gzip", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "*/*", body = Vec<u8>),
        (status = 400, description = "Invalid id or path, or neither a regular file nor a folder", body = ErrorBody),
        (status = 404, description = "Snapshot, file, repository or copy not found", body = ErrorBody),
        (status = 409, description = "The copy was made before copies carried their entry index", body = ErrorBody),
        (status = 416, description = "The range starts beyond the file", body = ErrorBody),
        (status = 422, description = "The archive cannot be read", body = ErrorBody),
        (status = 502, description = "The repository failed", body = ErrorBody),
    ))]
pub async fn content(
    State(manager): State<Arc<BackupManager>>,
    Path(snapshot_id): Path<String>,
    ApiQuery(params): ApiQuery<ContentParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => Some(parse_range(v.to_str().unwrap_or_default()).ok_or_else(|| {
            ManagerError::InvalidPath(format!("range {}", v.to_str().unwrap_or("?")))
        })?),
    };
    let download = manager
        .file_content(
            &snapshot_id,
            params.repository.as_deref(),
            &params.path,
            range,
        )
        .await?;
    Ok(download_response(download, range))
}

/// The answer of a download (this route's and the console's): the file as an attachment,
/// 206 with `Content-Range` for a range; a folder whole as `<name>.tar.gz`.
pub(crate) fn download_response(download: Download, range: Option<(u64, Option<u64>)>) -> Response {
    let file = match download {
        Download::File(file) => file,
        Download::Folder { name, reader } => {
            // A folder: the whole `.tar.gz`, whatever the range (its length is unknown).
            return (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/gzip".to_string()),
                    (header::CONTENT_DISPOSITION, disposition(&name)),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                ],
                streamed(reader),
            )
                .into_response();
        }
    };
    let status = match range {
        Some(_) => StatusCode::PARTIAL_CONTENT,
        None => StatusCode::OK,
    };
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, content_type(&file.name).to_string()),
            (header::CONTENT_LENGTH, file.len.to_string()),
            (header::CONTENT_DISPOSITION, disposition(&file.name)),
            (header::ACCEPT_RANGES, "bytes".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        streamed(file.reader),
    )
        .into_response();
    if range.is_some() {
        let last = (file.start + file.len).saturating_sub(1);
        let value = format!("bytes {}-{last}/{}", file.start, file.size);
        response
            .headers_mut()
            .insert(header::CONTENT_RANGE, value.parse().expect("ascii"));
    }
    response
}

/// A body read from `reader` on a blocking thread; a client that leaves ends the read at
/// the next chunk (the channel closes).
fn streamed(mut reader: Box<dyn std::io::Read + Send>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let chunk = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(bytes::Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The media type a file's name suggests (its extension), for a browser's "open with";
/// the file is still an attachment sent with `nosniff`, so the guess never makes a
/// browser run what a snapshot holds. Unknown: `application/octet-stream`.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "log" | "md" | "conf" | "cfg" | "ini" | "env") => "text/plain; charset=utf-8",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("yml" | "yaml") => "application/yaml",
        Some("html" | "htm") => "text/html",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("php") => "application/x-php",
        Some("sql") => "application/sql",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("mp4") => "video/mp4",
        Some("mp3") => "audio/mpeg",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        Some("tar") => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// One range of a `Range` header: `bytes=a-b`, `bytes=a-`. A suffix range (`bytes=-n`)
/// or several ranges are not served (`None`: 400).
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse::<u64>().ok().filter(|&e| e >= start)?),
    };
    Some((start, end))
}

/// `attachment` with the name: ASCII in `filename`, the exact name in `filename*`.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

//! The client-facing API: tus 1.0 upload and token download, authorised only by the JWT
//! in `?token=`.
//!
//! What the official client 21.3.6 (aiotusclient 0.1.4) sends: no creation request; it
//! PATCHes `<url>?token=…` right away with `Tus-Resumable: 1.0.0`, `Upload-Offset`,
//! `Content-Type: application/offset+octet-stream`, in chunks of 16 MiB (no
//! `Upload-Length`: the size comes from the token), expects 204 with `Upload-Offset`, and
//! on failure asks the offset with HEAD before retrying. Downloads are a plain GET that
//! reads `Content-Length` unconditionally, so directory archives carry one too.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options};
use axum::Router;
use futures::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};
use crate::manager_api::AppState;
use crate::token::TokenOp;
use crate::volume::DownloadTarget;

const TUS_VERSION: &str = "1.0.0";

/// Longest pause between two pieces of a PATCH body before the request is dropped.
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// RFC 5987 `attr-char`s stay as they are in `filename*`; everything else is %-encoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
    archive: Option<String>,
}

fn token_of(
    q: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(String, bool)> {
    let Query(q) = q.map_err(|e| ApiError::invalid_params(e.body_text()))?;
    let token = q
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid_token("the token query parameter is missing"))?;
    let archive = matches!(
        q.archive.as_deref().map(str::to_ascii_lowercase).as_deref(),
        Some("1" | "true" | "yes" | "on")
    );
    Ok((token, archive))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/upload",
            options(tus_options)
                .head(tus_head)
                .patch(tus_patch)
                .post(tus_create)
                .delete(tus_delete),
        )
        .route("/download", get(download))
        .layer(tower_http::cors::CorsLayer::permissive().expose_headers(tower_http::cors::Any))
        // Outside the CORS layer, which answers every OPTIONS itself (as a preflight).
        .layer(axum::middleware::from_fn(tus_discovery))
        .with_state(state)
}

/// tus discovery headers on `OPTIONS /upload`.
async fn tus_discovery(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_discovery = req.method() == axum::http::Method::OPTIONS && req.uri().path() == "/upload";
    let mut resp = next.run(req).await;
    if is_discovery {
        tus_headers(resp.headers_mut());
        let h = resp.headers_mut();
        h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        h.insert(
            "tus-extension",
            HeaderValue::from_static("creation,termination"),
        );
    }
    resp
}

type St = State<Arc<AppState>>;
type Q = Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>;

fn tus_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn with_tus(mut resp: Response) -> Response {
    tus_headers(resp.headers_mut());
    resp
}

async fn tus_options() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    tus_headers(resp.headers_mut());
    let h = resp.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,termination"),
    );
    resp
}

fn offset_response(status: StatusCode, offset: u64, length: Option<u64>) -> Response {
    let mut resp = status.into_response();
    tus_headers(resp.headers_mut());
    let h = resp.headers_mut();
    h.insert("upload-offset", HeaderValue::from(offset));
    if let Some(l) = length {
        h.insert("upload-length", HeaderValue::from(l));
    }
    resp
}

async fn tus_head(State(st): St, q: Q) -> Response {
    let r = async {
        let (token, _) = token_of(q)?;
        let claims = st.tokens.verify(&token, TokenOp::Upload)?;
        let offset = st
            .volume(&claims.volume)?
            .upload_offset(claims.session)
            .await?;
        Ok::<_, ApiError>(offset_response(StatusCode::OK, offset, Some(claims.size)))
    }
    .await;
    with_tus(r.unwrap_or_else(|e| e.into_response()))
}

/// tus `creation`: the upload already exists (the token names it); answer its URL.
async fn tus_create(State(st): St, q: Q, headers: HeaderMap) -> Response {
    let r = async {
        let (token, _) = token_of(q)?;
        let claims = st.tokens.verify(&token, TokenOp::Upload)?;
        if let Some(len) = headers.get("upload-length") {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::invalid_params("bad Upload-Length"))?;
            if len != claims.size {
                return Err(ApiError::invalid_params(format!(
                    "Upload-Length {len} differs from the requested size {}",
                    claims.size
                )));
            }
        }
        let mut resp = StatusCode::CREATED.into_response();
        let loc = format!(
            "{}/upload?token={token}",
            st.client_url.trim_end_matches('/')
        );
        resp.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&loc).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        Ok(resp)
    }
    .await;
    with_tus(r.unwrap_or_else(|e| e.into_response()))
}

/// tus `termination`: drops the partial upload.
async fn tus_delete(State(st): St, q: Q) -> Response {
    let r = async {
        let (token, _) = token_of(q)?;
        let claims = st.tokens.verify(&token, TokenOp::Upload)?;
        let lock = st.upload_lock(claims.session);
        let _guard = lock.lock().await;
        st.volume(&claims.volume)?
            .abort_upload(claims.session)
            .await?;
        st.forget_upload(claims.session);
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    with_tus(r.unwrap_or_else(|e| e.into_response()))
}

async fn tus_patch(State(st): St, q: Q, headers: HeaderMap, body: Body) -> Response {
    with_tus(
        patch_inner(st, q, headers, body)
            .await
            .unwrap_or_else(|e| e.into_response()),
    )
}

async fn patch_inner(
    st: Arc<AppState>,
    q: Q,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (token, _) = token_of(q)?;
    let claims = st.tokens.verify(&token, TokenOp::Upload)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/offset+octet-stream") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            crate::proto::problem::INVALID_PARAMS,
            "Unsupported media type",
            "PATCH needs Content-Type: application/offset+octet-stream",
        ));
    }
    let offset: u64 = headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ApiError::invalid_params("missing or bad Upload-Offset"))?;
    let vol = st.volume(&claims.volume)?;
    let lock = st.upload_lock(claims.session);
    let _guard = lock.lock().await;

    let (mut file, current) = vol.open_upload_part(claims.session).await?;
    if offset != current {
        let mut resp = ApiError::new(
            StatusCode::CONFLICT,
            crate::proto::problem::UPLOAD_CONFLICT,
            "Upload offset mismatch",
            format!("Upload-Offset {offset} but {current} bytes are stored"),
        )
        .into_response();
        resp.headers_mut()
            .insert("upload-offset", HeaderValue::from(current));
        return Ok(resp);
    }
    // Quota while writing: re-checked for every chunk (other writers may have filled the
    // folder since the token was issued); an upload that no longer fits leaves nothing.
    if let Err(e) = vol
        .check_quota(claims.vfid, &claims.relpath, claims.size)
        .await
    {
        drop(file);
        vol.abort_upload(claims.session).await?;
        st.forget_upload(claims.session);
        return Err(e);
    }
    let mut written = current;
    let mut stream = body.into_data_stream();
    loop {
        // A client that stalls (half-open connection) must not hold the upload lock forever.
        let next = match tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(_) => {
                let _ = file.flush().await;
                return Err(ApiError::invalid_params(format!(
                    "upload stalled: no data for {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                )));
            }
        };
        let chunk = match next {
            Ok(c) => c,
            Err(e) => {
                // The client went away mid-chunk: keep what arrived, it resumes from there.
                let _ = file.flush().await;
                tracing::info!(session = %claims.session, written, error = %e, "upload interrupted");
                return Err(ApiError::invalid_params(format!("upload interrupted: {e}")));
            }
        };
        if written + chunk.len() as u64 > claims.size {
            // More than declared: drop this request's bytes, keep the earlier ones.
            let _ = file.flush().await;
            drop(file);
            truncate_part(&vol, claims.session, current).await?;
            return Err(ApiError::quota_exceeded(format!(
                "the upload is larger than the declared {} bytes",
                claims.size
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::io(e, "upload"))?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(|e| ApiError::io(e, "upload"))?;
    file.sync_data()
        .await
        .map_err(|e| ApiError::io(e, "upload"))?;
    drop(file);
    if written == claims.size {
        let done = async {
            vol.check_quota(claims.vfid, &claims.relpath, claims.size)
                .await?;
            vol.finalize_upload(claims.session, claims.vfid, &claims.relpath)
                .await
        }
        .await;
        if let Err(e) = done {
            vol.abort_upload(claims.session).await?;
            st.forget_upload(claims.session);
            return Err(e);
        }
        st.forget_upload(claims.session);
    }
    Ok(offset_response(StatusCode::NO_CONTENT, written, None))
}

async fn truncate_part(
    vol: &Arc<dyn crate::volume::VolumeBackend>,
    session: uuid::Uuid,
    len: u64,
) -> ApiResult<()> {
    let (f, _) = vol.open_upload_part(session).await?;
    f.set_len(len).await.map_err(|e| ApiError::io(e, "upload"))
}

fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let encoded = utf8_percent_encode(name, ATTR_CHAR).to_string();
    HeaderValue::from_str(&format!(
        "attachment;filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn file_response(file: std::fs::File, size: u64, ctype: &'static str, name: &str) -> Response {
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(header::CONTENT_DISPOSITION, disposition(name));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    resp
}

async fn download(State(st): St, q: Q) -> ApiResult<Response> {
    let (token, archive_q) = token_of(q)?;
    let claims = st.tokens.verify(&token, TokenOp::Download)?;
    let vol = st.volume(&claims.volume)?;
    let _archive = claims.archive || archive_q;
    match vol.open_download(claims.vfid, &claims.relpath).await? {
        DownloadTarget::File { file, size, name } => {
            Ok(file_response(file, size, "application/octet-stream", &name))
        }
        // Directories always go as a zip; built in an anonymous temp file first so the
        // response has the Content-Length the official client requires.
        DownloadTarget::Directory { path, name } => {
            let (file, size) = vol.zip_directory(claims.vfid, &path).await?;
            Ok(file_response(
                file,
                size,
                "application/zip",
                &format!("{name}.zip"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::disposition;

    #[test]
    fn content_disposition_has_ascii_and_utf8_names() {
        let d = disposition("data.zip");
        assert_eq!(
            d,
            "attachment;filename=\"data.zip\"; filename*=UTF-8''data.zip"
        );
        let d = disposition("résumé \"x\".txt");
        let s = d.to_str().unwrap();
        assert!(
            s.starts_with("attachment;filename=\"rsum \\\"x\\\".txt\";"),
            "{s}"
        );
        assert!(
            s.ends_with("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.txt"),
            "{s}"
        );
    }
}

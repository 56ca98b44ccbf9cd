//! Every error answer of every listener in API.md's shape (`{"error": {"code", "message"}}`),
//! including those the handlers never see:
//!
//! - [`error_envelope`], a response layer: an error answer that is not already JSON (an
//!   extractor's plain-text rejection, the body-timeout layer's empty 408, ...) gets the
//!   shape, its text kept as the message.
//! - [`ErrorShapedIo`], around each accepted socket: hyper answers a request it cannot parse
//!   (a request line or header it refuses, a URI over 64 KiB, a head over its buffer, an
//!   HTTP version it does not speak) by itself, with an empty body, and closes. That answer
//!   is rewritten into the shape on its way out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The error code of a status that no handler chose (the API.md codes where it has one).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_argument",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "resource_exhausted",
        431 => "headers_too_large",
        503 => "unavailable",
        s if s < 500 => "invalid_argument",
        _ => "internal",
    }
}

/// The shaped body: `message` cut to 512 bytes on a character boundary.
pub fn error_body(status: StatusCode, message: &str) -> Vec<u8> {
    let mut end = message.len().min(512);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let body = serde_json::json!({
        "error": {"code": code_for_status(status), "message": message[..end].trim()}
    });
    body.to_string().into_bytes()
}

/// Bodies of answers this layer reshapes are short texts; anything longer is cut.
const MAX_REJECTION_BYTES: usize = 4096;

/// A response layer (`axum::middleware::map_response`): an error answer without a JSON body
/// gets the error shape.
pub async fn error_envelope(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REJECTION_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let body = error_body(status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// If `head` is hyper's own answer to a request it could not parse (a lone `4xx`/`505`
/// status head with an empty body), the shaped answer to write instead. The app's own
/// error answers always carry a body, so they never match.
fn reshape(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() > 1024 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let status_line = text.strip_prefix("HTTP/1.1 ")?;
    let code: u16 = status_line.get(..3)?.parse().ok()?;
    let empty = text
        .split("\r\n")
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !empty || !(400..=499).contains(&code) && code != 505 {
        return None;
    }
    // A version hyper does not speak is the caller's error: 400, not a server error.
    let (status, message) = match code {
        400 => (
            StatusCode::BAD_REQUEST,
            "malformed HTTP request: request line or headers",
        ),
        414 => (
            StatusCode::URI_TOO_LONG,
            "the request URI is longer than this server accepts",
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head is larger than this server accepts",
        ),
        505 => (StatusCode::BAD_REQUEST, "unsupported HTTP version"),
        other => {
            let status = StatusCode::from_u16(other).ok()?;
            (status, status.canonical_reason().unwrap_or("bad request"))
        }
    };
    let body = error_body(status, message);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

/// An accepted connection whose hyper-made error answers are rewritten by [`reshape`].
pub struct ErrorShapedIo<S> {
    inner: S,
    /// A rewritten answer being written: its bytes, how many went out, and the length of
    /// hyper's head it stands for (what hyper is told was written once all of it is out).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ErrorShapedIo<S> {
    pub fn new(inner: S) -> Self {
        ErrorShapedIo {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> ErrorShapedIo<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, _)) = &mut self.pending {
            if *written == bytes.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let (_, _, stands_for) = self.pending.take().expect("a pending answer");
        Poll::Ready(Ok(stands_for))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorShapedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorShapedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // hyper retries a write that was pending with the same bytes: finish ours first.
        if self.pending.is_none() {
            match reshape(buf) {
                Some(answer) => self.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        let single = match (non_empty.next(), non_empty.next()) {
            (Some(only), None) => Some(&**only),
            _ => None,
        };
        if self.pending.is_some() || single.is_some_and(|b| reshape(b).is_some()) {
            let buf = single.unwrap_or(&[]);
            return self.poll_write(cx, buf);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            if self.pending.is_some() {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn json_of(answer: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(answer).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn hyper_error_heads_get_the_shape() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 17:19:53 GMT\r\n\r\n";
        let out = reshape(head).expect("reshaped");
        assert!(out.starts_with(b"HTTP/1.1 414 URI Too Long\r\n"));
        assert_eq!(json_of(&out)["error"]["code"], "uri_too_long");
        let version = b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n";
        let out = reshape(version).expect("reshaped");
        assert!(out.starts_with(b"HTTP/1.1 400 "), "a caller's error");
        assert_eq!(json_of(&out)["error"]["code"], "invalid_argument");
    }

    #[test]
    fn answers_with_a_body_or_a_success_pass_through() {
        assert!(reshape(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(reshape(b"HTTP/1.1 404 Not Found\r\ncontent-length: 76\r\n\r\n").is_none());
        assert!(reshape(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none());
        assert!(reshape(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00").is_none());
    }

    #[tokio::test]
    async fn the_rewritten_answer_is_written_whole() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut io = ErrorShapedIo::new(client);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut all)
                .await
                .unwrap();
            all
        });
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let n = io.write(head).await.unwrap();
        assert_eq!(n, head.len(), "hyper is told its head went out");
        io.shutdown().await.unwrap();
        drop(io);
        let all = reader.await.unwrap();
        assert_eq!(json_of(&all)["error"]["code"], "headers_too_large");
    }

    #[tokio::test]
    async fn plain_text_rejections_get_the_shape() {
        let res = Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from("Invalid URL: Invalid UTF-8 in `asset`"))
            .unwrap();
        let res = error_envelope(res).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_argument");
        assert!(v["error"]["message"].as_str().unwrap().contains("UTF-8"));
        let empty = Response::builder()
            .status(StatusCode::REQUEST_TIMEOUT)
            .body(Body::empty())
            .unwrap();
        let body = axum::body::to_bytes(error_envelope(empty).await.into_body(), 4096)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
    }
}

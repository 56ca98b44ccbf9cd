//! Compressed event streams, opt-in: a client whose `GET …/events` carries
//! `Accept-Encoding: gzip` gets its stream gzip-compressed as a whole
//! (`Content-Encoding: gzip`), one gzip member for the life of the stream, flushed after
//! every write so that each event and `: ping` arrives when it is sent. The events inside
//! are exactly API.md's. A client that does not ask (or refuses gzip with `q=0`) gets the
//! stream as before.
//!
//! A compressor holds a few hundred KiB, so compressed streams are bounded per node
//! (`--max-compressed-streams`); beyond that, streams go out uncompressed, which every
//! client accepts.

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The compressed streams this node may still open.
#[derive(Clone)]
pub struct StreamEncoders(pub Arc<Semaphore>);

impl StreamEncoders {
    pub fn new(max: usize) -> Self {
        StreamEncoders(Arc::new(Semaphore::new(max)))
    }

    /// Room for one more compressed stream, if the client asked for gzip and there is room.
    pub fn gzip_for(&self, headers: &HeaderMap) -> Option<OwnedSemaphorePermit> {
        if !accepts_gzip(headers) {
            return None;
        }
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Whether `Accept-Encoding` lists `gzip` (or `x-gzip`) with a quality above 0.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if !(coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip")) {
                return false;
            }
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
                })
                .next_back()
                .map_or(Some(1.0), |v| v.parse::<f32>().ok());
            q.is_some_and(|q| q > 0.0)
        })
}

struct Gzip<S> {
    inner: Pin<Box<S>>,
    encoder: Option<GzEncoder<Vec<u8>>>,
    _permit: OwnedSemaphorePermit,
}

/// `inner` compressed as one gzip stream, each of its chunks flushed (a sync flush) so that
/// the client can decode it at once; the gzip trailer follows when `inner` ends.
pub fn gzip<S>(
    inner: S,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let state = Gzip {
        inner: Box::pin(inner),
        encoder: Some(GzEncoder::new(Vec::new(), Compression::fast())),
        _permit: permit,
    };
    futures::stream::unfold(state, |mut st| async move {
        let encoder = st.encoder.as_mut()?;
        match st.inner.next().await {
            Some(Ok(chunk)) => {
                // Writing to a Vec cannot fail.
                let _ = encoder.write_all(&chunk);
                let _ = encoder.flush();
                let out = std::mem::take(encoder.get_mut());
                Some((Ok(Bytes::from(out)), st))
            }
            Some(Err(never)) => match never {},
            None => {
                let out = st.encoder.take()?.finish().unwrap_or_default();
                Some((Ok(Bytes::from(out)), st))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Read;

    fn headers(accept: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in accept {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn gzip_only_when_asked_for() {
        assert!(!accepts_gzip(&headers(&[])));
        assert!(accepts_gzip(&headers(&["gzip"])));
        assert!(accepts_gzip(&headers(&["br, GZIP;q=0.5"])));
        assert!(accepts_gzip(&headers(&["identity", "deflate, x-gzip"])));
        assert!(!accepts_gzip(&headers(&["gzip;q=0"])));
        assert!(!accepts_gzip(&headers(&["gzip; q=0.0, br"])));
        assert!(!accepts_gzip(&headers(&["deflate, br, zstd"])));
        assert!(!accepts_gzip(&headers(&["gzipped"])));
        assert!(!accepts_gzip(&headers(&["gzip;q=bogus"])));
    }

    #[test]
    fn compressed_streams_are_bounded() {
        let encoders = StreamEncoders::new(1);
        let gzip = headers(&["gzip"]);
        let first = encoders.gzip_for(&gzip).expect("room for one");
        assert!(encoders.gzip_for(&gzip).is_none(), "the second goes plain");
        assert!(encoders.gzip_for(&headers(&[])).is_none());
        drop(first);
        assert!(encoders.gzip_for(&gzip).is_some());
    }

    #[tokio::test]
    async fn every_chunk_decodes_when_it_arrives_and_the_whole_is_one_gzip_stream() {
        let chunks = vec![
            Bytes::from_static(b": ping\n\n"),
            Bytes::from(format!(
                "event: push\nid: 1\ndata: {}\n\n",
                "x".repeat(5000)
            )),
            Bytes::from_static(b": ping\n\n"),
        ];
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let inner = futures::stream::iter(chunks.clone().into_iter().map(Ok));
        let permit = StreamEncoders::new(1).0.try_acquire_owned().unwrap();
        let out: Vec<Bytes> = gzip(inner, permit).map(|c| c.unwrap()).collect().await;
        assert_eq!(
            out.len(),
            chunks.len() + 1,
            "one piece per chunk, then the trailer"
        );
        // Each piece so far decodes to the chunks so far (nothing held back).
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let mut seen = 0;
        for (piece, chunk) in out.iter().zip(&chunks) {
            decoder.write_all(piece).unwrap();
            decoder.flush().unwrap();
            seen += chunk.len();
            assert_eq!(decoder.get_ref().len(), seen);
        }
        let wire: Vec<u8> = out.iter().flat_map(|c| c.to_vec()).collect();
        assert!(wire.len() < expected.len() / 10, "{} bytes", wire.len());
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut whole)
            .unwrap();
        assert_eq!(whole, expected);
    }
}

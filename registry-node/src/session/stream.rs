//! The body of a session's SSE event stream: push frames from its outbox, `: ping` comments when
//! idle, and the end of the stream when it is replaced, closed or the node shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::outbox::OutboxReader;
use super::prepared::PushFrame;

pub const PING_FRAME: &[u8] = b": ping\n\n";

/// Runs when the HTTP layer drops the body: the session learns its stream is gone.
pub struct StreamGuard(pub Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

struct State {
    rx: OutboxReader,
    /// Chunks made from frames taken from the outbox, written in order.
    ready: VecDeque<Bytes>,
    ping: Interval,
    cancel: CancellationToken,
    _guard: StreamGuard,
}

/// Most bytes copied into one chunk when small pushes queue up.
const MAX_CHUNK: usize = 64 * 1024;

/// A frame's shared datum bytes longer than this go to the socket as they are (one buffer
/// for every stream), not copied into the stream's chunk.
const SHARE_ABOVE: usize = 4 * 1024;

/// Turns `first` and the frames already waiting behind it into chunks: small frames are
/// joined (a burst of pushes, a full push on reopen, costs one write instead of one per
/// push), a large datum is written from its shared buffer, never copied per stream.
fn chunks(first: PushFrame, rx: &mut OutboxReader, ready: &mut VecDeque<Bytes>) {
    let mut buf = BytesMut::new();
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        let (head, tail) = frame.into_parts();
        buf.extend_from_slice(&head);
        if tail.len() > SHARE_ABOVE {
            ready.push_back(buf.split().freeze());
            ready.push_back(tail);
        } else {
            buf.extend_from_slice(&tail);
        }
        if buf.len() < MAX_CHUNK && ready.len() < 16 {
            next = rx.try_recv();
        }
    }
    if !buf.is_empty() {
        ready.push_back(buf.freeze());
    }
}

/// The byte stream of one open event stream.
pub fn event_stream(
    rx: OutboxReader,
    ping_interval: Duration,
    cancel: CancellationToken,
    guard: StreamGuard,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let ping_interval = ping_interval.max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        rx,
        ready: VecDeque::new(),
        ping,
        cancel,
        _guard: guard,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.cancel.is_cancelled() {
            return None;
        }
        if let Some(chunk) = st.ready.pop_front() {
            return Some((Ok(chunk), st));
        }
        tokio::select! {
            biased;
            _ = st.cancel.cancelled() => None,
            frame = st.rx.recv() => {
                let frame = frame?;
                st.ping.reset();
                chunks(frame, &mut st.rx, &mut st.ready);
                let chunk = st.ready.pop_front()?;
                Some((Ok(chunk), st))
            }
            _ = st.ping.tick() => Some((Ok(Bytes::from_static(PING_FRAME)), st)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DatumSnapshot;
    use crate::session::outbox::outbox;
    use crate::session::prepared::PreparedDatum;
    use futures::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn small_pushes_are_joined_and_a_large_datum_is_written_from_its_shared_buffer() {
        let snap = |items: Vec<String>| DatumSnapshot {
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            version: 1,
            publishers: vec![Arc::new(crate::model::Publisher {
                register_id: "p".into(),
                data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
                zone: "z".into(),
                data: items.into(),
                version: 1,
                register_timestamp: 1,
                register_seq: 0,
                client_id: None,
                session_id: "s".into(),
                source: "n".into(),
                owner: 1,
                principal: None,
            })],
        };
        let small = Arc::new(PreparedDatum::new(&snap(vec!["a".into()])));
        let large = Arc::new(PreparedDatum::new(&snap(vec!["x".repeat(100_000)])));
        let (tx, rx) = outbox(16, 1 << 20);
        let mut expected = Vec::new();
        for (seq, p) in [(1, &small), (2, &small), (3, &large), (4, &small)] {
            let f = p.frame(seq, "r", None);
            expected.extend_from_slice(&f.to_bytes());
            tx.try_push(f).unwrap();
        }
        let cancel = CancellationToken::new();
        let stream = event_stream(
            rx,
            Duration::from_secs(60),
            cancel.clone(),
            StreamGuard(None),
        );
        tokio::pin!(stream);
        let mut got = Vec::new();
        let mut chunks = Vec::new();
        while got.len() < expected.len() {
            let chunk = stream.next().await.unwrap().unwrap();
            got.extend_from_slice(&chunk);
            chunks.push(chunk);
        }
        assert_eq!(got, expected, "the bytes of the events, in order");
        let (_, shared) = large.frame(9, "r", None).into_parts();
        assert!(
            chunks.iter().any(|c| c.as_ptr() == shared.as_ptr()),
            "the large datum went out from its shared buffer"
        );
        assert_eq!(
            chunks.len(),
            3,
            "small frames joined: {:?}",
            chunks.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        cancel.cancel();
        assert!(stream.next().await.is_none());
    }
}

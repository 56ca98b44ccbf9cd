//! The body of a session's SSE event stream: queued push frames, `: ping` comments when
//! idle, and the end of the stream when it is replaced, closed or the node shuts down.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

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
    rx: mpsc::Receiver<Bytes>,
    ping: Interval,
    cancel: CancellationToken,
    _guard: StreamGuard,
}

/// Most bytes written to the socket in one go when pushes queue up.
const MAX_CHUNK: usize = 256 * 1024;

/// Joins the frames already waiting behind `first` into one chunk, so that a burst of
/// pushes (a fan-out, a full push on reopen) costs one write instead of one per push.
fn coalesce(first: Bytes, rx: &mut mpsc::Receiver<Bytes>) -> Bytes {
    if rx.is_empty() || first.len() >= MAX_CHUNK {
        return first;
    }
    let mut buf = bytes::BytesMut::with_capacity((first.len() * 4).min(MAX_CHUNK));
    buf.extend_from_slice(&first);
    while buf.len() < MAX_CHUNK {
        match rx.try_recv() {
            Ok(next) => buf.extend_from_slice(&next),
            Err(_) => break,
        }
    }
    buf.freeze()
}

/// The byte stream of one open event stream.
pub fn event_stream(
    rx: mpsc::Receiver<Bytes>,
    ping_interval: Duration,
    cancel: CancellationToken,
    guard: StreamGuard,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let ping_interval = ping_interval.max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        rx,
        ping,
        cancel,
        _guard: guard,
    };
    futures::stream::unfold(state, |mut st| async move {
        tokio::select! {
            biased;
            _ = st.cancel.cancelled() => None,
            msg = st.rx.recv() => match msg {
                Some(frame) => {
                    st.ping.reset();
                    Some((Ok(coalesce(frame, &mut st.rx)), st))
                }
                None => None,
            },
            _ = st.ping.tick() => Some((Ok(Bytes::from_static(PING_FRAME)), st)),
        }
    })
}

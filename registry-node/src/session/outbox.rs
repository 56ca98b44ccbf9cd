//! The outbox of one event stream: push frames queued between the push pipeline and the
//! stream's writer, bounded in frames and in bytes.
//!
//! A frame's bytes count at their wire size, although the datum part is shared with every
//! other stream (see [`PreparedDatum`](super::prepared::PreparedDatum)): the bound is on how
//! far a client may fall behind, and it also bounds the distinct datum versions one stream
//! keeps alive. A frame that does not fit is refused, never queued: the push pipeline sends
//! that subscriber the datum's newest state once there is room again (its retries and the
//! version scan), so a slow reader gets the latest snapshot instead of a backlog of stale
//! ones. An empty outbox takes any frame, so that one push of the largest datum always
//! goes through. The reader's progress ([`Outbox::taken`]) tells a stream that is slow from
//! one that makes none, which is closed (`--stream-stall-ms`).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::prepared::PushFrame;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its frames or bytes bound would be passed.
    Full,
    /// The stream is gone.
    Closed,
}

struct Queue {
    frames: VecDeque<PushFrame>,
    bytes: usize,
    /// Frames the reader has taken since the outbox was made.
    taken: u64,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    readable: Notify,
    max_frames: usize,
    max_bytes: usize,
}

/// The push pipeline's end of an outbox; dropping it closes the outbox (what was queued is
/// freed at once, even while the writer is stuck on a socket).
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The stream writer's end of an outbox; dropping it closes the outbox.
pub struct OutboxReader {
    shared: Arc<Shared>,
}

/// A new outbox holding at most `max_frames` frames and `max_bytes` bytes (at least one
/// frame of any size).
pub fn outbox(max_frames: usize, max_bytes: usize) -> (Outbox, OutboxReader) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            frames: VecDeque::new(),
            bytes: 0,
            taken: 0,
            closed: false,
        }),
        readable: Notify::new(),
        max_frames: max_frames.max(1),
        max_bytes,
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReader { shared },
    )
}

impl Outbox {
    /// Queues `frame` if it fits.
    pub fn try_push(&self, frame: PushFrame) -> Result<(), Refused> {
        let mut q = self.shared.queue.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        let len = frame.len();
        let fits = q.frames.is_empty()
            || (q.frames.len() < self.shared.max_frames
                && q.bytes.saturating_add(len) <= self.shared.max_bytes);
        if !fits {
            return Err(Refused::Full);
        }
        q.bytes += len;
        q.frames.push_back(frame);
        drop(q);
        self.shared.readable.notify_one();
        Ok(())
    }

    /// Frames the reader has taken so far: it made progress when this moved.
    pub fn taken(&self) -> u64 {
        self.shared.queue.lock().taken
    }

    /// Frames and bytes waiting.
    pub fn queued(&self) -> (usize, usize) {
        let q = self.shared.queue.lock();
        (q.frames.len(), q.bytes)
    }

    /// Refuses every later frame and drops the queued ones; the reader sees the end.
    pub fn close(&self) {
        close(&self.shared);
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        close(&self.shared);
    }
}

fn close(shared: &Shared) {
    let dropped = {
        let mut q = shared.queue.lock();
        q.closed = true;
        q.bytes = 0;
        std::mem::take(&mut q.frames)
    };
    drop(dropped);
    shared.readable.notify_one();
}

impl OutboxReader {
    /// The next frame without waiting.
    pub fn try_recv(&mut self) -> Option<PushFrame> {
        self.take()
    }

    fn take(&self) -> Option<PushFrame> {
        let mut q = self.shared.queue.lock();
        let frame = q.frames.pop_front()?;
        q.bytes -= frame.len();
        q.taken += 1;
        Some(frame)
    }

    /// The next frame; `None` once the outbox is closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<PushFrame> {
        loop {
            let notified = self.shared.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(frame) = self.take() {
                return Some(frame);
            }
            if self.shared.queue.lock().closed {
                return None;
            }
            notified.await;
        }
    }
}

impl Drop for OutboxReader {
    fn drop(&mut self) {
        close(&self.shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(_seq: u64, bytes: usize) -> PushFrame {
        PushFrame::filler(bytes)
    }

    #[test]
    fn bounded_in_frames_and_in_bytes_and_an_empty_outbox_takes_anything() {
        let (tx, mut rx) = outbox(3, 1000);
        assert_eq!(
            tx.try_push(frame(1, 5000)),
            Ok(()),
            "one oversized frame fits alone"
        );
        assert_eq!(tx.try_push(frame(2, 200)), Err(Refused::Full));
        assert_eq!(rx.try_recv().map(|f| f.len()), Some(5000));
        assert_eq!(tx.taken(), 1);
        for seq in 3..6 {
            assert_eq!(tx.try_push(frame(seq, 300)), Ok(()));
        }
        assert_eq!(tx.queued(), (3, 900));
        assert_eq!(
            tx.try_push(frame(6, 50)),
            Err(Refused::Full),
            "frames bound"
        );
        rx.try_recv().unwrap();
        assert_eq!(
            tx.try_push(frame(7, 500)),
            Err(Refused::Full),
            "bytes bound"
        );
        assert_eq!(tx.try_push(frame(8, 400)), Ok(()));
        assert_eq!(tx.queued(), (3, 1000));
        drop(rx);
        assert_eq!(tx.try_push(frame(9, 10)), Err(Refused::Closed));
        assert_eq!(tx.queued(), (0, 0), "closing frees what was queued");
    }

    #[tokio::test]
    async fn the_reader_wakes_for_frames_and_sees_the_end() {
        let (tx, mut rx) = outbox(8, 1 << 20);
        let reader = tokio::spawn(async move {
            let mut seen = 0;
            while rx.recv().await.is_some() {
                seen += 1;
            }
            seen
        });
        for seq in 0..5 {
            tokio::task::yield_now().await;
            tx.try_push(frame(seq, 100)).unwrap();
        }
        while tx.taken() < 5 {
            tokio::task::yield_now().await;
        }
        tx.close();
        assert_eq!(reader.await.unwrap(), 5);
    }
}

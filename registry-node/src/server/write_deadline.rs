//! A connection whose writes fail once they have made no progress for a bounded time: an
//! event stream to a peer that stopped taking bytes (it vanished, or it stopped reading)
//! ends, instead of holding its socket, its session and its queued pushes for as long as the
//! kernel keeps retrying (about 15 minutes).
//!
//! The kernel bounds on the same socket (TCP keepalive and `TCP_USER_TIMEOUT`, set by
//! the server) normally end such a connection first; this bound is the one that holds
//! whatever the kernel does, and also covers a peer that keeps acknowledging but takes no
//! data (a zero window) on kernels that let that go on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// An IO whose writes (and flushes) fail with `TimedOut` after `limit` without progress.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending: fires `limit` after the write stopped making progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Passes a write's outcome on, arming the deadline while it is pending and failing it
    /// once the deadline passed.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer took no bytes within the write deadline",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_at_the_deadline_and_progress_resets_it() {
        // A pipe of 1 KiB stands for the socket: its peer reads a little every 150 ms for
        // 1.2 s (progress within every 300 ms deadline), then reads no more.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = WriteDeadline::new(near, Duration::from_millis(300));
        let reading = Duration::from_millis(1200);
        let peer = tokio::spawn(async move {
            let until = Instant::now() + reading;
            let mut buf = [0u8; 256];
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(150)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        let started = Instant::now();
        let outcome = loop {
            if let Err(e) = io.write_all(&[7u8; 256]).await {
                break e;
            }
        };
        let waited = started.elapsed();
        assert_eq!(outcome.kind(), io::ErrorKind::TimedOut);
        assert!(
            waited >= reading,
            "cut while the peer still read: {waited:?}"
        );
        assert!(waited < reading + Duration::from_secs(5), "{waited:?}");
        drop(peer.await.unwrap());
    }

    #[tokio::test]
    async fn a_peer_that_keeps_reading_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = WriteDeadline::new(near, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 512];
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match far.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        for _ in 0..100 {
            io.write_all(&[1u8; 256])
                .await
                .expect("a slow but steady reader");
        }
        drop(io);
        assert_eq!(reader.await.unwrap(), 100 * 256);
    }
}

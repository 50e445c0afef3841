//! Write progress of a hyper connection: [`WatchedIo`] wraps the socket
//! and notes when a write starts waiting on a client that does not read,
//! so the listener can close a connection that took no data for
//! `http.write_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// When writes to a socket last made no progress.
#[derive(Default)]
pub struct WriteWatch {
    /// When a write started waiting for the socket, if one is waiting.
    blocked_since: parking_lot::Mutex<Option<Instant>>,
}

impl WriteWatch {
    fn observe<T>(&self, result: &Poll<T>) {
        let mut since = self.blocked_since.lock();
        match result {
            Poll::Pending => {
                since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => *since = None,
        }
    }

    /// Resolves once a write has waited longer than `limit`.
    pub async fn stalled_for(&self, limit: Duration) {
        let check = (limit / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(check).await;
            if self
                .blocked_since
                .lock()
                .is_some_and(|t| t.elapsed() >= limit)
            {
                return;
            }
        }
    }
}

/// The connection's socket, noting when writes wait on a client that does
/// not read.
pub struct WatchedIo<T> {
    pub inner: T,
    pub watch: Arc<WriteWatch>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch.observe(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch.observe(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch.observe(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! Read and write timeouts on a connection, as on a blocking socket: a countdown starts when a
//! read (or a write, flush, shutdown) has to wait, and the operation fails with `TimedOut` if
//! it is still waiting when the countdown ends.
//!
//! What `tokio-io-timeout` does, lazily. It moved its timer on every wait, and on every read
//! that completed moved it to *now*: an earlier deadline, so tokio woke its timer driver, and
//! the timer then fired and woke the connection's task for nothing (1.4 timer firings a
//! request, and under load a driver wake each; BENCHMARKS.md). Here a wait that ends leaves the
//! timer where it is, and a wait moves it only when it rings before the wait's own end: about
//! once per timeout on a busy connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

pin_project! {
    /// `inner` with a read timeout and a write timeout (`None`: none).
    pub struct TimeoutStream<S> {
        #[pin]
        inner: S,
        #[pin]
        read: Countdown,
        #[pin]
        write: Countdown,
    }
}

impl<S> TimeoutStream<S> {
    pub fn new(inner: S, read: Option<Duration>, write: Option<Duration>) -> TimeoutStream<S> {
        TimeoutStream {
            inner,
            read: Countdown::new(read),
            write: Countdown::new(write),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

pin_project! {
    /// One direction's countdown.
    struct Countdown {
        timeout: Option<Duration>,
        // When the current wait times out; `None` while nothing waits.
        until: Option<Instant>,
        // Rings at `until` or earlier (left from an earlier wait), never later.
        #[pin]
        timer: Sleep,
    }
}

impl Countdown {
    fn new(timeout: Option<Duration>) -> Countdown {
        Countdown {
            timeout,
            until: None,
            // Registered with the timer only when first polled.
            timer: sleep_until(Instant::now()),
        }
    }

    /// The operation has to wait: whether its wait has now lasted the whole timeout.
    fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let mut this = self.project();
        let Some(timeout) = *this.timeout else {
            return false;
        };
        let until = *this.until.get_or_insert_with(|| Instant::now() + timeout);
        if this.timer.deadline() > until {
            this.timer.as_mut().reset(until);
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= until {
                *this.until = None;
                return true;
            }
            // Rang for an earlier wait: on to this one's end.
            this.timer.as_mut().reset(until);
        }
        false
    }

    /// The operation went on: its wait is over. The timer stays as it is.
    fn stop(self: Pin<&mut Self>) {
        *self.project().until = None;
    }

    /// `poll` of the operation, under this countdown.
    fn guard<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stop();
            poll
        } else if self.poll_expired(cx) {
            Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)))
        } else {
            Poll::Pending
        }
    }
}

impl<S: AsyncRead> AsyncRead for TimeoutStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_read(cx, buf);
        this.read.guard(cx, poll)
    }
}

impl<S: AsyncWrite> AsyncWrite for TimeoutStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        this.write.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        this.write.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        this.write.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_shutdown(cx);
        this.write.guard(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn timed(stream: tokio::io::DuplexStream) -> Pin<Box<TimeoutStream<tokio::io::DuplexStream>>> {
        Box::pin(TimeoutStream::new(stream, Some(TIMEOUT), Some(TIMEOUT)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waiting_the_whole_timeout_fails() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = timed(ours);
        let started = Instant::now();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_counts_from_its_own_start() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = timed(ours);
        let mut byte = [0u8; 1];
        // Waits of 50 s each, 250 s in all: none is a timeout. The timer left by one wait
        // rings during the next, which goes on.
        for i in 0..5u8 {
            let peer = async {
                tokio::time::sleep(Duration::from_secs(50)).await;
                theirs.write_all(&[i]).await.unwrap();
            };
            let (read, ()) = tokio::join!(io.read(&mut byte), peer);
            assert_eq!((read.unwrap(), byte[0]), (1, i));
        }
        // A byte waiting: no wait, no countdown.
        theirs.write_all(&[9]).await.unwrap();
        assert_eq!(io.read(&mut byte).await.unwrap(), 1);
        // And the next wait still gets its whole timeout.
        let started = Instant::now();
        let err = io.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_ends_leaves_the_timer_alone() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = timed(ours);
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let mut armed = None;
        for _ in 0..3 {
            let peer = async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                theirs.write_all(b"x").await.unwrap();
            };
            let (read, ()) = tokio::join!(io.read(&mut byte), peer);
            read.unwrap();
            // Set by the first wait, for its end; neither its end nor the next waits move it
            // (`tokio-io-timeout` moved it to "now" after every read, and twice a request).
            let deadline = io.read.timer.deadline();
            assert_eq!(*armed.get_or_insert(deadline), deadline);
            assert_eq!(io.read.until, None);
        }
        assert_eq!(armed, Some(started + TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_take_fails() {
        let (ours, _theirs) = tokio::io::duplex(16);
        let mut io = timed(ours);
        let started = Instant::now();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_a_wait_lasts() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = Box::pin(TimeoutStream::new(ours, None, None));
        let peer = async {
            tokio::time::sleep(TIMEOUT * 10).await;
            theirs.write_all(b"x").await.unwrap();
        };
        let mut byte = [0u8; 1];
        let (read, ()) = tokio::join!(io.read(&mut byte), peer);
        assert_eq!(read.unwrap(), 1);
    }
}

//! Request smuggling guard: a request that carries both `Content-Length` and
//! `Transfer-Encoding` is refused with 400.
//!
//! hyper resolves that conflict by itself (chunked wins, the length is dropped, the
//! connection closes after the response), so the handler can no longer see it. This reader
//! sits between the socket and hyper, follows request boundaries, and renames such a request's
//! `Content-Length` to [`CONFLICT_MARKER`] (same length, rewritten in place) so that the proxy
//! can refuse it. Anything it cannot follow (HTTP/2, upgrades, malformed framing that hyper
//! will reject anyway) it passes through untouched.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The header a conflicting `Content-Length` is renamed to: exactly as long, so the rewrite
/// needs no copying.
pub const CONFLICT_MARKER: &str = "x-smuggled-len";
/// The marker as a header name, for lookups (a `&str` is parsed into a name on every lookup).
pub const CONFLICT_MARKER_NAME: http::HeaderName = http::HeaderName::from_static(CONFLICT_MARKER);

const _: () = assert!(CONFLICT_MARKER.len() == "content-length".len());

/// Room made in the read buffer before each read from the socket.
const READ_CHUNK: usize = 16 * 1024;

/// What the guard tells its connection's serving loop while hyper holds it: whether it still
/// follows requests (not once it passes everything through, after an `Upgrade` or a
/// `CONNECT`), and whether hyper's last write to the socket had to wait (hyper then holds
/// bytes not yet sent). Relaxed atomics: the guard and the loop run on one task.
#[derive(Debug)]
pub struct Signals {
    following: AtomicBool,
    write_blocked: AtomicBool,
}

impl Signals {
    /// A new hyper connection could take over from this one once it is idle: the guard follows
    /// requests and hyper has nothing left to write.
    pub fn may_hand_over(&self) -> bool {
        self.following.load(Ordering::Relaxed) && !self.write_blocked.load(Ordering::Relaxed)
    }
}

/// Heads whose start is remembered: a hyper connection parks only after a quiet period, so at
/// most a few pipelined heads are unread by it then.
const HEAD_STARTS_KEPT: usize = 8;

/// What an HTTP/2 connection opens with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
enum State {
    /// Collecting a request head; nothing is released until it is complete.
    Head,
    /// Passing `n` body bytes.
    Body(u64),
    /// Passing a chunked body: at a chunk-size line.
    ChunkSize,
    /// Passing chunk data plus its CRLF.
    ChunkData(u64),
    /// Passing trailers up to the empty line.
    Trailers,
    /// Not following any more: everything passes.
    Passthrough,
}

pub struct FramingGuard<S> {
    inner: S,
    /// The guard, not hyper, enforces the header read timeout, as Go does: from the accept to
    /// the end of the first head, then from the first byte of each later head. Between
    /// requests a keep-alive connection may idle (up to the read timeout, as Go's IdleTimeout
    /// defaults to ReadTimeout); hyper's timer would close it after the header timeout.
    header_timeout: Duration,
    head_deadline: Option<Pin<Box<Sleep>>>,
    /// No byte has arrived yet: the first head's clock runs from the accept.
    awaiting_first_byte: bool,
    state: State,
    /// Bytes read from the socket, not yet examined.
    pending: BytesMut,
    /// Bytes examined and ready for hyper.
    ready: BytesMut,
    max_head: usize,
    /// Bytes handed to hyper so far, and where the latest heads begin in that count: where a
    /// new hyper connection can take over from one that ended ([`FramingGuard::resume_at`]).
    released: u64,
    head_starts: [u64; HEAD_STARTS_KEPT],
    heads: usize,
    signals: Arc<Signals>,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, max_head: usize, header_timeout: Duration) -> FramingGuard<S> {
        FramingGuard {
            inner,
            header_timeout,
            head_deadline: None,
            awaiting_first_byte: true,
            state: State::Head,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            max_head,
            released: 0,
            // No head starts at u64::MAX: the slots not yet used match nothing.
            head_starts: [u64::MAX; HEAD_STARTS_KEPT],
            heads: 0,
            signals: Arc::new(Signals {
                following: AtomicBool::new(true),
                write_blocked: AtomicBool::new(false),
            }),
        }
    }

    /// Hand up to `n` pending bytes to hyper untouched; returns how many are still expected.
    fn pass(&mut self, n: u64) -> u64 {
        let take = (self.pending.len() as u64).min(n) as usize;
        let part = self.pending.split_to(take);
        self.ready.unsplit(part);
        n - take as u64
    }

    /// Move examined bytes from `pending` to `ready`; returns when more input is needed.
    fn advance(&mut self) {
        loop {
            match self.state {
                State::Passthrough => {
                    // Every way into passing through comes here (it never ends).
                    self.signals.following.store(false, Ordering::Relaxed);
                    let all = self.pending.split();
                    self.ready.unsplit(all);
                    return;
                }
                State::Head => {
                    let Some(end) = find_blank_line(&self.pending) else {
                        if self.pending.len() > self.max_head {
                            // hyper will answer 431; stop following.
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    };
                    let mut head = self.pending.split_to(end + 4);
                    self.state = examine_head(&mut head);
                    self.head_starts[self.heads % HEAD_STARTS_KEPT] =
                        self.released + self.ready.len() as u64;
                    self.heads += 1;
                    self.ready.unsplit(head);
                }
                State::Body(n) => {
                    if self.pending.is_empty() {
                        return;
                    }
                    let left = self.pass(n);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkSize => match httparse::parse_chunk_size(&self.pending) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let line = self.pending.split_to(used);
                        self.ready.unsplit(line);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size.saturating_add(2))
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.pending.len() > 1024 {
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    }
                    Err(_) => self.state = State::Passthrough,
                },
                State::ChunkData(n) => {
                    if self.pending.is_empty() {
                        return;
                    }
                    let left = self.pass(n);
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::Trailers => {
                    if self.pending.starts_with(b"\r\n") {
                        let end = self.pending.split_to(2);
                        self.ready.unsplit(end);
                        self.state = State::Head;
                        continue;
                    }
                    match find_blank_line(&self.pending) {
                        Some(end) => {
                            let t = self.pending.split_to(end + 4);
                            self.ready.unsplit(t);
                            self.state = State::Head;
                        }
                        None if self.pending.len() > self.max_head => {
                            self.state = State::Passthrough
                        }
                        None => return,
                    }
                }
            }
        }
    }
}

/// Where the first `\r\n\r\n` starts. Fixed bytes compared in place: a slice comparison per
/// position called `memcmp` for every byte of every head.
fn find_blank_line(hay: &[u8]) -> Option<usize> {
    hay.windows(4)
        .position(|w| w[0] == b'\r' && w[1] == b'\n' && w[2] == b'\r' && w[3] == b'\n')
}

/// Decide how the body after `head` is framed, renaming a conflicting `Content-Length`.
fn examine_head(head: &mut BytesMut) -> State {
    // Uninitialised slots: initialising 256 headers wrote 8 KiB per request.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; 256];
    let mut req = httparse::Request::new(&mut []);
    let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(head, &mut slots) else {
        return State::Passthrough;
    };
    if req.method == Some("CONNECT") {
        return State::Passthrough;
    }
    let mut chunked = false;
    let mut has_te = false;
    let mut length: Option<u64> = None;
    let mut cl_offsets = Vec::new();
    let base = head.as_ptr() as usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            chunked = String::from_utf8_lossy(h.value)
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl_offsets.push(h.name.as_ptr() as usize - base);
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            return State::Passthrough;
        }
    }
    if has_te && !cl_offsets.is_empty() {
        for offset in cl_offsets {
            head[offset..offset + CONFLICT_MARKER.len()]
                .copy_from_slice(CONFLICT_MARKER.as_bytes());
        }
    }
    match (has_te, chunked, length) {
        (true, true, _) => State::ChunkSize,
        // hyper refuses a non-chunked Transfer-Encoding.
        (true, false, _) => State::Passthrough,
        (false, _, Some(0)) | (false, _, None) => State::Head,
        (false, _, Some(n)) => State::Body(n),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                this.released += n as u64;
                if this.ready.is_empty() && this.pending.is_empty() {
                    // Let the read buffer go between requests: an idle keep-alive connection
                    // must not hold 16 KiB (10,000 of them held 600 MB).
                    this.ready = BytesMut::new();
                    this.pending = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.pending.is_empty() {
                if let State::Body(_) | State::Passthrough = this.state {
                    // Body bytes go straight into hyper's buffer: the guard copies none of them,
                    // only holds back what follows the body (the next request's head).
                    return this.read_body_into(cx, buf);
                }
            }
            match ready!(this.poll_fill(cx))? {
                0 => {
                    // EOF: release whatever was held so hyper sees the truncated head.
                    let rest = this.pending.split();
                    this.ready.unsplit(rest);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                _ => this.advance(),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> FramingGuard<S> {
    /// Read what the socket has into `pending`, under the head's deadline while a head is
    /// awaited: `Ok(0)` at EOF. A head is read on the stack, uninitialised, and only its bytes
    /// are kept: a connection waiting for its next request holds no buffer (10,000 idle
    /// keep-alive connections with a 16 KiB buffer each held 600 MB).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let holding_head = matches!(self.state, State::Head)
            && (!self.pending.is_empty() || self.awaiting_first_byte);
        if !holding_head {
            self.head_deadline = None;
        } else if self.head_deadline.is_none() {
            self.head_deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
        }
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if let Some(deadline) = self.head_deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not received in time",
                        )));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                if !filled.is_empty() {
                    self.awaiting_first_byte = false;
                    self.pending.extend_from_slice(filled);
                }
                Poll::Ready(Ok(filled.len()))
            }
        }
    }

    /// Whether the connection opens with HTTP/2's preface (prior knowledge, or after ALPN),
    /// read as hyper-util's `auto` reads it: until the preface's 24 bytes or the first byte
    /// that differs, within the header timeout. The bytes stay for whoever serves it; an
    /// HTTP/2 connection is passed through untouched from then on.
    pub fn poll_opens_with_h2_preface(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let seen = self.pending.len().min(H2_PREFACE.len());
            if self.pending[..seen] != H2_PREFACE[..seen] {
                self.advance();
                return Poll::Ready(Ok(false));
            }
            if seen == H2_PREFACE.len() {
                self.state = State::Passthrough;
                self.advance();
                return Poll::Ready(Ok(true));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                self.advance();
                return Poll::Ready(Ok(false));
            }
        }
    }
}

impl<S> FramingGuard<S> {
    /// What this guard tells its connection's serving loop ([`Signals`]).
    pub fn signals(&self) -> Arc<Signals> {
        self.signals.clone()
    }

    /// Note whether a write to the socket had to wait.
    fn wrote<T>(&self, result: Poll<T>) -> Poll<T> {
        self.signals
            .write_blocked
            .store(result.is_pending(), Ordering::Relaxed);
        result
    }

    /// The stream under the guard.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket and not yet taken by hyper.
    pub fn holds_bytes(&self) -> bool {
        !self.pending.is_empty() || !self.ready.is_empty()
    }

    /// A hyper connection ended leaving `unread` of the bytes it was given (`Parts::read_buf`):
    /// whether a new one can take over where it stopped, at the start of a request. Then those
    /// bytes are read again first, and `true`; inside a request (a body hyper gave up on) or
    /// where this guard no longer follows requests, `false`.
    pub fn resume_at(&mut self, unread: &[u8]) -> bool {
        let Some(at) = self.released.checked_sub(unread.len() as u64) else {
            return false;
        };
        let between_requests =
            at == self.released && self.ready.is_empty() && matches!(self.state, State::Head);
        if !between_requests && !self.head_starts.contains(&at) {
            return false;
        }
        if !unread.is_empty() {
            let mut again = BytesMut::with_capacity(unread.len() + self.ready.len());
            again.extend_from_slice(unread);
            again.extend_from_slice(&self.ready);
            self.ready = again;
            self.released = at;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> FramingGuard<S> {
    /// In a body (or passing everything) with nothing held: read into hyper's `buf` itself,
    /// then take back the bytes past the body's end, if any, to examine them as a head.
    fn read_body_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.head_deadline = None;
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let read = (buf.filled().len() - before) as u64;
        if let State::Body(left) = self.state {
            if read < left {
                self.state = State::Body(left - read);
            } else {
                let end = before + left as usize;
                self.pending.extend_from_slice(&buf.filled()[end..]);
                buf.set_filled(end);
                self.released += left;
                self.state = State::Head;
                self.advance();
                return Poll::Ready(Ok(()));
            }
        }
        self.released += read;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(written)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(flushed)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(written)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn through(input: &[u8], piece: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guard = FramingGuard::new(server, 64 * 1024, std::time::Duration::from_secs(5));
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for p in data.chunks(piece) {
                client.write_all(p).await.unwrap();
            }
        });
        let mut out = Vec::new();
        let reader = async {
            let mut buf = [0u8; 7];
            loop {
                let n = guard.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), reader).await;
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn marks_conflicts_in_every_head_and_passes_bodies_untouched() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n16\r\nContent-Length: 1\r\n\r\n\r\n0\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        for piece in [1, 3, 17, 4096] {
            let out = through(input, piece).await;
            let text = String::from_utf8(out).unwrap();
            // The body of /b contains a header-like line: untouched.
            assert!(text.contains("16\r\nContent-Length: 1\r\n"), "{piece}");
            assert!(
                text.contains("POST /a HTTP/1.1\r\nContent-Length: 5"),
                "{piece}"
            );
            assert!(
                text.contains("Transfer-Encoding: chunked\r\nx-smuggled-len: 4"),
                "{piece}"
            );
            assert!(
                text.contains("x-smuggled-len: 0\r\ntransfer-encoding"),
                "{piece}"
            );
            assert_eq!(text.len(), input.len());
        }
    }

    /// Reads everything `input` makes the guard release, as hyper would, in 7-byte reads.
    async fn released_by(
        guard: &mut FramingGuard<tokio::io::DuplexStream>,
        want: usize,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        while out.len() < want {
            let n = guard.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF after {out:?}");
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[tokio::test]
    async fn a_new_reader_resumes_only_at_the_start_of_a_request() {
        let first = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let second = b"GET /b HTTP/1.1\r\n\r\n".as_slice();
        let third = b"POST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".as_slice();
        let all = [first, second, third].concat();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut client, &all)
            .await
            .unwrap();
        let mut guard = FramingGuard::new(server, 64 * 1024, std::time::Duration::from_secs(5));
        let out = released_by(&mut guard, all.len()).await;
        assert_eq!(out, all);

        // Inside a head, inside a body, or more than was given: not a place to resume.
        let unread_from = |at: usize| all[at..].to_vec();
        for at in [
            3,
            first.len() - 2,
            first.len() + second.len() + 4,
            all.len() - 1,
        ] {
            assert!(!guard.resume_at(&unread_from(at)), "at {at}");
        }
        assert!(!guard.resume_at(&[0u8; 4096]));

        // At the start of the second request: it and the third are read again, as they were.
        let at = first.len();
        assert!(guard.resume_at(&unread_from(at)));
        let again = released_by(&mut guard, all.len() - at).await;
        assert_eq!(again, &all[at..]);
        // Everything taken, between requests: a reader may start here too.
        assert!(guard.resume_at(&[]));
        assert!(!guard.holds_bytes());

        // In a body whose rest has not arrived: nowhere to resume but its start.
        let fourth = b"POST /d HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf".as_slice();
        tokio::io::AsyncWriteExt::write_all(&mut client, fourth)
            .await
            .unwrap();
        let out = released_by(&mut guard, fourth.len()).await;
        assert_eq!(out, fourth);
        assert!(!guard.resume_at(&[]));
        assert!(!guard.resume_at(b"half"));
        assert!(guard.resume_at(fourth));
    }

    #[tokio::test]
    async fn tells_http2_from_http1_by_the_first_bytes() {
        for (input, h2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"[..], true),
            (b"GET / HTTP/1.1\r\n\r\n", false),
            (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", false),
            (b"PRI * HTTP/1.1\r\n\r\n", false),
            (b"PR", false),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            for byte in input {
                tokio::io::AsyncWriteExt::write_all(&mut client, &[*byte])
                    .await
                    .unwrap();
            }
            drop(client);
            let mut guard = FramingGuard::new(server, 64 * 1024, std::time::Duration::from_secs(5));
            let found = std::future::poll_fn(|cx| guard.poll_opens_with_h2_preface(cx)).await;
            assert_eq!(found.unwrap(), h2, "{input:?}");
            // The bytes read to tell are read again by whoever serves the connection.
            let mut out = Vec::new();
            guard.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, input, "{input:?}");
        }
    }

    #[test]
    fn finds_the_first_blank_line() {
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_blank_line(b"\r\n\r\n\r\n\r\n"), Some(0));
        assert_eq!(find_blank_line(b"a\r\nb: c\r\n\r\nbody\r\n\r\n"), Some(7));
        for none in [&b""[..], b"\r\n\r", b"\n\r\n\r", b"a\r\n\nb", b"\r\r\n\n"] {
            assert_eq!(find_blank_line(none), None, "{none:?}");
        }
    }
}

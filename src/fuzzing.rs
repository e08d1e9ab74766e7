//! The properties the fuzz targets check, one function per target. `fuzz/` runs each under
//! libFuzzer (`scripts/fuzz`); `tests/fuzz_corpus.rs` replays the corpus kept in
//! `fuzz/corpus/<target>/`, so every input a run found interesting stays a test.
//!
//! Each function panics when a property fails and returns when the input passed. Inputs are
//! bytes the way libFuzzer makes them; how a target cuts them into fields is said beside it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::config::{parse_bool, parse_duration, ConfigFile};
use crate::connector::BusConfig;
use crate::connector::{Connector, Service};
use crate::ingress::http::config::{PortMappings, PROPERTIES as HTTP_PROPERTIES};
use crate::ingress::http::framing_guard::{FramingGuard, CONFLICT_MARKER};
use crate::ingress::smtp::email::{self, Email, OnIncomingEmailIn};
use crate::ingress::smtp::{SmtpConfig, SmtpIngress};
use crate::wire::codec::decode_request_headers;
use crate::wire::subject::{is_valid_plane, MAX_SUBJECT_LEN};
use crate::wire::{self, request_subject, response_subject, subscription_subject};

/// A property: panics when `data` breaks it.
pub type Property = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call it.
pub const TARGETS: [(&str, Property); 6] = [
    ("subject", subject),
    ("payload", payload),
    ("framing_guard", framing_guard),
    ("config", config),
    ("email", email),
    ("smtp_session", smtp_session),
];

/// NATS subject matching: `*` is one token, `>` one or more.
fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn assert_well_formed_subject(s: &str) {
    assert!(s.len() <= MAX_SUBJECT_LEN, "{} bytes: {s}", s.len());
    assert!(
        !s.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
        "space or control byte in {s:?}"
    );
    assert!(s.split('.').all(|t| !t.is_empty()), "empty token in {s:?}");
}

/// Fields separated by NUL: plane, port, host, method, path, instance id. A request subject
/// is well formed (no empty token, no wildcard, no space), its path tokens are escaped, the
/// subscription for the same literal path is the same subject, and the subscriptions for any
/// port and method, and for a greedy path, match it.
pub fn subject(data: &[u8]) {
    let mut fields = data
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let mut next = || fields.next().unwrap_or_default();
    let (plane, port, host, method, path, id) = (next(), next(), next(), next(), next(), next());
    if !is_valid_plane(&plane) {
        return; // The plane is checked once, at configuration.
    }
    let port = port.parse::<u16>().unwrap_or_else(|_| {
        port.bytes()
            .fold(0u16, |p, b| p.wrapping_mul(31) ^ b as u16)
    });
    if let Ok(s) = response_subject(&plane, &host, &id) {
        assert_well_formed_subject(&s);
        assert!(!s.split('.').any(|t| t == "*" || t == ">"), "{s}");
    }
    let Ok(s) = request_subject(&plane, port, &host, &method, &path) else {
        return;
    };
    assert_well_formed_subject(&s);
    let tokens: Vec<&str> = s.split('.').collect();
    assert!(!tokens.iter().any(|t| *t == "*" || *t == ">"), "{s}");
    let bar = tokens.iter().position(|t| *t == "|").expect("a | token");
    assert_eq!(tokens[bar + 1], method.to_ascii_uppercase(), "{s}");
    for t in &tokens[bar + 2..] {
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)),
            "unescaped path token {t:?} in {s}"
        );
    }
    let literal = !path.contains(['{', '}'])
        && !path
            .trim_start_matches('/')
            .split('/')
            .any(|seg| seg == "*");
    if literal && port != 0 && !method.eq_ignore_ascii_case("ANY") {
        let sub = subscription_subject(&plane, port, &host, &method, &path)
            .expect("a literal path subscribes");
        assert_eq!(sub, s, "subscription and request subject differ");
    }
    if literal {
        let any = subscription_subject(&plane, 0, &host, "ANY", &path).expect("any subscribes");
        assert!(nats_matches(&any, &s), "{any} does not match {s}");
    }
    let greedy = subscription_subject(&plane, 0, &host, "ANY", "/{rest+}").expect("greedy");
    assert!(nats_matches(&greedy, &s), "{greedy} does not match {s}");
}

/// First byte even: a request payload, odd: a response. Whatever decodes must encode, and
/// after one round trip the encoding is a fixed point with the same method, target, status and
/// body.
pub fn payload(data: &[u8]) {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(rest);
    if kind & 1 == 0 {
        let headers_only = decode_request_headers(rest);
        let Ok(first) = wire::decode_request(bytes) else {
            return;
        };
        assert!(headers_only.is_ok(), "the head alone did not decode");
        let once = wire::encode_request(&first).expect("a decoded request encodes");
        let second = wire::decode_request(once.clone()).expect("an encoded request decodes");
        assert_eq!(second.method(), first.method());
        // `path()`, not `path_and_query()`: an empty path and "/" are the same target but
        // `PathAndQuery` compares its raw bytes.
        assert_eq!(second.uri().path(), first.uri().path());
        assert_eq!(second.uri().query(), first.uri().query());
        assert_eq!(second.uri().host(), first.uri().host());
        assert_eq!(second.body(), first.body());
        let twice = wire::encode_request(&second).expect("re-encodes");
        assert_eq!(twice, once, "the encoding is not stable");
    } else {
        let Ok(first) = wire::decode_response(bytes) else {
            return;
        };
        let once = wire::encode_response(&first);
        let second = wire::decode_response(once.clone()).expect("an encoded response decodes");
        assert_eq!(second.status(), first.status());
        assert_eq!(second.body(), first.body());
        assert_eq!(
            wire::encode_response(&second),
            once,
            "the encoding is not stable"
        );
        let ack = wire::encode_ack(first.status(), first.headers());
        wire::decode_response(ack).expect("an ack decodes");
    }
}

thread_local! {
    /// One runtime per fuzzing thread: building one per input would dominate the run.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
}

/// A socket that hands out its bytes `piece` at a time, then EOF.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    piece: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .piece
            .min(self.data.len() - self.at)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// First byte: the size of the socket's reads, second: of hyper's; the rest is the stream. The
/// guard hands on exactly the bytes it was given, changed only where a `Content-Length` beside
/// a `Transfer-Encoding` is renamed, and never where no `Transfer-Encoding` appears.
pub fn framing_guard(data: &[u8]) {
    let [socket_piece, read_size, stream @ ..] = data else {
        return;
    };
    let socket = Pieces {
        data: stream.to_vec(),
        at: 0,
        piece: *socket_piece as usize % 64 * 97 + 1,
    };
    let read_size = *read_size as usize % 32 * 131 + 1;
    let out = RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut guard = FramingGuard::new(socket, 64 * 1024, Duration::from_secs(5));
            let mut out = Vec::with_capacity(stream.len());
            let mut buf = vec![0u8; read_size];
            loop {
                let n = guard.read(&mut buf).await.expect("reads from memory");
                if n == 0 {
                    return out;
                }
                out.extend_from_slice(&buf[..n]);
            }
        })
    });
    assert_eq!(out.len(), stream.len(), "bytes added or lost");
    let marker = CONFLICT_MARKER.as_bytes();
    let te_seen = stream
        .windows(b"transfer-encoding".len())
        .any(|w| w.eq_ignore_ascii_case(b"transfer-encoding"));
    let mut i = 0;
    while i < out.len() {
        if out[i] == stream[i] {
            i += 1;
            continue;
        }
        assert!(te_seen, "changed at {i} with no Transfer-Encoding");
        let start = (i + 1).saturating_sub(marker.len());
        let at = (start..=i)
            .find(|&s| {
                out.get(s..s + marker.len()) == Some(marker)
                    && stream[s..s + marker.len()].eq_ignore_ascii_case(b"content-length")
            })
            .unwrap_or_else(|| panic!("byte {i} changed outside a renamed Content-Length"));
        i = at + marker.len();
    }
}

/// First byte picks the parser: port mappings, durations, booleans or a `config.yaml`; the
/// rest is its text. Nothing panics; a mapping's port is the asked one or one written in the
/// rules; a duration survives being written out and read again.
pub fn config(data: &[u8]) {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            let Ok(mappings) = PortMappings::parse(&text) else {
                return;
            };
            let y = rest
                .iter()
                .fold(443u16, |p, b| p.rotate_left(3) ^ *b as u16);
            for x in ["", "80", "443", "8080", "x", &y.to_string()] {
                let z = mappings.map(x, y);
                assert!(
                    z == y || text.contains(&z.to_string()),
                    "{x}:{y} mapped to {z}, which no rule names"
                );
            }
        }
        1 => {
            if let Ok(d) = parse_duration("TimeBudget", &text) {
                let written = humantime::format_duration(d).to_string();
                let back = parse_duration("TimeBudget", &written).expect("its own output parses");
                assert_eq!(back, d, "{text:?} → {written:?}");
            }
        }
        2 => {
            let _ = parse_bool("Enabled", &text);
        }
        _ => {
            let Ok(file) = ConfigFile::parse(&text) else {
                return;
            };
            let known: Vec<&'static str> = HTTP_PROPERTIES.iter().map(|(p, _)| *p).collect();
            for unknown in file.unknown_properties("http.ingress.core", &known) {
                if let Some(nearest) = unknown.nearest {
                    assert!(known.contains(&nearest.as_str()));
                }
            }
            let _ = file.get("http.ingress.core", "TimeBudget");
            let _ = file.get("a.b.c", "x");
        }
    }
}

/// A raw message. What parses reaches a sink unchanged: its event body decodes to the same
/// email.
pub fn email(data: &[u8]) {
    let Ok(mail) = Email::parse(data) else {
        return;
    };
    let body = mail.to_event_body();
    let back: OnIncomingEmailIn = serde_json::from_slice(&body).expect("the event body decodes");
    assert_eq!(back.mail_message, mail, "the sink would see another email");
}

/// An SMTP ingress on an in-process bus with one sink that counts what it receives.
struct SmtpHarness {
    ingress: SmtpIngress,
    delivered: Arc<AtomicUsize>,
    _sink: Connector,
    /// Kept here, in the static, rather than leaked: LeakSanitizer reports a leaked box.
    _runtime: tokio::runtime::Runtime,
}

fn smtp_harness() -> &'static SmtpHarness {
    static HARNESS: OnceLock<SmtpHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // The harness lives for the whole run, on a runtime of its own.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (ingress, delivered, sink) = runtime.block_on(async {
            let bus = BusConfig::in_process();
            let delivered = Arc::new(AtomicUsize::new(0));
            let counter = delivered.clone();
            let sink = Service::new("fuzz.sink")
                .sink(
                    email::SOURCE,
                    email::ON_INCOMING_EMAIL,
                    email::sink(move |_, _| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async { Ok(()) }
                    }),
                )
                .start(&bus)
                .await
                .expect("the sink starts");
            let config = SmtpConfig {
                port: 0,
                bind_ip: [127, 0, 0, 1].into(),
                max_size: Some(64 * 1024),
                ..SmtpConfig::default()
            };
            let ingress = SmtpIngress::start(config, &bus).await.expect("SMTP starts");
            (ingress, delivered, sink)
        });
        SmtpHarness {
            ingress,
            delivered,
            _sink: sink,
            _runtime: runtime,
        }
    })
}

/// A client's whole side of a session, sent at once, then EOF. The session ends; every reply
/// is a CRLF-ended `ddd ` or `ddd-` line, the first a 220; every message answered "delivered
/// to 1 sink" reached the sink, and no other did.
pub fn smtp_session(data: &[u8]) {
    let harness = smtp_harness();
    let before = harness.delivered.load(Ordering::SeqCst);
    let peer: SocketAddr = ([192, 0, 2, 1], 4242).into();
    let replies = RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(16 * 1024);
            let session = harness.ingress.serve_stream(server, peer);
            let talk = async {
                let (mut read, mut write) = tokio::io::split(&mut client);
                let send = async {
                    let _ = write.write_all(data).await;
                    let _ = write.shutdown().await;
                };
                let mut replies = Vec::new();
                let receive = read.read_to_end(&mut replies);
                let (_, received) = tokio::join!(send, receive);
                received.expect("replies are read");
                replies
            };
            let run = async { tokio::join!(session, talk).1 };
            tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("the session ended after the client's EOF")
        })
    });
    let text = String::from_utf8_lossy(&replies);
    assert!(text.starts_with("220 "), "greeting: {text:?}");
    assert!(text.ends_with("\r\n"), "last reply unended: {text:?}");
    for line in text.split_terminator("\r\n") {
        let b = line.as_bytes();
        assert!(
            b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && matches!(b[3], b' ' | b'-'),
            "malformed reply line {line:?}"
        );
        assert!(!line.contains('\n'), "bare LF in reply {line:?}");
    }
    let accepted = text.matches("250 2.0.0 OK: delivered to 1 sink(s)").count();
    let delivered = harness.delivered.load(Ordering::SeqCst) - before;
    assert_eq!(
        delivered, accepted,
        "sink deliveries differ from accepted mails; replies: {text:?}"
    );
}

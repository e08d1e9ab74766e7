//! The SMTP ingress end to end: a real nats-server, real SMTP clients (Python's smtplib in
//! `tests/fixtures/smtp_client.py`, and raw SMTP from a TCP socket), sinks of
//! `on-incoming-email` on the bus.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use busgate::ingress::smtp::email::{self, Email};
use busgate::ingress::smtp::{SmtpConfig, SmtpIngress};
use busgate::{Connector, Ctx, Error, Service};
use common::{NatsServer, TestBus};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The mails a sink service received, in order, with the instance that took each.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(String, Email)>>>);

impl Inbox {
    fn mails(&self) -> Vec<Email> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) -> Vec<Email> {
        for _ in 0..200 {
            if self.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.mails()
    }
}

/// A sink service `host` that keeps every mail in `inbox`.
async fn sink(bus: &TestBus, host: &str, inbox: &Inbox) -> Connector {
    let inbox = inbox.clone();
    Service::new(host)
        .sink(
            email::SOURCE,
            email::ON_INCOMING_EMAIL,
            email::sink(move |ctx: Ctx, mail: Email| {
                let inbox = inbox.clone();
                async move {
                    let id = ctx.connector().id().to_owned();
                    inbox.0.lock().unwrap().push((id, mail));
                    Ok(())
                }
            }),
        )
        .start(&bus.config)
        .await
        .unwrap()
}

fn smtp_config(tune: impl FnOnce(&mut SmtpConfig)) -> SmtpConfig {
    let mut c = SmtpConfig {
        port: 0,
        bind_ip: [127, 0, 0, 1].into(),
        ..SmtpConfig::default()
    };
    tune(&mut c);
    c
}

async fn start_smtp(bus: &TestBus, tune: impl FnOnce(&mut SmtpConfig)) -> SmtpIngress {
    SmtpIngress::start(smtp_config(tune), &bus.config)
        .await
        .unwrap()
}

/// Run the Python client with `spec` (its `port` filled in); its JSON results.
async fn python(port: u16, mut spec: Value) -> Value {
    spec["port"] = json!(port);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp_client.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed for the SMTP client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(spec.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the SMTP client finished")
        .unwrap();
    assert!(
        out.status.success(),
        "smtp client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn build(to: &[&str], build: Value) -> Value {
    json!({"from": "ann@client.test", "to": to, "build": build})
}

fn codes(results: &Value) -> Vec<Option<u64>> {
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["data"].as_u64())
        .collect()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A raw SMTP connection: write lines, read replies.
struct Raw {
    r: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw {
            r: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        };
        let (code, _) = raw.reply().await;
        assert_eq!(code, 220);
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    /// One (possibly multi-line) reply; code 0 when the server closed the connection.
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .expect("a reply in time")
                .unwrap_or(0);
            if n == 0 {
                return (0, text);
            }
            text.push_str(&line);
            if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// MAIL, RCPT, DATA and `message`; the reply to the end of DATA.
    async fn mail(&mut self, message: &[u8]) -> (u16, String) {
        assert_eq!(self.cmd("MAIL FROM:<ann@client.test>").await.0, 250);
        assert_eq!(self.cmd("RCPT TO:<bob@smtp.test>").await.0, 250);
        assert_eq!(self.cmd("DATA").await.0, 354);
        self.send(message).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

const SIMPLE: &[u8] = b"From: ann@client.test\r\nTo: bob@smtp.test\r\nSubject: raw\r\n\r\nbody\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_html_attachment_rfc2047_and_several_recipients_arrive_as_sent() {
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let smtp = start_smtp(&bus, |_| {}).await;
    let port = smtp.local_addr().port();
    let blob: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let png = b"\x89PNG\r\n\x1a\nnot really".to_vec();
    let spec = json!({"messages": [
        build(&["bob@smtp.test"], json!({"subject": "plain", "text": "Hello Bob.\n", "message_id": "<m1@client.test>"})),
        build(&["bob@smtp.test"], json!({"subject": "with attachment", "text": "see attached\n",
            "attachments": [{"filename": "blob.bin", "maintype": "application", "subtype": "octet-stream", "data_b64": b64(&blob)}]})),
        build(&["bob@smtp.test"], json!({"subject": "html", "text": "plain part\n", "html": "<p>Hi <b>Bob</b> <img src=\"cid:logo@x\"></p>\n",
            "inline": [{"cid": "logo@x", "maintype": "image", "subtype": "png", "data_b64": b64(&png)}]})),
        build(&["bob@smtp.test"], json!({"subject": "Grüße aus Köln ✉", "from_name": "Jürgen Müller", "text": "Schöne Grüße\n"})),
        build(&["bob@smtp.test", "cy@smtp.test", "dee@smtp.test"], json!({"subject": "many", "text": "to all\n",
            "to_names": ["Bob", "Cy"], "cc": ["Eve <eve@smtp.test>"], "headers": {"X-Campaign": "c-1"}})),
    ]});
    let results = python(port, spec).await;
    assert_eq!(codes(&results), vec![Some(250); 5], "{results}");
    let mails = inbox.wait_for(5).await;
    assert_eq!(mails.len(), 5, "each message exactly once");

    let plain = &mails[0];
    assert_eq!(plain.headers.subject, "plain");
    assert_eq!(plain.headers.from[0].address, "ann@client.test");
    assert_eq!(plain.headers.to[0].address, "bob@smtp.test");
    assert_eq!(plain.headers.message_id, "m1@client.test");
    assert_eq!(plain.headers.date, "2023-11-14T22:13:20Z");
    assert_eq!(plain.text.trim_end(), "Hello Bob.");
    assert!(plain.html.is_empty() && plain.attached_files.is_empty());
    assert_eq!(plain.headers.content_type.content_type, "text/plain");
    assert_eq!(plain.headers.content_type.params["charset"], "utf-8");

    let att = &mails[1];
    assert_eq!(att.text.trim_end(), "see attached");
    assert_eq!(att.attached_files.len(), 1);
    let f = &att.attached_files[0];
    assert_eq!(f.data, blob, "attachment bytes as sent");
    assert_eq!(f.content_type.content_type, "application/octet-stream");
    assert_eq!(f.content_disposition.content_disposition, "attachment");
    assert_eq!(f.content_disposition.params["filename"], "blob.bin");
    assert_eq!(att.headers.content_type.content_type, "multipart/mixed");

    let html = &mails[2];
    assert!(html.html.contains("<p>Hi <b>Bob</b>"), "{}", html.html);
    assert_eq!(html.text.trim_end(), "plain part");
    assert_eq!(html.inline_files.len(), 1, "{:?}", html.attached_files);
    assert_eq!(html.inline_files[0].content_id, "logo@x");
    assert_eq!(html.inline_files[0].data, png);
    assert_eq!(html.inline_files[0].content_type.content_type, "image/png");

    let intl = &mails[3];
    assert_eq!(intl.headers.subject, "Grüße aus Köln ✉");
    assert_eq!(intl.headers.from[0].name, "Jürgen Müller");
    assert_eq!(intl.text.trim_end(), "Schöne Grüße");

    let many = &mails[4];
    let to: Vec<(&str, &str)> = many
        .headers
        .to
        .iter()
        .map(|a| (a.name.as_str(), a.address.as_str()))
        .collect();
    assert_eq!(
        to,
        [
            ("Bob", "bob@smtp.test"),
            ("Cy", "cy@smtp.test"),
            ("", "dee@smtp.test")
        ]
    );
    assert_eq!(many.headers.cc[0].name, "Eve");
    assert_eq!(many.headers.extra_headers["X-Campaign"], ["c-1"]);

    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_body_has_the_go_letters_layout() {
    let bus = TestBus::nats();
    let raw: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = raw.clone();
    let s = Service::new("raw.test")
        .sink(
            email::SOURCE,
            email::ON_INCOMING_EMAIL,
            move |_ctx: Ctx, req: http::Request<bytes::Bytes>| {
                let keep = keep.clone();
                async move {
                    assert_eq!(req.uri().path(), "/on-incoming-email");
                    assert_eq!(req.uri().port_u16(), Some(417));
                    assert_eq!(req.headers()["content-type"], "application/json");
                    keep.lock()
                        .unwrap()
                        .push(serde_json::from_slice(req.body()).unwrap());
                    Ok::<_, Error>(http::Response::new(bytes::Bytes::from_static(b"{}")))
                }
            },
        )
        .start(&bus.config)
        .await
        .unwrap();
    let smtp = start_smtp(&bus, |_| {}).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    assert_eq!(c.cmd("HELO client.test").await.0, 250);
    let msg = b"From: Ann <ann@client.test>\r\nTo: bob@smtp.test\r\nSubject: layout\r\nIn-Reply-To: <p@x>\r\nReferences: <o@x> <p@x>\r\nKeywords: a, b\r\n\r\nhi\r\n";
    assert_eq!(c.mail(msg).await.0, 250);
    let v = raw.lock().unwrap()[0].clone();
    let m = &v["mailMessage"];
    let h = &m["Headers"];
    assert_eq!(
        h["From"],
        json!([{"Name": "Ann", "Address": "ann@client.test"}])
    );
    assert_eq!(h["Sender"], Value::Null);
    assert_eq!(h["Date"], "0001-01-01T00:00:00Z");
    assert_eq!(h["InReplyTo"], json!(["p@x"]));
    assert_eq!(h["References"], json!(["o@x", "p@x"]));
    assert_eq!(h["Keywords"], json!(["a", "b"]));
    assert_eq!(h["Subject"], "layout");
    assert!(h["ContentType"].get("ContentType").is_some());
    assert!(h["ContentDisposition"].get("ContentDisposition").is_some());
    assert_eq!(m["Text"], "hi\r\n");
    for k in ["EnrichedText", "HTML", "InlineFiles", "AttachedFiles"] {
        assert!(m.get(k).is_some(), "{k}");
    }
    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sink_defers_and_the_retry_after_a_sink_appears_delivers_once() {
    let bus = TestBus::nats();
    let smtp = start_smtp(&bus, |_| {}).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    assert_eq!(c.cmd("EHLO client.test").await.0, 250);
    let (code, text) = c.mail(SIMPLE).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("451 4.3.0"), "{text}");
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    // The sender retries on the same connection.
    let (code, text) = c.mail(SIMPLE).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").await.0, 221);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbox.len(), 1, "delivered once");
    let metrics = smtp_metrics(smtp.connector()).await;
    assert_eq!(
        metrics.get("busgate_smtp_messages_deferred_total{reason=\"no_sink\"}"),
        Some(&1.0)
    );
    assert_eq!(
        metrics.get("busgate_smtp_messages_accepted_total"),
        Some(&1.0)
    );
    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_sink_no_sink_is_accepted() {
    let bus = TestBus::nats();
    let smtp = start_smtp(&bus, |c| c.require_sink = false).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    assert_eq!(c.cmd("HELO client.test").await.0, 250);
    assert_eq!(c.mail(SIMPLE).await.0, 250);
    smtp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_defers_even_when_another_succeeds() {
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let good = sink(&bus, "mailbox.test", &inbox).await;
    let bad = Service::new("broken.test")
        .sink(
            email::SOURCE,
            email::ON_INCOMING_EMAIL,
            email::sink(|_ctx, _mail| async { Err(Error::internal("disk full")) }),
        )
        .start(&bus.config)
        .await
        .unwrap();
    let smtp = start_smtp(&bus, |_| {}).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    assert_eq!(c.cmd("HELO client.test").await.0, 250);
    let (code, text) = c.mail(SIMPLE).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("disk full"), "{text}");
    bad.shutdown().await;
    assert_eq!(c.mail(SIMPLE).await.0, 250);
    assert_eq!(inbox.len(), 2, "at least once: the retry is seen again");
    smtp.shutdown().await;
    good.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_dies_mid_mail_gives_451_never_250() {
    let bus = TestBus::nats();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let dying = Service::new("mailbox.test")
        .sink(
            email::SOURCE,
            email::ON_INCOMING_EMAIL,
            email::sink(move |ctx: Ctx, _mail| {
                let started = started_tx.clone();
                async move {
                    if let Some(tx) = started.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    // Never answers: it is killed while handling the mail.
                    ctx.cancelled().await;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .start(&bus.config)
        .await
        .unwrap();
    let smtp = start_smtp(&bus, |c| c.time_budget = Duration::from_secs(3)).await;
    let addr = smtp.local_addr();
    let client = tokio::spawn(async move {
        let mut c = Raw::connect(addr).await;
        assert_eq!(c.cmd("HELO client.test").await.0, 250);
        c.mail(SIMPLE).await
    });
    started_rx.await.unwrap();
    // Kill the sink's bus connection under it (no graceful drain: the handler never returns).
    dying.bus().close().await;
    let (code, text) = client.await.unwrap();
    assert_eq!(code, 451, "{text}");
    let metrics = smtp_metrics(smtp.connector()).await;
    assert_eq!(
        metrics.get("busgate_smtp_messages_deferred_total{reason=\"timeout\"}"),
        Some(&1.0)
    );
    assert_eq!(
        metrics.get("busgate_smtp_messages_accepted_total"),
        Some(&0.0)
    );
    smtp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_mails_from_twenty_clients_arrive_once_per_sink_service() {
    let bus = TestBus::nats();
    let mailbox = Inbox::default();
    let archive = Inbox::default();
    let replicas = [
        sink(&bus, "mailbox.test", &mailbox).await,
        sink(&bus, "mailbox.test", &mailbox).await,
        sink(&bus, "archive.test", &archive).await,
    ];
    let smtp = start_smtp(&bus, |_| {}).await;
    let results = python(
        smtp.local_addr().port(),
        json!({"load": {"threads": 20, "per_thread": 10, "tag": "load"}}),
    )
    .await;
    let codes = codes(&results);
    assert_eq!(codes.len(), 200, "{results}");
    assert!(codes.iter().all(|c| *c == Some(250)), "{results}");
    for (name, inbox) in [("mailbox", &mailbox), ("archive", &archive)] {
        let mails = inbox.wait_for(200).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &mails {
            *seen.entry(m.headers.subject.clone()).or_default() += 1;
        }
        assert_eq!(mails.len(), 200, "{name}");
        assert_eq!(seen.len(), 200, "{name}: every mail");
        assert!(seen.values().all(|n| *n == 1), "{name}: exactly once");
    }
    let by_instance: std::collections::HashSet<String> = mailbox
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert!(by_instance.len() <= 2);
    smtp.shutdown().await;
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_mail_is_552_and_the_connection_stays_usable() {
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let smtp = start_smtp(&bus, |c| c.max_size = Some(1 << 20)).await;
    let big = "x".repeat(76) + "\n";
    let big = big.repeat((2 << 20) / 77);
    let spec = json!({"messages": [
        build(&["bob@smtp.test"], json!({"subject": "too big", "text": big})),
        build(&["bob@smtp.test"], json!({"subject": "next", "text": "small\n"})),
        build(&["bob@smtp.test"], json!({"subject": "declared", "text": big})).as_object().cloned().map(|mut m| { m.insert("declare_size".into(), json!(true)); Value::Object(m) }).unwrap(),
        build(&["bob@smtp.test"], json!({"subject": "after", "text": "small\n"})),
    ]});
    let results = python(smtp.local_addr().port(), spec).await;
    let r = results.as_array().unwrap();
    assert_eq!(r[0]["data"], 552, "{results}");
    assert_eq!(r[1]["data"], 250, "{results}");
    assert_eq!(
        r[2]["mail"], 552,
        "declared SIZE is refused at MAIL: {results}"
    );
    assert_eq!(r[3]["data"], 250, "{results}");
    let subjects: Vec<String> = inbox
        .wait_for(2)
        .await
        .iter()
        .map(|m| m.headers.subject.clone())
        .collect();
    assert_eq!(subjects, ["next", "after"]);
    let metrics = smtp_metrics(smtp.connector()).await;
    assert_eq!(
        metrics.get("busgate_smtp_messages_rejected_total{reason=\"too_large\"}"),
        Some(&2.0)
    );
    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_max_clients_gets_421() {
    let bus = TestBus::nats();
    let smtp = start_smtp(&bus, |c| c.max_clients = 2).await;
    let addr = smtp.local_addr();
    let a = Raw::connect(addr).await;
    let mut b = Raw::connect(addr).await;
    let mut extra = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut line = String::new();
    extra.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("421 4.7.0"), "{line}");
    let mut rest = Vec::new();
    let n = extra.read_to_end(&mut rest).await.unwrap();
    assert_eq!(n, 0, "closed after the 421");
    // The two admitted ones still work, and a freed slot admits a new client.
    assert_eq!(b.cmd("NOOP").await.0, 250);
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = Raw::connect(addr).await;
    assert_eq!(c.cmd("HELO client.test").await.0, 250);
    let metrics = smtp_metrics(smtp.connector()).await;
    assert_eq!(
        metrics.get("busgate_smtp_errors_total{reason=\"too_many_clients\"}"),
        Some(&1.0)
    );
    smtp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let smtp = start_smtp(&bus, |_| {}).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    c.send(b"EHLO client.test\r\nMAIL FROM:<ann@client.test> BODY=8BITMIME\r\nRCPT TO:<bob@smtp.test>\r\nRCPT TO:<cy@smtp.test> NOTIFY=NEVER\r\nDATA\r\n").await;
    let (code, ehlo) = c.reply().await;
    assert_eq!(code, 250);
    assert!(ehlo.contains("250-PIPELINING"), "{ehlo}");
    assert!(ehlo.contains("SIZE 10485760"), "{ehlo}");
    for _ in 0..3 {
        assert_eq!(c.reply().await.0, 250);
    }
    assert_eq!(c.reply().await.0, 354);
    c.send(b"Subject: piped\r\n\r\n..dot-stuffed\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@smtp.test>\r\nDATA\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 250, "the null reverse path");
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 354);
    c.send(b"Subject: second\r\n\r\nx\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 221);
    let mails = inbox.wait_for(2).await;
    assert_eq!(mails[0].headers.subject, "piped");
    assert_eq!(mails[0].text, ".dot-stuffed\r\n");
    assert_eq!(mails[1].headers.subject, "second");
    smtp.shutdown().await;
    s.shutdown().await;
}

/// Found by `scripts/fuzz smtp_session`: a client that pipelines a whole mail, then a partial
/// line, then closes its side, still hears that the mail was delivered (else it retries it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_buffered_when_the_client_half_closes_still_go_out() {
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let smtp = start_smtp(&bus, |_| {}).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    c.send(b"HELO client.test\r\nMAIL FROM:<ann@client.test>\r\nRCPT TO:<bob@smtp.test>\r\nDATA\r\nSubject: last\r\n\r\nx\r\n.\r\nNOOP\r\nQUI").await;
    c.r.get_mut().shutdown().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(c.reply().await.0);
    }
    assert_eq!(
        got,
        [250, 250, 250, 354, 250, 250],
        "every answer, then EOF"
    );
    assert_eq!(c.reply().await.0, 0, "then the server closes");
    let mails = inbox.wait_for(1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].headers.subject, "last");
    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_clear_codes_and_no_partial_event() {
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let smtp = start_smtp(&bus, |_| {}).await;
    let addr = smtp.local_addr();

    // Garbage and out-of-sequence commands.
    let mut c = Raw::connect(addr).await;
    assert_eq!(c.cmd("HELLO there").await.0, 500);
    c.send(b"\x00\xff\xfe garbage\r\n").await;
    assert_eq!(c.reply().await.0, 500);
    assert_eq!(
        c.cmd("MAIL FROM:<ann@client.test>").await.0,
        503,
        "before HELO"
    );
    assert_eq!(c.cmd("DATA").await.0, 503);
    assert_eq!(c.cmd("EHLO client.test").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@smtp.test>").await.0, 503, "before MAIL");
    assert_eq!(c.cmd(&"NOOP".repeat(2000)).await.0, 500, "line too long");
    assert_eq!(c.mail(SIMPLE).await.0, 250, "still usable");

    // Bare LF: a command, then a whole message.
    let (code, text) = {
        c.send(b"NOOP\n").await;
        c.reply().await
    };
    assert_eq!(code, 500, "{text}");
    assert_eq!(c.cmd("MAIL FROM:<ann@client.test>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@smtp.test>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    // Bare LF lines are line endings, but ".<LF>" does not end DATA (no smuggling).
    c.send(b"Subject: bare\n\nsmuggled?\n.\nMAIL FROM:<evil@x>\n\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(
        c.mail(SIMPLE).await.0,
        250,
        "usable after a bare-LF message"
    );

    // Unparseable: no header at all.
    let (code, text) = c.mail(b"no header here, just words\r\n").await;
    assert_eq!(code, 554, "{text}");

    // A 10 MB header line (over the default 10 MB MaxSize): 552, the connection survives.
    assert_eq!(c.cmd("MAIL FROM:<ann@client.test>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@smtp.test>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let mut huge = b"X-Huge: ".to_vec();
    huge.resize(10 << 20, b'h');
    huge.extend_from_slice(b"\r\nSubject: huge\r\n\r\nbody\r\n.\r\n");
    c.send(&huge).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 552, "{text}");
    assert_eq!(c.cmd("QUIT").await.0, 221);

    // A client that disconnects in the middle of DATA.
    let mut d = Raw::connect(addr).await;
    assert_eq!(d.cmd("HELO client.test").await.0, 250);
    assert_eq!(d.cmd("MAIL FROM:<ann@client.test>").await.0, 250);
    assert_eq!(d.cmd("RCPT TO:<bob@smtp.test>").await.0, 250);
    assert_eq!(d.cmd("DATA").await.0, 354);
    d.send(b"Subject: cut\r\n\r\nhalf a mess").await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Only the complete, valid messages reached the sink.
    let subjects: Vec<String> = inbox
        .mails()
        .iter()
        .map(|m| m.headers.subject.clone())
        .collect();
    assert_eq!(subjects, ["raw", "bare", "raw"]);
    let bare = &inbox.mails()[1];
    assert_eq!(bare.text, "smuggled?\r\n.\r\nMAIL FROM:<evil@x>\r\n\r\n");
    let mut e = Raw::connect(addr).await;
    assert_eq!(
        e.cmd("HELO client.test").await.0,
        250,
        "the server lives on"
    );
    let metrics = smtp_metrics(smtp.connector()).await;
    for (series, n) in [
        ("busgate_smtp_errors_total{reason=\"syntax\"}", 2.0),
        ("busgate_smtp_errors_total{reason=\"bad_sequence\"}", 3.0),
        ("busgate_smtp_errors_total{reason=\"line_too_long\"}", 1.0),
        ("busgate_smtp_errors_total{reason=\"bare_lf\"}", 1.0),
        (
            "busgate_smtp_errors_total{reason=\"disconnected_in_data\"}",
            1.0,
        ),
        (
            "busgate_smtp_messages_rejected_total{reason=\"unparseable\"}",
            1.0,
        ),
        (
            "busgate_smtp_messages_rejected_total{reason=\"too_large\"}",
            1.0,
        ),
        ("busgate_smtp_messages_accepted_total", 3.0),
    ] {
        assert_eq!(metrics.get(series), Some(&n), "{series}");
    }
    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_with_421() {
    let bus = TestBus::nats();
    let smtp = start_smtp(&bus, |c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut c = Raw::connect(smtp.local_addr()).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert_eq!(c.reply().await.0, 0, "closed");
    smtp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_when_the_certificate_files_exist() {
    let dir = common::TempDir::new("smtp-tls");
    common::make_certs(&dir.0);
    let port = common::free_port();
    std::fs::copy(
        dir.0.join("server-cert.pem"),
        dir.0.join(format!("smtpingress-{port}-cert.pem")),
    )
    .unwrap();
    std::fs::copy(
        dir.0.join("server-key.pem"),
        dir.0.join(format!("smtpingress-{port}-key.pem")),
    )
    .unwrap();
    let bus = TestBus::nats();
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let cert_dir = dir.0.clone();
    let smtp = start_smtp(&bus, move |c| {
        c.port = port;
        c.cert_dir = cert_dir;
    })
    .await;
    let ca = dir.0.join("ca.pem");
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
s.ehlo("client.test")
assert s.has_extn("starttls")
s.starttls(context=ctx)
s.ehlo("client.test")
assert not s.has_extn("starttls")
s.sendmail("ann@client.test", ["bob@smtp.test"], b"Subject: secret\r\n\r\nover TLS\r\n")
s.quit()
"#,
        ca = ca.display().to_string()
    );
    common::python(&script).await;
    let mails = inbox.wait_for(1).await;
    assert_eq!(mails[0].headers.subject, "secret");
    smtp.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_fails_start_before_joining_the_bus() {
    let nats = NatsServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = SmtpIngress::start(smtp_config(|c| c.port = port), &nats.config())
        .await
        .err()
        .expect("the port is taken");
    assert!(
        err.to_string().contains(&format!("SMTP port {port}")),
        "{err}"
    );
}

/// The SMTP series of the ingress, by `name{reason="..."}` (the identity labels dropped).
async fn smtp_metrics(conn: &Connector) -> HashMap<String, f64> {
    let text = busgate::telemetry::metrics::gather(&[conn.metrics().clone()]);
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("busgate_smtp_") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let reason: Vec<&str> = labels
            .split(',')
            .filter(|l| l.starts_with("reason="))
            .collect();
        let key = if reason.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{}}}", reason[0])
        };
        out.insert(key, value.parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_runs_from_the_smtp_session_through_the_event_to_the_sink() {
    use busgate::telemetry::TelemetryConfig;
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    const STATUS_ERROR: i32 = 2;
    let (endpoint, spans) = common::otlp::http_receiver().await;
    let nats = NatsServer::start();
    let mut config = nats.config();
    config.telemetry = TelemetryConfig {
        endpoint: Some(endpoint),
        protocol: busgate::telemetry::OtlpProtocol::HttpProtobuf,
        ..TelemetryConfig::default()
    };
    let bus = TestBus {
        config,
        server: Some(nats),
    };
    let smtp = start_smtp(&bus, |_| {}).await;
    let port = smtp.local_addr().port();
    let mut c = Raw::connect(smtp.local_addr()).await;
    assert_eq!(c.cmd("HELO client.test").await.0, 250);
    let (code, deferred) = c.mail(SIMPLE).await;
    assert_eq!(code, 451);
    let inbox = Inbox::default();
    let s = sink(&bus, "mailbox.test", &inbox).await;
    let (code, accepted) = c.mail(SIMPLE).await;
    assert_eq!(code, 250);
    let trace_of = |reply: &str| {
        reply
            .split("trace ")
            .nth(1)
            .unwrap()
            .trim_end_matches([')', '\r', '\n'])
            .to_owned()
    };
    let (ok_trace, failed_trace) = (trace_of(&accepted), trace_of(&deferred));
    smtp.shutdown().await;
    s.shutdown().await;

    let all = spans.of_trace(&ok_trace);
    let find = |service: &str, kind: i32, name: &str| {
        all.iter()
            .find(|s| s.service == service && s.kind == kind && s.name == name)
            .unwrap_or_else(|| panic!("{service} {kind} {name} in {all:#?}"))
            .clone()
    };
    let root = find("smtp.ingress.core", SERVER, &format!(":{port}"));
    let event = find(
        "smtp.ingress.core",
        CLIENT,
        "POST smtp.ingress.core:417/on-incoming-email",
    );
    let handler = find("mailbox.test", SERVER, ":417/on-incoming-email");
    assert_eq!(root.parent_span_id, "", "the SMTP message is a root");
    assert_eq!(event.parent_span_id, root.span_id);
    assert_eq!(handler.parent_span_id, event.span_id);
    assert_eq!(root.attributes["email.subject"], "raw");
    assert_eq!(root.attributes["client.address"], "127.0.0.1");
    assert_eq!(root.attributes["server.port"], port.to_string());

    let failed = spans.of_trace(&failed_trace);
    let root = failed
        .iter()
        .find(|s| s.name == format!(":{port}"))
        .unwrap();
    assert_eq!(root.status, STATUS_ERROR, "a deferred mail marks its trace");
}

/// `busgate` with `args` on the in-process bus, its log in a file; killed on drop.
fn run_busgate(args: &[&str], log: &std::path::Path) -> common::ChildGuard {
    common::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_busgate"))
            .args(args)
            .env_remove("MICROBUS_NATS")
            .env_remove("BUSGATE_ADMIN_ADDR")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("the busgate binary runs"),
    )
}

fn read_logs(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
        + &std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_in_one_receives_mail_into_eventsink_and_goes_on_without_smtp_when_the_port_is_taken(
) {
    let dir = common::TempDir::new("smtp-cli");
    // A free SMTP port: the all-in-one takes mail, eventsink.example sinks it.
    let (http, smtp) = (common::free_port(), common::free_port());
    let log = dir.0.join("a.log");
    let child = run_busgate(
        &[
            "--ports",
            &http.to_string(),
            "--smtp-port",
            &smtp.to_string(),
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &log,
    );
    wait_listening(smtp).await;
    wait_listening(http).await;
    let mut c = Raw::connect(([127, 0, 0, 1], smtp).into()).await;
    assert_eq!(c.cmd("HELO client.test").await.0, 250);
    let (code, text) = c.mail(SIMPLE).await;
    assert_eq!(code, 250, "{text}");
    let res = common::http::get(([127, 0, 0, 1], http).into(), "/eventsink.example/inbox").await;
    assert!(res.text().contains("\"subject\":\"raw\""), "{}", res.text());
    drop(child);

    // The SMTP port taken: an error line that says how to set Port, and HTTP still serves.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let http = common::free_port();
    let log = dir.0.join("b.log");
    let _child = run_busgate(
        &[
            "--ports",
            &http.to_string(),
            "--smtp-port",
            &port,
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &log,
    );
    wait_listening(http).await;
    let res = common::http::get(([127, 0, 0, 1], http).into(), "/hello.example/hello").await;
    assert_eq!(res.status, 200);
    let logs = read_logs(&log);
    assert!(logs.contains("SMTP ingress not started"), "{logs}");
    assert!(
        logs.contains(&format!("cannot listen on SMTP port {port}")),
        "{logs}"
    );

    // `busgate smtp` exists to take mail: there the same is fatal.
    let log = dir.0.join("c.log");
    let mut only = run_busgate(
        &["smtp", "--smtp-port", &port, "--admin-addr", "127.0.0.1:0"],
        &log,
    );
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = only.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("busgate smtp exits");
    assert!(!status.success());
    assert!(
        read_logs(&log).contains("cannot start the SMTP ingress"),
        "{}",
        read_logs(&log)
    );
}

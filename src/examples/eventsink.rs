//! `eventsink.example`: sinks the events of `eventsource.example` and of the SMTP ingress.
//!
//! - `on-allow-register`: vetoes addresses at `gmail.com` and `hotmail.com`.
//! - `on-registered`: keeps the address; `GET /eventsink.example/registered` lists them.
//! - `on-incoming-email` (from `smtp.ingress.core`): keeps the last [`INBOX_SIZE`] mails;
//!   `GET /eventsink.example/inbox` shows them, newest first.
//!
//! State is per instance (in memory): replicas share the events between them, not their lists.
//!
//! Run it: `cargo run --release` (the ingress on :8080 and the examples, on the in-process
//! bus; `MICROBUS_NATS=nats://127.0.0.1:4222` for NATS), then try:
//!
//! ```text
//! curl 'localhost:8080/eventsource.example/register?email=ann@example.com'
//! curl 'localhost:8080/eventsink.example/registered'      ["ann@example.com"]
//! swaks --server localhost:25 --to me@example.com          (or any SMTP client; --smtp-port 2525)
//! curl 'localhost:8080/eventsink.example/inbox'           the mail, newest first
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use serde::Serialize;

use super::eventsource::{
    self, OnAllowRegisterIn, OnAllowRegisterOut, OnRegisteredIn, OnRegisteredOut,
};
use crate::connector::{json, Ctx, Service};
use crate::error::Error;
use crate::ingress::smtp::email::{self, Email};

pub const HOSTNAME: &str = "eventsink.example";
/// Mails kept for `/inbox`.
pub const INBOX_SIZE: usize = 20;
/// Domains whose registrations are vetoed.
pub const VETOED_DOMAINS: [&str; 2] = ["gmail.com", "hotmail.com"];

/// A mail as `/inbox` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxEntry {
    pub message_id: String,
    pub date: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// `filename (N bytes)` of each attached and inline file.
    pub files: Vec<String>,
}

impl InboxEntry {
    fn of(mail: &Email) -> InboxEntry {
        let addr = |a: &email::Address| {
            if a.name.is_empty() {
                a.address.clone()
            } else {
                format!("{} <{}>", a.name, a.address)
            }
        };
        let name = |cd: &email::ContentDispositionHeader, ct: &email::ContentTypeHeader| {
            cd.params
                .get("filename")
                .or_else(|| ct.params.get("name"))
                .cloned()
                .unwrap_or_else(|| ct.content_type.clone())
        };
        let mut files: Vec<String> = mail
            .attached_files
            .iter()
            .map(|f| {
                format!(
                    "{} ({} bytes)",
                    name(&f.content_disposition, &f.content_type),
                    f.data.len()
                )
            })
            .collect();
        files.extend(mail.inline_files.iter().map(|f| {
            format!(
                "{} ({} bytes, inline cid:{})",
                name(&f.content_disposition, &f.content_type),
                f.data.len(),
                f.content_id
            )
        }));
        InboxEntry {
            message_id: mail.headers.message_id.clone(),
            date: mail.headers.date.clone(),
            from: mail.headers.from.iter().map(addr).collect(),
            to: mail.headers.to.iter().map(addr).collect(),
            subject: mail.headers.subject.clone(),
            text: mail.text.clone(),
            html: mail.html.clone(),
            files,
        }
    }
}

#[derive(Default)]
struct State {
    registered: Vec<String>,
    inbox: VecDeque<InboxEntry>,
}

pub fn service() -> Service {
    let state: Arc<Mutex<State>> = Arc::default();
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state);
    Service::new(HOSTNAME)
        .version(1)
        .sink(
            eventsource::HOSTNAME,
            eventsource::ON_ALLOW_REGISTER,
            json(on_allow_register),
        )
        .sink(
            eventsource::HOSTNAME,
            eventsource::ON_REGISTERED,
            json(move |_ctx: Ctx, i: OnRegisteredIn| {
                let state = s1.clone();
                async move {
                    state.lock().expect("state lock").registered.push(i.email);
                    Ok::<_, Error>(OnRegisteredOut {})
                }
            }),
        )
        .sink(
            email::SOURCE,
            email::ON_INCOMING_EMAIL,
            email::sink(move |_ctx: Ctx, mail: Email| {
                let state = s2.clone();
                async move {
                    let mut s = state.lock().expect("state lock");
                    s.inbox.push_front(InboxEntry::of(&mail));
                    s.inbox.truncate(INBOX_SIZE);
                    Ok(())
                }
            }),
        )
        .get("/registered", move |_ctx: Ctx, _req: Request<Bytes>| {
            let state = s3.clone();
            async move {
                let list = state.lock().expect("state lock").registered.clone();
                json_response(&list)
            }
        })
        .get("/inbox", move |_ctx: Ctx, _req: Request<Bytes>| {
            let state = s4.clone();
            async move {
                let inbox: Vec<InboxEntry> = state
                    .lock()
                    .expect("state lock")
                    .inbox
                    .iter()
                    .cloned()
                    .collect();
                json_response(&inbox)
            }
        })
}

async fn on_allow_register(_ctx: Ctx, i: OnAllowRegisterIn) -> Result<OnAllowRegisterOut, Error> {
    let domain = i.email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let allow = !VETOED_DOMAINS
        .iter()
        .any(|v| domain.eq_ignore_ascii_case(v));
    Ok(OnAllowRegisterOut { allow })
}

fn json_response<T: Serialize>(value: &T) -> Result<Response<Bytes>, Error> {
    let body = serde_json::to_vec(value).map_err(|e| Error::internal(e.to_string()))?;
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .map_err(|e| Error::internal(e.to_string()))
}

//! The payload of `on-incoming-email`: Go's `letters.Email` with its default JSON field names
//! (reference §5), as serde types that sources build and sinks deserialize.
//!
//! ```no_run
//! use busgate::ingress::smtp::email::{self, Email};
//! use busgate::{Ctx, Error, Service};
//!
//! async fn keep(_ctx: Ctx, mail: Email) -> Result<(), Error> {
//!     println!("{}: {}", mail.headers.from.first().map(|a| a.address.as_str()).unwrap_or(""), mail.headers.subject);
//!     Ok(())
//! }
//! let service = Service::new("mailbox.example").sink(
//!     email::SOURCE,
//!     email::ON_INCOMING_EMAIL,
//!     email::sink(keep),
//! );
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Deserializer, Serialize};

use crate::connector::{Ctx, Handler};
use crate::error::Error;

/// The source of the event: sinks subscribe to this host.
pub const SOURCE: &str = super::config::HOSTNAME;
/// The event's path on port 417.
pub const ON_INCOMING_EMAIL: &str = "on-incoming-email";
/// Go's zero `time.Time`, what a missing date is in JSON.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `null` (Go's nil slice or map) reads as empty.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `[]byte` as Go's `encoding/json` writes it: standard base64 with padding.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The event's body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OnIncomingEmailIn {
    #[serde(rename = "mailMessage")]
    pub mail_message: Email,
}

/// Go's `net/mail.Address`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    #[serde(rename = "Name", default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "Address", default, deserialize_with = "nullable")]
    pub address: String,
}

/// `letters.ContentTypeHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentTypeHeader {
    #[serde(rename = "ContentType", default, deserialize_with = "nullable")]
    pub content_type: String,
    #[serde(rename = "Params", default, deserialize_with = "nullable")]
    pub params: BTreeMap<String, String>,
}

/// `letters.ContentDispositionHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentDispositionHeader {
    #[serde(rename = "ContentDisposition", default, deserialize_with = "nullable")]
    pub content_disposition: String,
    #[serde(rename = "Params", default, deserialize_with = "nullable")]
    pub params: BTreeMap<String, String>,
}

/// `letters.Headers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Headers {
    /// RFC 3339; [`ZERO_TIME`] when the message has no (valid) date.
    #[serde(default = "zero_time", deserialize_with = "nullable")]
    pub date: String,
    #[serde(default)]
    pub sender: Option<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub from: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub reply_to: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub to: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub cc: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub bcc: Vec<Address>,
    #[serde(rename = "MessageID", default, deserialize_with = "nullable")]
    pub message_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub in_reply_to: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub references: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub subject: String,
    #[serde(default, deserialize_with = "nullable")]
    pub comments: String,
    #[serde(default, deserialize_with = "nullable")]
    pub keywords: Vec<String>,
    #[serde(default = "zero_time", deserialize_with = "nullable")]
    pub resent_date: String,
    #[serde(default, deserialize_with = "nullable")]
    pub resent_from: Vec<Address>,
    #[serde(default)]
    pub resent_sender: Option<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub resent_to: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub resent_cc: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub resent_bcc: Vec<Address>,
    #[serde(rename = "ResentMessageID", default, deserialize_with = "nullable")]
    pub resent_message_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub content_type: ContentTypeHeader,
    #[serde(default, deserialize_with = "nullable")]
    pub content_disposition: ContentDispositionHeader,
    /// Every other header by its canonical name (`X-Foo`), values in order.
    #[serde(default, deserialize_with = "nullable")]
    pub extra_headers: BTreeMap<String, Vec<String>>,
}

fn zero_time() -> String {
    ZERO_TIME.to_owned()
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            date: zero_time(),
            resent_date: zero_time(),
            sender: None,
            from: Vec::new(),
            reply_to: Vec::new(),
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            message_id: String::new(),
            in_reply_to: Vec::new(),
            references: Vec::new(),
            subject: String::new(),
            comments: String::new(),
            keywords: Vec::new(),
            resent_from: Vec::new(),
            resent_sender: None,
            resent_to: Vec::new(),
            resent_cc: Vec::new(),
            resent_bcc: Vec::new(),
            resent_message_id: String::new(),
            content_type: ContentTypeHeader::default(),
            content_disposition: ContentDispositionHeader::default(),
            extra_headers: BTreeMap::new(),
        }
    }
}

/// `letters.InlineFile`: a part shown within the message (e.g. an image an HTML body cites by
/// `cid:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InlineFile {
    #[serde(rename = "ContentID", default, deserialize_with = "nullable")]
    pub content_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub content_type: ContentTypeHeader,
    #[serde(default, deserialize_with = "nullable")]
    pub content_disposition: ContentDispositionHeader,
    #[serde(with = "base64_bytes", default)]
    pub data: Vec<u8>,
}

/// `letters.AttachedFile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedFile {
    #[serde(default, deserialize_with = "nullable")]
    pub content_type: ContentTypeHeader,
    #[serde(default, deserialize_with = "nullable")]
    pub content_disposition: ContentDispositionHeader,
    #[serde(with = "base64_bytes", default)]
    pub data: Vec<u8>,
}

/// `letters.Email`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Email {
    #[serde(default)]
    pub headers: Headers,
    #[serde(default, deserialize_with = "nullable")]
    pub text: String,
    #[serde(default, deserialize_with = "nullable")]
    pub enriched_text: String,
    #[serde(rename = "HTML", default, deserialize_with = "nullable")]
    pub html: String,
    #[serde(default, deserialize_with = "nullable")]
    pub inline_files: Vec<InlineFile>,
    #[serde(default, deserialize_with = "nullable")]
    pub attached_files: Vec<AttachedFile>,
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("no RFC 5322 header fields")]
    NoHeaders,
}

/// Go's `textproto.CanonicalMIMEHeaderKey` (`x-foo-bar` is `X-Foo-Bar`), as in frame headers.
pub use crate::wire::frame::canonical_header_name;

fn addresses(v: Option<&mail_parser::Address<'_>>) -> Vec<Address> {
    v.map(|a| {
        a.iter()
            .map(|a| Address {
                name: a.name().unwrap_or("").to_owned(),
                address: a.address().unwrap_or("").to_owned(),
            })
            .collect()
    })
    .unwrap_or_default()
}

fn first_address(v: Option<&mail_parser::Address<'_>>) -> Option<Address> {
    addresses(v).into_iter().next()
}

fn texts(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn date(v: Option<&mail_parser::DateTime>) -> String {
    match v {
        Some(d) if d.is_valid() => d.to_rfc3339(),
        _ => zero_time(),
    }
}

fn params(ct: Option<&mail_parser::ContentType<'_>>) -> BTreeMap<String, String> {
    ct.and_then(|c| c.attributes())
        .map(|attrs| {
            attrs
                .iter()
                .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn content_type(ct: Option<&mail_parser::ContentType<'_>>) -> ContentTypeHeader {
    ContentTypeHeader {
        content_type: ct
            .map(|c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub).to_ascii_lowercase(),
                None => c.ctype().to_ascii_lowercase(),
            })
            .unwrap_or_default(),
        params: params(ct),
    }
}

fn content_disposition(cd: Option<&mail_parser::ContentType<'_>>) -> ContentDispositionHeader {
    ContentDispositionHeader {
        content_disposition: cd
            .map(|c| c.ctype().to_ascii_lowercase())
            .unwrap_or_default(),
        params: params(cd),
    }
}

/// Whether a header field has its own place in [`Headers`].
fn is_known(name: &HeaderName<'_>) -> bool {
    matches!(
        name,
        HeaderName::Date
            | HeaderName::Sender
            | HeaderName::From
            | HeaderName::ReplyTo
            | HeaderName::To
            | HeaderName::Cc
            | HeaderName::Bcc
            | HeaderName::MessageId
            | HeaderName::InReplyTo
            | HeaderName::References
            | HeaderName::Subject
            | HeaderName::Comments
            | HeaderName::Keywords
            | HeaderName::ResentDate
            | HeaderName::ResentFrom
            | HeaderName::ResentSender
            | HeaderName::ResentTo
            | HeaderName::ResentCc
            | HeaderName::ResentBcc
            | HeaderName::ResentMessageId
            | HeaderName::ContentType
            | HeaderName::ContentDisposition
    )
}

/// Unfold a raw header value: CRLF + whitespace is one space.
fn unfold(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for (i, line) in raw.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
    }
    out.trim().to_owned()
}

impl Email {
    /// Parse an RFC 5322 message (as received after DATA, dot-unstuffed).
    pub fn parse(raw: &[u8]) -> Result<Email, ParseError> {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ParseError::Empty);
        }
        let msg = MessageParser::default()
            .parse(raw)
            .ok_or(ParseError::NoHeaders)?;
        let root = msg.root_part();
        if root.headers.is_empty() {
            return Err(ParseError::NoHeaders);
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in &root.headers {
            if is_known(&h.name) {
                continue;
            }
            let value = match &h.value {
                HeaderValue::Text(t) => t.to_string(),
                HeaderValue::TextList(l) => l.join(", "),
                _ => {
                    let (s, e) = (h.offset_start as usize, h.offset_end as usize);
                    let raw = msg.raw_message.get(s..e).unwrap_or_default();
                    unfold(&String::from_utf8_lossy(raw))
                }
            };
            extra
                .entry(canonical_header_name(h.name.as_str()))
                .or_default()
                .push(value);
        }
        let headers = Headers {
            date: date(msg.date()),
            sender: first_address(msg.sender()),
            from: addresses(msg.from()),
            reply_to: addresses(msg.reply_to()),
            to: addresses(msg.to()),
            cc: addresses(msg.cc()),
            bcc: addresses(msg.bcc()),
            message_id: msg.message_id().unwrap_or("").to_owned(),
            in_reply_to: texts(msg.in_reply_to()),
            references: texts(msg.references()),
            subject: msg.subject().unwrap_or("").to_owned(),
            comments: texts(msg.comments()).join(", "),
            keywords: texts(msg.keywords())
                .iter()
                .flat_map(|k| k.split(','))
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect(),
            resent_date: date(msg.resent_date().as_datetime()),
            resent_from: addresses(msg.resent_from()),
            resent_sender: first_address(msg.resent_sender()),
            resent_to: addresses(msg.resent_to()),
            resent_cc: addresses(msg.resent_cc()),
            resent_bcc: addresses(msg.resent_bcc()),
            resent_message_id: texts(msg.resent_message_id())
                .into_iter()
                .next()
                .unwrap_or_default(),
            content_type: content_type(msg.content_type()),
            content_disposition: content_disposition(msg.content_disposition()),
            extra_headers: extra,
        };
        let mut email = Email {
            headers,
            ..Email::default()
        };
        for part in &msg.parts {
            let ct = part.content_type();
            let cd = part.content_disposition();
            let attached = cd.is_some_and(|d| d.is_attachment());
            let subtype = ct
                .and_then(|c| c.subtype())
                .unwrap_or("")
                .to_ascii_lowercase();
            match &part.body {
                PartType::Multipart(_) => {}
                PartType::Text(t) if !attached => {
                    let body = if subtype == "enriched" {
                        &mut email.enriched_text
                    } else {
                        &mut email.text
                    };
                    body.push_str(t);
                }
                PartType::Html(t) if !attached => email.html.push_str(t),
                _ => {
                    let data = part.contents().to_vec();
                    let content_type = content_type(ct);
                    let content_disposition = content_disposition(cd);
                    match part.content_id() {
                        Some(id) if !attached => email.inline_files.push(InlineFile {
                            content_id: id.trim_matches(['<', '>']).to_owned(),
                            content_type,
                            content_disposition,
                            data,
                        }),
                        _ => email.attached_files.push(AttachedFile {
                            content_type,
                            content_disposition,
                            data,
                        }),
                    }
                }
            }
        }
        Ok(email)
    }

    /// The event body: `{"mailMessage": ...}`.
    pub fn to_event_body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "mailMessage")]
            mail_message: &'a Email,
        }
        Bytes::from(
            serde_json::to_vec(&Body { mail_message: self }).expect("an email always encodes"),
        )
    }
}

/// Decode standard base64 (what [`InlineFile::data`] and [`AttachedFile::data`] travel as).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .ok()
}

/// A sink handler for `on-incoming-email`: the body decoded into an [`Email`], `{}` answered when
/// `f` succeeds. An error from `f` is the sink's error (the SMTP ingress then defers the mail).
pub fn sink<F, Fut>(f: F) -> impl Handler
where
    F: Fn(Ctx, Email) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let f = Arc::new(f);
    move |ctx: Ctx, req: Request<Bytes>| {
        let f = f.clone();
        async move {
            let input: OnIncomingEmailIn = serde_json::from_slice(req.body()).map_err(|e| {
                Error::bad_request(format!("invalid on-incoming-email body: {e}")).caused_by(e)
            })?;
            f(ctx, input.mail_message).await?;
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Bytes::from_static(b"{}"))
                .map_err(|e| Error::internal(e.to_string()).caused_by(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_message_in_go_field_names() {
        let raw = b"From: \"Ann\" <ann@a.example>\r\nTo: bob@b.example, Cy <cy@c.example>\r\nSubject: =?UTF-8?B?SMOpbGxv?=\r\nDate: Tue, 1 Dec 2026 10:00:00 +0100\r\nMessage-ID: <m1@a.example>\r\nX-Foo: bar\r\n\r\nHi\r\n";
        let e = Email::parse(raw).unwrap();
        assert_eq!(e.headers.subject, "Héllo");
        assert_eq!(e.headers.from[0].name, "Ann");
        assert_eq!(e.headers.to.len(), 2);
        assert_eq!(e.headers.message_id, "m1@a.example");
        assert_eq!(e.headers.date, "2026-12-01T10:00:00+01:00");
        assert_eq!(e.headers.extra_headers["X-Foo"], ["bar"]);
        assert_eq!(e.text, "Hi\r\n");
        let v: serde_json::Value = serde_json::from_slice(&e.to_event_body()).unwrap();
        let m = &v["mailMessage"];
        for key in [
            "Headers",
            "Text",
            "EnrichedText",
            "HTML",
            "InlineFiles",
            "AttachedFiles",
        ] {
            assert!(m.get(key).is_some(), "{key}");
        }
        for key in [
            "Date",
            "Sender",
            "From",
            "ReplyTo",
            "To",
            "Cc",
            "Bcc",
            "MessageID",
            "InReplyTo",
            "References",
            "Subject",
            "Comments",
            "Keywords",
            "ResentDate",
            "ResentFrom",
            "ResentSender",
            "ResentTo",
            "ResentCc",
            "ResentBcc",
            "ResentMessageID",
            "ContentType",
            "ContentDisposition",
            "ExtraHeaders",
        ] {
            assert!(m["Headers"].get(key).is_some(), "{key}");
        }
        assert_eq!(m["Headers"]["From"][0]["Address"], "ann@a.example");
        let back: OnIncomingEmailIn = serde_json::from_value(v).unwrap();
        assert_eq!(back.mail_message, e);
    }

    #[test]
    fn go_nulls_read_as_empty() {
        let go = r#"{"mailMessage":{"Headers":{"Date":"0001-01-01T00:00:00Z","Sender":null,"From":null,"ContentType":{"ContentType":"","Params":null},"ExtraHeaders":null},"Text":"x","InlineFiles":null,"AttachedFiles":[{"ContentType":{"ContentType":"application/pdf","Params":null},"ContentDisposition":{"ContentDisposition":"attachment","Params":{"filename":"a.pdf"}},"Data":"AAEC"}]}}"#;
        let e: OnIncomingEmailIn = serde_json::from_str(go).unwrap();
        assert_eq!(e.mail_message.attached_files[0].data, [0, 1, 2]);
        assert!(e.mail_message.headers.from.is_empty());
    }

    #[test]
    fn unreadable_messages() {
        assert_eq!(Email::parse(b"\r\n"), Err(ParseError::Empty));
        assert!(Email::parse(b"no header here at all\r\n").is_err());
    }
}

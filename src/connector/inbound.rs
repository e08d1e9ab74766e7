//! The inbound request a handler's context keeps, for the headers its calls pass on
//! (`X-Forwarded-*`, `Microbus-Baggage-*`, `Accept-Language`, `Microbus-Clock-Shift`) and for
//! [`Ctx::header`](super::Ctx::header).
//!
//! It keeps the request message as it came (shared bytes, which the request's own header
//! values and body already share) and reads its head again only when a header is asked for. A
//! copy of the request's header map for every served request cost ~2,400 instructions (the
//! clone and its drop) that a handler calling nobody never used.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Request;

use crate::wire::codec::for_each_request_header;
use crate::wire::frame::{header_text, is_propagated_header};

pub(crate) enum Inbound {
    /// The request message as received.
    Message {
        payload: Bytes,
        /// The decoded request's `Content-Length` (its body's exact length, which the decoder
        /// puts in the request's map in place of the message's framing headers).
        length: Option<HeaderValue>,
        /// Its propagated headers, read on first use.
        propagated: OnceLock<Vec<(HeaderName, HeaderValue)>>,
    },
    /// The headers of a request reassembled from fragments.
    Headers(HeaderMap),
}

impl Inbound {
    /// `payload` as received, and `decoded`, the request the decoder made of it.
    pub fn message(payload: Bytes, decoded: &Request<Bytes>) -> Inbound {
        Inbound::Message {
            payload,
            length: decoded.headers().get(CONTENT_LENGTH).cloned(),
            propagated: OnceLock::new(),
        }
    }

    /// The first value of header `name`, when it is visible ASCII (as `HeaderValue::to_str`).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Inbound::Headers(map) => map.get(name).and_then(|v| v.to_str().ok()),
            Inbound::Message {
                payload, length, ..
            } => {
                // The framing headers as the decoded request's map has them: its exact length,
                // never a `Transfer-Encoding`.
                if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str()) {
                    return length.as_ref().and_then(|v| v.to_str().ok());
                }
                if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str()) {
                    return None;
                }
                let mut found = None;
                for_each_request_header(payload, |n, v| {
                    if found.is_none() && n.eq_ignore_ascii_case(name) {
                        found = Some(v);
                    }
                });
                found.and_then(header_text)
            }
        }
    }

    /// Append to `outbound` every value of each propagated header the caller did not set.
    pub fn propagate_into(&self, outbound: &mut HeaderMap) {
        match self {
            Inbound::Headers(inbound) => {
                for name in inbound.keys() {
                    if is_propagated_header(name.as_str()) && !outbound.contains_key(name) {
                        for v in inbound.get_all(name) {
                            outbound.append(name.clone(), v.clone());
                        }
                    }
                }
            }
            Inbound::Message {
                payload,
                propagated,
                ..
            } => {
                let propagated = propagated.get_or_init(|| read_propagated(payload));
                // Decided against the caller's own headers before any is appended: a name
                // with several values is appended whole.
                let mut set_by_caller: Vec<&HeaderName> = Vec::new();
                for (name, _) in propagated {
                    if outbound.contains_key(name) && !set_by_caller.contains(&name) {
                        set_by_caller.push(name);
                    }
                }
                for (name, value) in propagated {
                    if !set_by_caller.contains(&name) {
                        outbound.append(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

fn read_propagated(payload: &Bytes) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for_each_request_header(payload, |name, value| {
        if !is_propagated_header(name) {
            return;
        }
        // The decoder accepted this message, so these parse; a value shares the payload.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(payload.slice_ref(value)),
        ) {
            out.push((name, value));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;

    const MESSAGE: &str = "GET https://a.example:443/x HTTP/1.1\r\nHost: a.example:443\r\n\
        Content-Length: 0\r\nAccept-Language: fr\r\nAuthorization: secret\r\n\
        Microbus-Baggage-Tenant: acme\r\nMicrobus-From-Host: caller.example\r\n\
        X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nX-Forwarded-Host: h\r\n\
        X-Bad: café\r\n\r\n";

    /// The same request as a decoded map, as the context kept it before.
    fn both_of(message: &'static str) -> [Inbound; 2] {
        let payload = Bytes::from_static(message.as_bytes());
        let req = codec::decode_request(payload.clone()).unwrap();
        [
            Inbound::message(payload, &req),
            Inbound::Headers(req.headers().clone()),
        ]
    }

    fn both() -> [Inbound; 2] {
        both_of(MESSAGE)
    }

    #[test]
    fn framing_headers_read_as_the_decoded_request_has_them() {
        for message in [
            MESSAGE,
            // Chunked, as Go writes a body of unknown length: the decoded request has its
            // exact length and no Transfer-Encoding.
            "POST https://a.example:443/x HTTP/1.1\r\nHost: a.example:443\r\n\
             Transfer-Encoding: chunked\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n\
             5\r\nHello\r\n0\r\n\r\n",
            // No framing at all, and a length with a leading zero.
            "GET https://a.example:443/x HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            "POST https://a.example:443/x HTTP/1.1\r\nHost: a.example:443\r\n\
             Content-Length: 05\r\n\r\nHello",
        ] {
            let [raw, map] = both_of(message);
            for name in [
                "content-length",
                "Content-Length",
                "transfer-encoding",
                "host",
            ] {
                assert_eq!(raw.header(name), map.header(name), "{name} of {message:?}");
            }
        }
    }

    #[test]
    fn headers_read_from_the_message_as_from_its_map() {
        for inbound in both() {
            assert_eq!(inbound.header("x-forwarded-for"), Some("1.2.3.4"));
            assert_eq!(inbound.header("X-Forwarded-Host"), Some("h"));
            assert_eq!(inbound.header("authorization"), Some("secret"));
            assert_eq!(inbound.header("x-bad"), None, "not visible ASCII");
            assert_eq!(inbound.header("x-absent"), None);
        }
    }

    #[test]
    fn propagated_headers_pass_on_as_from_the_map() {
        let mut results = Vec::new();
        for inbound in both() {
            let mut outbound = HeaderMap::new();
            outbound.insert("x-forwarded-host", HeaderValue::from_static("mine"));
            outbound.insert("content-type", HeaderValue::from_static("text/plain"));
            inbound.propagate_into(&mut outbound);
            // Twice: the second call reads the cached list.
            let mut again = HeaderMap::new();
            inbound.propagate_into(&mut again);
            let mut pairs: Vec<(String, String)> = outbound
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            pairs.sort();
            assert_eq!(again.get_all("x-forwarded-for").iter().count(), 2);
            results.push(pairs);
        }
        assert_eq!(results[0], results[1]);
        let names: Vec<&str> = results[0].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "accept-language",
                "content-type",
                "microbus-baggage-tenant",
                "x-forwarded-for",
                "x-forwarded-for",
                "x-forwarded-host"
            ]
        );
        assert!(results[0].contains(&("x-forwarded-host".into(), "mine".into())));
    }
}

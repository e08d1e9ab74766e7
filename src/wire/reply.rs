//! Replies in a response inbox (reference §1.5): acks read from the parsed head, responses
//! decoded in full by [`super::codec`].

use bytes::Bytes;
use http::header::HeaderName;
use http::{Response, StatusCode};

use super::codec::{
    has_no_body, header_slots, parse_response_head, read_body, response_from_head,
    BodyWithoutLength, Framing,
};
use super::error::WireError;
use super::frame;

/// What arrives in a response inbox: an ack, of which only the status and the frame are read,
/// or a response.
#[derive(Debug)]
pub enum Reply {
    Ack(AckFrame),
    Response(Response<Bytes>),
}

/// An ack's status and the frame headers its caller reads (each the first value, when it is
/// text, as [`super::Frame`] reads them).
#[derive(Debug, PartialEq, Eq)]
pub struct AckFrame {
    pub status: StatusCode,
    pub msg_id: Option<String>,
    pub from_id: Option<String>,
    pub queue: Option<String>,
}

/// Decode a message of a response inbox. An ack (`Microbus-Op-Code: Ack`) is read from the
/// parsed head without building a header map (one of every call's two replies); it is refused
/// exactly when [`decode_response`] would refuse it.
pub fn decode_reply(payload: Bytes) -> Result<Reply, WireError> {
    let mut slots = header_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let (status, head_len) = parse_response_head(&payload, &mut parsed, &mut slots)?;
    let first = |name: &HeaderName| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    };
    if first(&frame::names::OP_CODE).and_then(header_text) != Some(frame::OpCode::Ack.as_str()) {
        return response_from_head(&payload, &parsed, status, head_len).map(Reply::Response);
    }
    // What building the map would have refused: names beyond `HeaderName`'s limit, framing.
    if let Some(h) = parsed
        .headers
        .iter()
        .find(|h| h.name.len() > MAX_HEADER_NAME_LEN)
    {
        return Err(WireError::InvalidHeader(h.name.to_owned()));
    }
    let mut framing = Framing::default();
    for h in parsed.headers.iter() {
        framing.take(h);
    }
    if !has_no_body(status) {
        read_body(&payload, head_len, &framing, BodyWithoutLength::ToEnd)?;
    }
    let text = |name: &HeaderName| first(name).and_then(header_text).map(str::to_owned);
    let non_empty = |name: &HeaderName| text(name).filter(|v| !v.is_empty());
    Ok(Reply::Ack(AckFrame {
        status,
        msg_id: non_empty(&frame::names::MSG_ID),
        from_id: non_empty(&frame::names::FROM_ID),
        queue: text(&frame::names::QUEUE),
    }))
}

/// Longest header name `HeaderName` takes.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

/// A header value as text, as `HeaderValue::to_str` reads it: visible ASCII and tabs only.
fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::decode_response;
    use crate::wire::codec::tests::{GOLDEN_ACK, GOLDEN_RESPONSE};

    #[test]
    fn replies_read_acks_as_the_full_decoder_and_frame_would() {
        use frame::Frame;
        let ack =
            |extra: &str| format!("HTTP/1.1 202 Accepted\r\nConnection: close\r\n{extra}\r\n");
        let cases = [
            GOLDEN_ACK.to_owned(),
            GOLDEN_RESPONSE.to_owned(),
            ack("microbus-op-code: Ack\r\nmicrobus-msg-id: m1\r\nMICROBUS-FROM-ID: f1\r\n"),
            ack("Microbus-Op-Code: ack\r\nMicrobus-Msg-Id: m1\r\nMicrobus-From-Id: f1\r\n"),
            ack("Microbus-Op-Code: Res\r\nMicrobus-Op-Code: Ack\r\nMicrobus-Msg-Id: m1\r\n"),
            ack("Microbus-Op-Code: Ack\r\nMicrobus-Msg-Id: \r\nMicrobus-From-Id: f1\r\n"),
            ack("Microbus-Op-Code: Ack\r\nMicrobus-Msg-Id: a\r\nMicrobus-Msg-Id: b\r\n"),
            ack("Microbus-Op-Code: Ack\r\nMicrobus-Msg-Id: naïve\r\nMicrobus-Queue: \r\n"),
            ack("Microbus-Op-Code: Ack\r\nContent-Length: 1\r\nContent-Length: 2\r\n"),
            ack("Microbus-Op-Code: Ack\r\nContent-Length: x\r\n"),
            ack("Microbus-Op-Code: Ack\r\nTransfer-Encoding: gzip\r\n"),
            ack("Microbus-Op-Code: Ack\r\nContent-Length: 9\r\n"),
            "HTTP/1.1 100 Continue\r\nMicrobus-Op-Code: Ack\r\nContent-Length: x\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 100 Continue\r\nMicrobus-Op-Code: Ack\r\nMicrobus-Msg-Id: m\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 1000 Odd\r\nMicrobus-Op-Code: Ack\r\n\r\n".to_owned(),
            "HTTP/1.1 202 Accepted\r\nMicrobus-Op-Code: Ack\r\n".to_owned(),
            "HTTP/1.1 202 Accepted\r\nBad Name: x\r\nMicrobus-Op-Code: Ack\r\n\r\n".to_owned(),
        ];
        for case in cases {
            let bytes = Bytes::from(case.clone().into_bytes());
            let full = decode_response(bytes.clone());
            match (decode_reply(bytes), full) {
                (Err(a), Err(b)) => assert_eq!(a, b, "{case:?}"),
                (Ok(Reply::Ack(ack)), Ok(res)) => {
                    let f = Frame(res.headers());
                    assert_eq!(f.op_code(), Some(frame::OpCode::Ack), "{case:?}");
                    let expected = AckFrame {
                        status: res.status(),
                        msg_id: f.msg_id().map(str::to_owned),
                        from_id: f.from_id().map(str::to_owned),
                        queue: f.queue().map(str::to_owned),
                    };
                    assert_eq!(ack, expected, "{case:?}");
                }
                (Ok(Reply::Response(a)), Ok(b)) => {
                    assert_ne!(Frame(b.headers()).op_code(), Some(frame::OpCode::Ack));
                    assert_eq!(
                        (a.status(), a.headers(), a.body()),
                        (b.status(), b.headers(), b.body())
                    );
                }
                (reply, full) => panic!("{case:?}: {reply:?} but {full:?}"),
            }
        }
    }
}

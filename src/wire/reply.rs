//! Replies in a response inbox (reference §1.5): acks read from the parsed head, responses
//! decoded in full by [`super::codec`].

use bytes::Bytes;
use http::{Response, StatusCode};

use super::codec::{
    has_no_body, header_slots, parse_response_head, read_body, response_from_head,
    BodyWithoutLength, Framing, Headers,
};
use super::error::WireError;
use super::frame::{self, header_text, Fragment};

/// What arrives in a response inbox: an ack, of which only the status and the frame are read,
/// or a response and its frame.
#[derive(Debug)]
pub enum Reply {
    Ack(AckFrame),
    Response(Response<Bytes>, ReplyFrame),
}

/// An ack's status and frame.
#[derive(Debug, PartialEq, Eq)]
pub struct AckFrame {
    pub status: StatusCode,
    pub frame: ReplyFrame,
}

/// The frame headers a caller reads from a reply, each the first value when it is text, as
/// [`super::Frame`] reads them from the decoded map, taken in one pass over the parsed head:
/// a response that leaves through the ingress keeps none of them in its map.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyFrame {
    pub op_code: Option<frame::OpCode>,
    pub msg_id: Option<String>,
    pub from_id: Option<String>,
    pub queue: Option<String>,
    pub fragment: Option<Fragment>,
}

/// The first raw value of each frame header a reply is read for.
#[derive(Default)]
struct FirstValues<'b> {
    op_code: Option<&'b [u8]>,
    msg_id: Option<&'b [u8]>,
    from_id: Option<&'b [u8]>,
    queue: Option<&'b [u8]>,
    fragment: Option<&'b [u8]>,
}

impl<'b> FirstValues<'b> {
    fn of(headers: &[httparse::Header<'b>]) -> FirstValues<'b> {
        let mut first = FirstValues::default();
        for h in headers {
            // By length first: most names are turned away without a comparison.
            let slot = match h.name.len() {
                14 if h.name.eq_ignore_ascii_case(frame::QUEUE) => &mut first.queue,
                15 if h.name.eq_ignore_ascii_case(frame::MSG_ID) => &mut first.msg_id,
                16 if h.name.eq_ignore_ascii_case(frame::OP_CODE) => &mut first.op_code,
                16 if h.name.eq_ignore_ascii_case(frame::FROM_ID) => &mut first.from_id,
                17 if h.name.eq_ignore_ascii_case(frame::FRAGMENT) => &mut first.fragment,
                _ => continue,
            };
            slot.get_or_insert(h.value);
        }
        first
    }

    fn frame(&self) -> ReplyFrame {
        fn text(v: Option<&[u8]>) -> Option<&str> {
            v.and_then(header_text)
        }
        let owned = |v: Option<&[u8]>| text(v).map(str::to_owned);
        let non_empty = |v: Option<&[u8]>| owned(v).filter(|v| !v.is_empty());
        ReplyFrame {
            op_code: text(self.op_code).and_then(frame::OpCode::parse),
            msg_id: non_empty(self.msg_id),
            from_id: non_empty(self.from_id),
            queue: owned(self.queue),
            fragment: text(self.fragment).and_then(Fragment::parse),
        }
    }
}

/// Decode a message of a response inbox. An ack (`Microbus-Op-Code: Ack`) is read from the
/// parsed head without building a header map (one of every call's two replies); it is refused
/// exactly when [`decode_response`] would refuse it. A response's map keeps the headers
/// `kept` says for its message id (the caller that waits for it knows where it goes).
pub fn decode_reply(
    payload: Bytes,
    kept: impl FnOnce(Option<&str>) -> Headers,
) -> Result<Reply, WireError> {
    let mut slots = header_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let (status, head_len) = parse_response_head(&payload, &mut parsed, &mut slots)?;
    let first = FirstValues::of(parsed.headers);
    let frame = first.frame();
    if frame.op_code != Some(frame::OpCode::Ack) {
        let kept = kept(frame.msg_id.as_deref());
        let res = response_from_head(&payload, &parsed, status, head_len, kept)?;
        return Ok(Reply::Response(res, frame));
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
    Ok(Reply::Ack(AckFrame { status, frame }))
}

/// Longest header name `HeaderName` takes.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::decode_response;
    use crate::wire::codec::tests::{GOLDEN_ACK, GOLDEN_RESPONSE};

    /// What [`Frame`](frame::Frame) reads from a decoded map.
    fn frame_of(f: frame::Frame<'_>) -> ReplyFrame {
        ReplyFrame {
            op_code: f.op_code(),
            msg_id: f.msg_id().map(str::to_owned),
            from_id: f.from_id().map(str::to_owned),
            queue: f.queue().map(str::to_owned),
            fragment: f.fragment(),
        }
    }

    #[test]
    fn replies_read_as_the_full_decoder_and_frame_would() {
        use frame::Frame;
        let ack =
            |extra: &str| format!("HTTP/1.1 202 Accepted\r\nConnection: close\r\n{extra}\r\n");
        let res = |extra: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nMicrobus-Op-Code: Res\r\n{extra}Content-Length: 2\r\n\r\nok"
            )
        };
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
            res("Microbus-Msg-Id: m1\r\nMicrobus-From-Id: f1\r\nMicrobus-Queue: q\r\n"),
            res("microbus-msg-id: m1\r\nMICROBUS-FROM-ID: f1\r\nmicrobus-fragment: 2/3\r\n"),
            res("Microbus-Msg-Id: a\r\nMicrobus-Msg-Id: b\r\nMicrobus-Fragment: 3/2\r\n"),
            res("Microbus-Msg-Id: \r\nMicrobus-Queue: \r\nMicrobus-Fragment: x\r\n"),
            res("Microbus-From-Id: naïve\r\nMicrobus-Fragment:  1 / 1 \r\n"),
            res("Microbus-Fragment: 1/2\r\nMicrobus-Fragment: 2/2\r\nTraceparent: t\r\n"),
            res("Tracestate: a=b\r\nMicrobus-Baggage-X: 1\r\nX-Kept: yes\r\n"),
            res("Microbus-Bad: \x01\r\n"),
            res("Microbus-Op-Code: Err\r\n"),
            "HTTP/1.1 200 OK\r\nMicrobus-Msg-Id: m\r\n\r\nno op code".to_owned(),
        ];
        for case in cases {
            let bytes = Bytes::from(case.clone().into_bytes());
            let full = decode_response(bytes.clone());
            for kept in [Headers::All, Headers::External] {
                let mut asked = None;
                let reply = decode_reply(bytes.clone(), |msg_id| {
                    asked = Some(msg_id.map(str::to_owned));
                    kept
                });
                match (reply, &full) {
                    (Err(a), Err(b)) => assert_eq!(&a, b, "{case:?}"),
                    (Ok(Reply::Ack(ack)), Ok(res)) => {
                        let f = Frame(res.headers());
                        assert_eq!(f.op_code(), Some(frame::OpCode::Ack), "{case:?}");
                        let expected = AckFrame {
                            status: res.status(),
                            frame: frame_of(f),
                        };
                        assert_eq!(ack, expected, "{case:?}");
                        assert_eq!(asked, None, "an ack has no map to keep: {case:?}");
                    }
                    (Ok(Reply::Response(a, frame)), Ok(b)) => {
                        let f = Frame(b.headers());
                        assert_ne!(f.op_code(), Some(frame::OpCode::Ack));
                        assert_eq!(frame, frame_of(f), "{case:?}");
                        assert_eq!(asked, Some(f.msg_id().map(str::to_owned)), "{case:?}");
                        let mut expected = b.headers().clone();
                        if kept == Headers::External {
                            frame::remove_headers(&mut expected, |k| {
                                frame::is_internal_header(k.as_str())
                            });
                        }
                        assert_eq!(
                            (a.status(), a.headers(), a.body()),
                            (b.status(), &expected, b.body()),
                            "{case:?}"
                        );
                    }
                    (reply, full) => panic!("{case:?}: {reply:?} but {full:?}"),
                }
            }
        }
    }
}

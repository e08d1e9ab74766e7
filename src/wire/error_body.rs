//! The body of an `Err` response (reference §2.4): the tab-indented JSON of a traced error.

use serde::{Deserialize, Serialize};

/// One frame of the error's stack, as Microbus writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFrame {
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub function: String,
    #[serde(default)]
    pub line: u32,
}

/// `{"error": "...", "stack": [...], "statusCode": N}`; each omitted when empty (Go's
/// `omitempty`: a Go error with an empty message has no `error` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<StackFrame>,
    #[serde(rename = "statusCode", default, skip_serializing_if = "is_zero")]
    pub status_code: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl ErrorBody {
    /// Tab-indented, like Go's `json.MarshalIndent(err, "", "\t")`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.error.len());
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        // Serializing plain strings and numbers cannot fail.
        self.serialize(&mut ser)
            .expect("an error body always serializes");
        out
    }

    pub fn from_json(body: &[u8]) -> Option<ErrorBody> {
        serde_json::from_slice(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Err` frame recorded from a Go Microbus v1.7 service: `errors.Newc(409, "")`.
    const GO_ERR_EMPTY_MESSAGE: &[u8] =
        include_bytes!("../../tests/fixtures/fabric-v1.7/s04-err-empty-message_03-Err.payload");
    const GO_ERR_418: &[u8] =
        include_bytes!("../../tests/fixtures/fabric-v1.7/s03-err-418_03-Err.payload");

    fn body_of(frame: &[u8]) -> &[u8] {
        let at = frame.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        &frame[at + 4..]
    }

    #[test]
    fn go_errors_without_a_message_keep_their_status() {
        let b = ErrorBody::from_json(body_of(GO_ERR_EMPTY_MESSAGE)).expect("Go's body parses");
        assert_eq!(b.error, "");
        assert_eq!(b.status_code, 409);
        assert!(!b.stack.is_empty());
        // And we write it the same way: no `error` field when there is no message.
        let ours = ErrorBody {
            error: String::new(),
            stack: Vec::new(),
            status_code: 409,
        };
        assert_eq!(ours.to_json(), b"{\n\t\"statusCode\": 409\n}");
        let b = ErrorBody::from_json(body_of(GO_ERR_418)).unwrap();
        assert_eq!(b.status_code, 418);
        assert!(!b.error.is_empty());
    }

    #[test]
    fn golden_error_body() {
        let body = ErrorBody {
            error: "record not found".into(),
            stack: vec![StackFrame {
                file: "/src/service.go".into(),
                function: "calculator.(*Service).Square".into(),
                line: 75,
            }],
            status_code: 404,
        };
        let json = String::from_utf8(body.to_json()).unwrap();
        assert_eq!(
            json,
            "{\n\t\"error\": \"record not found\",\n\t\"stack\": [\n\t\t{\n\t\t\t\"file\": \"/src/service.go\",\n\t\t\t\"function\": \"calculator.(*Service).Square\",\n\t\t\t\"line\": 75\n\t\t}\n\t],\n\t\"statusCode\": 404\n}"
        );
        assert_eq!(ErrorBody::from_json(json.as_bytes()).unwrap(), body);
        let bare = ErrorBody {
            error: "x".into(),
            stack: vec![],
            status_code: 0,
        };
        assert_eq!(
            String::from_utf8(bare.to_json()).unwrap(),
            "{\n\t\"error\": \"x\"\n}"
        );
        assert!(ErrorBody::from_json(b"not json").is_none());
    }
}

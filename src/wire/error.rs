//! The wire layer's error, and the one way text quoted in an error is cut short.

/// Why a subject, URL or payload could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid hostname '{0}'")]
    InvalidHostname(String),
    #[error("invalid method '{0}'")]
    InvalidMethod(String),
    #[error("invalid path spec: {0}")]
    InvalidPathSpec(String),
    #[error("subject of {0} bytes is longer than the bus accepts")]
    SubjectTooLong(usize),
    #[error("invalid instance id '{0}'")]
    InvalidInstanceId(String),
    #[error("invalid URL '{0}'")]
    InvalidUrl(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("truncated message")]
    Truncated,
    #[error("invalid header '{0}'")]
    InvalidHeader(String),
    #[error("conflicting Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("unsupported Transfer-Encoding '{0}'")]
    UnsupportedTransferEncoding(String),
    #[error("{count} headers: a bus message carries at most {max}")]
    TooManyHeaders { count: usize, max: usize },
}

/// `s` cut to at most `max_chars` characters: text quoted back in errors and log lines (a URL,
/// a path, an origin) comes from clients and may be of any length.
pub fn truncated(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

//! Reading SMTP's command lines within a length limit, and the few commands the session looks
//! into before `mailin` does.

use tokio::io::AsyncBufReadExt;

pub(super) enum Line {
    /// A whole line (with its line ending) is in the buffer.
    Whole,
    /// The line was longer than the limit; it was read and dropped.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Read one line of at most `limit` bytes into `line`, however long the client's line is.
pub(super) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
    line: &mut Vec<u8>,
) -> std::io::Result<Line> {
    line.clear();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + take > limit {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&buf[..take]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Whole });
        }
    }
}

/// `MAIL FROM:<path> PARAMS`: the path and the parameters (`SIZE=`, `BODY=`), or `None` when
/// the line is no MAIL command of that shape (mailin then answers it).
pub(super) fn parse_mail_from(line: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    if text.len() < 10 || !text[..10].eq_ignore_ascii_case("MAIL FROM:") {
        return None;
    }
    let rest = text[10..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = rest[..end].to_owned();
    let params = rest[end + 1..]
        .split_ascii_whitespace()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), v.to_owned()),
            None => (p.to_ascii_uppercase(), String::new()),
        })
        .collect();
    Some((path, params))
}

/// `RCPT TO:<path> PARAMS` without its parameters (mailin takes none).
pub(super) fn strip_rcpt_params(line: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    if text.len() < 8 || !text[..8].eq_ignore_ascii_case("RCPT TO:") {
        return None;
    }
    let rest = text[8..].trim_start();
    let end = rest.find('>')?;
    Some(format!("RCPT TO:{}\r\n", &rest[..=end]).into_bytes())
}

pub(super) fn is_command(line: &[u8], verb: &str) -> bool {
    line.len() >= verb.len()
        && line[..verb.len()].eq_ignore_ascii_case(verb.as_bytes())
        && line
            .get(verb.len())
            .is_none_or(|b| matches!(b, b' ' | b'\r' | b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[test]
    fn mail_from_parameters() {
        let (p, params) = parse_mail_from(b"MAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME\r\n").unwrap();
        assert_eq!(p, "a@b.c");
        assert_eq!(params[0], ("SIZE".to_owned(), "100".to_owned()));
        let (p, _) = parse_mail_from(b"mail from: <>\r\n").unwrap();
        assert_eq!(p, "");
        assert!(parse_mail_from(b"MAIL FROM a@b\r\n").is_none());
        assert_eq!(
            strip_rcpt_params(b"RCPT TO:<x@y> NOTIFY=NEVER\r\n").unwrap(),
            b"RCPT TO:<x@y>\r\n"
        );
        assert!(is_command(b"ehlo x\r\n", "EHLO"));
        assert!(!is_command(b"EHLOx\r\n", "EHLO"));
    }

    #[tokio::test]
    async fn long_lines_are_read_and_dropped() {
        let data = [vec![b'a'; 10_000], b"\r\nok\r\n".to_vec()].concat();
        let mut r = BufReader::with_capacity(64, &data[..]);
        let mut line = Vec::new();
        assert!(matches!(
            read_line(&mut r, 100, &mut line).await.unwrap(),
            Line::TooLong
        ));
        assert!(matches!(
            read_line(&mut r, 100, &mut line).await.unwrap(),
            Line::Whole
        ));
        assert_eq!(line, b"ok\r\n");
        assert!(matches!(
            read_line(&mut r, 100, &mut line).await.unwrap(),
            Line::Eof
        ));
    }
}

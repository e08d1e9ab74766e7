//! A raw HTTP/1.1 client over TCP, so that tests can send exactly the bytes they mean,
//! malformed ones included.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parse one response from `buf` if complete: (response, bytes used).
fn parse(buf: &[u8], eof: bool) -> Option<(RawResponse, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut slots);
    let head = match r.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = r.code.unwrap();
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[head..];
    if status == 100 || status == 204 || status == 304 {
        return Some((
            RawResponse {
                status,
                headers,
                body: Vec::new(),
            },
            head,
        ));
    }
    if let Some(cl) = get("content-length") {
        let n: usize = cl.trim().parse().unwrap();
        if rest.len() < n {
            return None;
        }
        return Some((
            RawResponse {
                status,
                headers,
                body: rest[..n].to_vec(),
            },
            head + n,
        ));
    }
    if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let (used, size) = match httparse::parse_chunk_size(&rest[pos..]).ok()? {
                httparse::Status::Complete(v) => v,
                httparse::Status::Partial => return None,
            };
            pos += used;
            if size == 0 {
                if rest.len() < pos + 2 {
                    return None;
                }
                return Some((
                    RawResponse {
                        status,
                        headers,
                        body,
                    },
                    head + pos + 2,
                ));
            }
            let size = size as usize;
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
    }
    if eof {
        return Some((
            RawResponse {
                status,
                headers,
                body: rest.to_vec(),
            },
            buf.len(),
        ));
    }
    None
}

/// Read one response from `stream`; `Err` when the connection ends before one is complete.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<RawResponse> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((res, used)) = parse(buf, false) {
            buf.drain(..used);
            return Ok(res);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return match parse(buf, true) {
                Some((res, used)) => {
                    buf.drain(..used);
                    Ok(res)
                }
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed; got {:?}", String::from_utf8_lossy(buf)),
                )),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Send raw bytes on a new connection and read one response.
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    send_on(&mut stream, request).await
}

pub async fn send_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> std::io::Result<RawResponse> {
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read_response(stream, &mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 30 s"))?
}

/// A request with `Connection: close`, the given headers and body, and `Host: localhost`
/// (so port 80 for the ingress's port mappings).
pub fn build(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    build_with_host("localhost", method, path, headers, body)
}

/// The same with the given `Host` (none when empty).
pub fn build_with_host(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    if !host.is_empty() {
        out.push_str(&format!("Host: {host}\r\n"));
    }
    out.push_str("Connection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    // As curl does: `Host` names the address connected to.
    let host = addr.to_string();
    send_raw(addr, &build_with_host(&host, method, path, headers, body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    request(addr, "GET", path, &[], b"").await
}

/// Upload `len` bytes the way curl does: headers with `Expect: 100-continue`, the body only
/// after `100 Continue`; a final response before that means the body was refused unread.
pub async fn upload(addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        read_response(&mut stream, &mut buf),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no interim response"))??;
    if first.status != 100 {
        return Ok(first);
    }
    stream.write_all(body).await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        read_response(&mut stream, &mut buf),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no final response"))?
}

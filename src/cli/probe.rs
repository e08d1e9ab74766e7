//! `busgate probe <url>`: the container health check, so that the runtime image needs no
//! curl.

/// How long `busgate probe` waits for an answer.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET url` over plain HTTP/1.1: `Ok` on a 2xx answer, else why not. For container health
/// checks, so that the runtime image needs no curl.
pub async fn probe(url: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("only http:// URLs can be probed, not {url}"));
    }
    let authority = uri.authority().ok_or_else(|| format!("no host in {url}"))?;
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let head = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{url}: status {status}"))
    }
}

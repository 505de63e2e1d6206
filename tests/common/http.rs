//! A minimal HTTP/1.1 client over a plain TCP stream, for driving `serve` exactly: any
//! header, a body that lies about its length, one connection per request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum Failure {
    /// The connection was refused: nobody listens.
    Refused,
    /// The connection closed before any byte of a response.
    ClosedBeforeResponse(String),
    /// A response started but was cut or malformed.
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => write!(f, "connection refused"),
            Failure::ClosedBeforeResponse(e) => write!(f, "closed before a response: {e}"),
            Failure::Broken(e) => write!(f, "broken response: {e}"),
        }
    }
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("cut chunk size")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..eol])
                    .map_err(|e| e.to_string())?
                    .trim(),
                16,
            )
            .map_err(|e| e.to_string())?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err("cut chunk".into());
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    } else if let Some(n) = header("content-length") {
        let n: usize = n.parse().map_err(|_| "bad content-length")?;
        if body.len() != n {
            return Err(format!("body of {} bytes, content-length {n}", body.len()));
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends `head` (request line and headers, without the blank line) and `body`, then
/// reads the response until the server closes the connection.
pub fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Result<Response, Failure> {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Failure::Refused)
        }
        Err(e) => return Err(Failure::ClosedBeforeResponse(e.to_string())),
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut request = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    // A server may answer (413, 400) and close before reading everything: a failed
    // write is not yet a failure, the response decides.
    let _ = s.write_all(&request);
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if raw.is_empty() => return Err(Failure::ClosedBeforeResponse(e.to_string())),
        Err(e) => return Err(Failure::Broken(e.to_string())),
    }
    if raw.is_empty() {
        return Err(Failure::ClosedBeforeResponse("no bytes".into()));
    }
    parse(&raw).map_err(Failure::Broken)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: test"), &[])
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// POSTs `body` with `content_type` (none when empty).
pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Response {
    try_post(addr, path, content_type, body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

pub fn try_post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, Failure> {
    let ct = if content_type.is_empty() {
        String::new()
    } else {
        format!("\r\nContent-Type: {content_type}")
    };
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: test{ct}\r\nContent-Length: {}",
            body.len()
        ),
        body,
    )
}

/// A multipart/form-data body with one field per (name, bytes), and its content type.
pub fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "candletron-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, bytes) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

//! The status page's HTTP server (`--status`): a minimal, read-only
//! HTTP/1.1 on tokio — `GET /` (the page, inline CSS and JS only),
//! `GET /status.json` (its data), one request per connection.
//!
//! Written here rather than with an HTTP crate: two fixed routes, no
//! body, no keep-alive; what matters is what a hostile client can make it
//! hold, and that is all in [`Limits`]: the size of a request head, the
//! time to send it and to read the answer, and the connections served at
//! once (a permit is taken before serving; a client over the limit is
//! answered 503 at once, and only a few such answers are in progress).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The page: HTML with inline CSS and JS, no external asset.
pub const PAGE: &str = include_str!("status.html");

/// What one client may make the server hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub read_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8192,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

/// Answers of "too many connections" in progress at once; past it, the
/// connection is dropped without a word.
const MAX_REFUSALS: usize = 8;

/// Serves the page on `listener` forever. `status` gives the JSON of the
/// moment, or `None` when the node is gone.
pub async fn serve<S, F>(listener: TcpListener, limits: Limits, status: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Option<String>> + Send,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("status page: {error}");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let status = status.clone();
                tokio::spawn(async move {
                    serve_one(stream, limits, status).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::debug!(
                    limit = limits.max_connections,
                    "status page: too many connections"
                );
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        let answer = response(503, "text/plain", b"too many connections\n");
                        write(stream, &answer, limits.write_timeout).await;
                        drop(refusal);
                    });
                }
            }
        }
    }
}

/// Why a request head could not be read.
enum HeadError {
    TooLarge,
    Closed,
}

async fn serve_one<S, F>(mut stream: TcpStream, limits: Limits, status: S)
where
    S: Fn() -> F,
    F: Future<Output = Option<String>>,
{
    let head = tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await;
    let answer = match head {
        Err(_) => response(408, "text/plain", b"request head not received in time\n"),
        Ok(Err(HeadError::TooLarge)) => response(431, "text/plain", b"request head too large\n"),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Ok(head)) => route(&head, status, limits.write_timeout).await,
    };
    write(stream, &answer, limits.write_timeout).await;
}

/// Reads up to the blank line ending the head, at most `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (max + 1).saturating_sub(head.len()).min(chunk.len());
        let read = match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(read) => read,
        };
        // Look for the end only where it can be: in what came, and the 3
        // bytes before it.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        if let Some(end) = find(&head[from..], b"\r\n\r\n") {
            head.truncate(from + end);
            return Ok(head);
        }
        if head.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The answer to a request head; the node gets `limit` to give its
/// status.
async fn route<S, F>(head: &[u8], status: S, limit: Duration) -> Vec<u8>
where
    S: Fn() -> F,
    F: Future<Output = Option<String>>,
{
    let line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return response(405, "text/plain", b"only GET and HEAD\n");
    }
    let mut answer = match path {
        "/" => response(200, "text/html; charset=utf-8", PAGE.as_bytes()),
        "/status.json" => match tokio::time::timeout(limit, status()).await {
            Ok(Some(json)) => response(200, "application/json", json.as_bytes()),
            Ok(None) => response(503, "text/plain", b"the admin node is stopping\n"),
            Err(_) => response(503, "text/plain", b"the admin node is busy\n"),
        },
        _ => response(404, "text/plain", b"not found\n"),
    };
    if head_only {
        if let Some(end) = find(&answer, b"\r\n\r\n") {
            answer.truncate(end + 4);
        }
    }
    answer
}

fn response(code: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    // The page may run inline code and talk to its own origin only.
    let mut answer = format!(
        "HTTP/1.1 {code} {reason}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// Writes the answer and closes, within `limit`: a client that does not
/// read is dropped.
async fn write(mut stream: TcpStream, answer: &[u8], limit: Duration) {
    let send = async {
        stream.write_all(answer).await?;
        stream.shutdown().await
    };
    if let Ok(Err(error)) = tokio::time::timeout(limit, send).await {
        tracing::debug!("status page: {error}");
    }
}

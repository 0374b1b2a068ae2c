//! The nodes' read-only side doors over HTTP: the metrics endpoint
//! (`--metrics`) and the admin's status page (`--status`).
//!
//! A minimal HTTP/1.1 server on tokio, `GET` and `HEAD` only, no body, one
//! request per connection: what a scraper or a browser sends is a line and
//! a few headers, and an HTTP crate would bring far more than that needs.
//! What matters is what a hostile client can make a node hold, and that is
//! all in [`HttpLimits`]: the size of a request head, the time to send it
//! and to take the answer, and the connections served at once (a permit is
//! taken before serving; a client over the limit is answered 503 at once,
//! and only a few such answers are in progress).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use neo_proto::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::NetError;
use crate::tcp::resolve;

/// What one client may make the server hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub read_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
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

/// Most bytes read after the answer, before closing.
const DRAIN_BYTES: usize = 64 * 1024;

/// An answer: status, content type, extra header lines and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Header lines of the route's own, each ending with `\r\n`.
    pub headers: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 answer.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            headers: "",
            body: body.into(),
        }
    }

    /// An error answer with a one-line text.
    pub fn error(status: u16, text: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: "",
            body: format!("{text}\n").into_bytes(),
        }
    }

    /// With more header lines (each ending with `\r\n`).
    pub fn with_headers(self, headers: &'static str) -> Response {
        Response { headers, ..self }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            _ => "Service Unavailable",
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\n\
             Content-Type: {}\r\n\
             Content-Length: {}\r\n\
             Cache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\n\
             {}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.headers,
        )
        .into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// Binds a side door's listener on `address` (NEO's syntax; port 0 picks
/// one), now, so that a busy address stops the program at start.
pub async fn bind(address: &Address) -> Result<(TcpListener, Address), NetError> {
    let at = resolve(address).await?;
    let context = || format!("bind {address}");
    let listener = TcpListener::bind(at)
        .await
        .map_err(|e| NetError::io(context(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| NetError::io(context(), e))?;
    Ok((listener, local.into()))
}

/// Serves `listener` until the future is dropped: `route` gets the path of
/// each `GET` or `HEAD` (without its query string) and gives the answer.
pub async fn serve<R, F>(listener: TcpListener, limits: HttpLimits, route: R)
where
    R: Fn(String) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("http: {error}");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let route = route.clone();
                tokio::spawn(async move {
                    serve_one(stream, limits, route).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::debug!(limit = limits.max_connections, "http: too many connections");
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        let answer = Response::error(503, "too many connections");
                        write(stream, &answer.encode(false), limits.write_timeout).await;
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

async fn serve_one<R, F>(mut stream: TcpStream, limits: HttpLimits, route: R)
where
    R: Fn(String) -> F,
    F: Future<Output = Response>,
{
    let head = tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await;
    let (answer, unread) = match head {
        Err(_) => (
            Response::error(408, "request head not received in time").encode(false),
            false,
        ),
        Ok(Err(HeadError::TooLarge)) => (
            Response::error(431, "request head too large").encode(false),
            true,
        ),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Ok(head)) => (answer(&head, route).await, false),
    };
    if unread {
        write_then_drain(stream, &answer, limits.write_timeout).await;
    } else {
        write(stream, &answer, limits.write_timeout).await;
    }
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
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + end);
            return Ok(head);
        }
        if head.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The answer to a request head.
async fn answer<R, F>(head: &[u8], route: R) -> Vec<u8>
where
    R: Fn(String) -> F,
    F: Future<Output = Response>,
{
    let line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = match (words.next(), words.next(), words.next(), words.next()) {
        (Some(method), Some(target), Some(version), None) if version.starts_with("HTTP/1.") => {
            (method, target)
        }
        _ => return Response::error(400, "not an HTTP/1 request line").encode(false),
    };
    let path = target.split('?').next().unwrap_or("").to_owned();
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return Response::error(405, "only GET and HEAD").encode(false);
    }
    route(path).await.encode(head_only)
}

/// Writes the answer and closes, within `limit`: a client that does not
/// read is dropped.
async fn write(mut stream: TcpStream, answer: &[u8], limit: Duration) {
    let send = async {
        stream.write_all(answer).await?;
        stream.shutdown().await
    };
    if let Ok(Err(error)) = tokio::time::timeout(limit, send).await {
        tracing::debug!("http: {error}");
    }
}

/// [`write`] to a client still sending: closing with unread bytes would
/// reset the connection and could destroy the answer before the client
/// reads it, so what it sends is read, bounded, until it closes.
async fn write_then_drain(mut stream: TcpStream, answer: &[u8], limit: Duration) {
    let send = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut left = [0u8; 1024];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match stream.read(&mut left).await? {
                0 => break,
                read => drained += read,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    if let Ok(Err(error)) = tokio::time::timeout(limit, send).await {
        tracing::debug!("http: {error}");
    }
}

//! A minimal HTTP/1.1 server on tokio for what nodes serve besides NEO
//! (the metrics endpoint): one request per connection, no request body,
//! no keep-alive. Written here rather than with an HTTP crate because a
//! request is one line and a few headers; what matters is what a hostile
//! client can make it hold, and that is all in [`Limits`]: the size of a
//! request head, the time to send it and to take the answer, and the
//! connections served at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What one client may make the server hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes; a
    /// longer one is answered 431.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head (a slowloris
    /// trickling a byte at a time is cut there), else 408.
    pub read_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
    /// Connections served at once; one over it is answered 503 at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// Answers of "too many connections" in progress at once; past it, a
/// connection is dropped without a word.
const MAX_REFUSALS: usize = 8;

/// Most bytes read after the answer, before closing.
const DRAIN_BYTES: usize = 64 * 1024;

/// What the server looks at in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`...
    pub method: String,
    /// The target without its query string.
    pub path: String,
}

/// An answer: its status, content type and body (`Connection: close`
/// and the length are added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            _ => "Service Unavailable",
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// Serves `listener` forever (drop the future to stop): each request is
/// answered by `handle`.
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, handle: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("http: {error}");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            let handle = handle.clone();
            tokio::spawn(async move {
                serve_one(stream, limits, handle).await;
                drop(permit);
            });
            continue;
        }
        tracing::debug!(%peer, limit = limits.max_connections, "http: too many connections");
        if let Ok(refusal) = refusals.clone().try_acquire_owned() {
            tokio::spawn(async move {
                let answer = Response::text(503, "too many connections\n");
                write(stream, &answer.encode(false), limits.write_timeout).await;
                drop(refusal);
            });
        }
    }
}

async fn serve_one<H, F>(mut stream: TcpStream, limits: Limits, handle: H)
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let head = tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await;
    let (answer, head_only) = match head {
        Err(_) => (
            Response::text(408, "request head not received in time\n"),
            false,
        ),
        Ok(Head::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Ok(Head::Closed) => return,
        Ok(Head::Line(line)) => match request(&line) {
            Some(request) => {
                let head_only = request.method == "HEAD";
                (handle(request).await, head_only)
            }
            None => (Response::text(404, "not found\n"), false),
        },
    };
    write(stream, &answer.encode(head_only), limits.write_timeout).await;
}

/// What a connection sent before its blank line.
enum Head {
    /// The request line of a whole head.
    Line(String),
    /// More than the limit without the blank line.
    TooLarge,
    /// The client closed (or failed) first.
    Closed,
}

async fn read_head(stream: &mut TcpStream, max: usize) -> Head {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (max + 1).saturating_sub(head.len()).min(chunk.len());
        let read = match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(read) => read,
        };
        // Look for the end only where it can be: in what came, and the 3
        // bytes before it.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        if head[from..].windows(4).any(|window| window == b"\r\n\r\n") {
            let line = head.split(|&byte| byte == b'\n').next().unwrap_or_default();
            return Head::Line(String::from_utf8_lossy(line).trim_end().to_owned());
        }
        if head.len() > max {
            return Head::TooLarge;
        }
    }
}

/// `METHOD TARGET HTTP/1.x`, else `None`.
fn request(line: &str) -> Option<Request> {
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or_default();
    Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

/// Writes the answer and closes, within `limit`: a client that does not
/// read is dropped.
async fn write(mut stream: TcpStream, answer: &[u8], limit: Duration) {
    let send = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        // Closing with unread bytes would reset the connection and could
        // destroy the answer before the client reads it (a 431 is sent
        // while the head still comes): read what is left, bounded.
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

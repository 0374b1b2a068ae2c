//! The status page's routes (`--status`) on `neo-net`'s bounded HTTP
//! server: `GET /`, the page (inline CSS and JS only), and
//! `GET /status.json`, its data.

use std::future::Future;
use std::time::Duration;

use neo_net::http::{self, HttpLimits, Response};
use tokio::net::TcpListener;

/// The page: HTML with inline CSS and JS, no external asset.
pub const PAGE: &str = include_str!("status.html");

/// How long the admin may take to give its status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The page may run inline code and talk to its own origin only.
const PAGE_POLICY: &str = "Content-Security-Policy: default-src 'none'; \
    script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'\r\n";

/// Serves the page on `listener` forever. `status` gives the JSON of the
/// moment, or `None` when the node is gone.
pub async fn serve<S, F>(listener: TcpListener, limits: HttpLimits, status: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Option<String>> + Send,
{
    http::serve(listener, limits, move |path: String| {
        let status = status.clone();
        async move { route(&path, status).await }
    })
    .await;
}

async fn route<S, F>(path: &str, status: S) -> Response
where
    S: Fn() -> F,
    F: Future<Output = Option<String>>,
{
    match path {
        "/" => Response::ok("text/html; charset=utf-8", PAGE).with_headers(PAGE_POLICY),
        "/status.json" => match tokio::time::timeout(STATUS_TIMEOUT, status()).await {
            Ok(Some(json)) => Response::ok("application/json", json).with_headers(PAGE_POLICY),
            Ok(None) => Response::error(503, "the admin node is stopping"),
            Err(_) => Response::error(503, "the admin node is busy"),
        },
        _ => Response::error(404, "not found"),
    }
}

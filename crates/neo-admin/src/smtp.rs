//! Sending the admin's e-mails over SMTP (operations.md §4.4), with
//! `lettre`'s SMTP client on tokio: the relay of `--smtp`, STARTTLS with
//! `--smtp-tls` (rustls, the system's root certificates), PLAIN or LOGIN
//! with `--smtp-auth`, and the empty reverse-path `MAIL FROM:<>` (NEO/py's
//! Python 3 bug Q3 fixed).
//!
//! The relay is a peer like any other: a whole send, connection to the
//! last reply, is bounded by its timeout ([`SEND_TIMEOUT`]), and by
//! [`MAX_REPLY_BYTES`] read from it in all (`lettre` reads a reply line
//! whole before it checks its length: a relay sending one endless line
//! would otherwise fill the memory until the timeout). A silent or
//! babbling relay costs one task for that long and never blocks the node.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use neo_proto::Address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Longest time one mail may take, from connecting to the last reply.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes read from the relay for one mail (TLS handshake included):
/// its replies to a dozen commands take a few KiB.
pub const MAX_REPLY_BYTES: u64 = 256 * 1024;

/// How to reach the relay (`--smtp`, `--smtp-tls`, `--smtp-auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpConfig {
    /// The relay; NEO/py's default is `localhost:25`.
    pub relay: Address,
    /// Issue STARTTLS (and require it).
    pub starttls: bool,
    /// User and password to log in with.
    pub auth: Option<(String, String)>,
    /// The recipients (`--monitor-email`).
    pub recipients: Vec<String>,
    /// The name given in `EHLO` (this host's); empty: `[127.0.0.1]`.
    pub hello: String,
    /// How long one mail may take.
    pub timeout: Duration,
}

/// Why the SMTP settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// A recipient that is not an e-mail address.
    #[error("--monitor-email {address:?}: {reason}")]
    Recipient {
        /// As given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No recipient: nothing to send.
    #[error("no --monitor-email recipient")]
    NoRecipient,
    /// TLS cannot be set up for this host.
    #[error("--smtp-tls with {host}: {reason}")]
    Tls {
        /// The relay's host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A ready SMTP client: checked settings, one connection per mail.
#[derive(Clone)]
pub struct Smtp {
    relay: Address,
    hello: ClientId,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    envelope: Envelope,
    timeout: Duration,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the credentials.
        f.debug_struct("Smtp")
            .field("relay", &self.relay)
            .field("starttls", &self.tls.is_some())
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl Smtp {
    /// Checks the settings: every recipient an address, TLS possible.
    pub fn new(config: &SmtpConfig) -> Result<Smtp, SmtpError> {
        let mut recipients = Vec::new();
        for address in &config.recipients {
            let parsed = address
                .parse()
                .map_err(
                    |error: lettre::address::AddressError| SmtpError::Recipient {
                        address: address.clone(),
                        reason: error.to_string(),
                    },
                )?;
            recipients.push(parsed);
        }
        // The empty reverse-path: notifications must not bounce back.
        let envelope = Envelope::new(None, recipients).map_err(|_| SmtpError::NoRecipient)?;
        let host = &config.relay.host;
        let tls = match config.starttls {
            false => None,
            true => Some(
                TlsParameters::new(host.clone()).map_err(|error| SmtpError::Tls {
                    host: host.clone(),
                    reason: error.to_string(),
                })?,
            ),
        };
        let credentials = config
            .auth
            .as_ref()
            .map(|(user, password)| Credentials::new(user.clone(), password.clone()));
        let hello = match config.hello.as_str() {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        Ok(Smtp {
            relay: config.relay.clone(),
            hello,
            tls,
            credentials,
            envelope,
            timeout: config.timeout,
        })
    }

    /// Sends one message (headers and body, CRLF line ends) to every
    /// recipient, within the time limit; the error says what failed.
    pub async fn send(&self, message: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.transaction(message)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from the SMTP relay {} within {} s",
                self.relay,
                self.timeout.as_secs_f64()
            )),
        }
    }

    async fn transaction(&self, message: &[u8]) -> Result<(), String> {
        let relay = &self.relay;
        let stream = TcpStream::connect((relay.host.as_str(), relay.port))
            .await
            .map_err(|error| format!("cannot connect to the SMTP relay {relay}: {error}"))?;
        let stream = Capped {
            stream,
            left: MAX_REPLY_BYTES,
        };
        let hello = &self.hello;
        let failed = |error: lettre::transport::smtp::Error| {
            // lettre's errors name their cause.
            format!("SMTP relay {relay}: {error}")
        };
        let mut connection = AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello)
            .await
            .map_err(failed)?;
        if let Some(tls) = &self.tls {
            connection
                .starttls(tls.clone(), hello)
                .await
                .map_err(failed)?;
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(failed)?;
        }
        connection
            .send(&self.envelope, message)
            .await
            .map_err(failed)?;
        // Delivered: a relay that does not answer QUIT changes nothing.
        let _ = connection.quit().await;
        Ok(())
    }
}

/// The relay's connection, reading at most `left` more bytes.
#[derive(Debug)]
struct Capped {
    stream: TcpStream,
    left: u64,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::other(format!(
                "the relay sent more than {MAX_REPLY_BYTES} bytes"
            ))));
        }
        // Through a small buffer of our own: the relay's replies are small,
        // and the caller's buffer is never filled past the cap.
        let mut chunk = [0u8; 4096];
        let room = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.remaining())
            .min(chunk.len());
        let mut limited = ReadBuf::new(&mut chunk[..room]);
        let poll = Pin::new(&mut self.stream).poll_read(cx, &mut limited);
        if let Poll::Ready(Ok(())) = poll {
            let read = limited.filled();
            buf.put_slice(read);
            self.left -= read.len() as u64;
        }
        poll
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Capped {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

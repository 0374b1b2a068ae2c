//! Sending the admin's e-mails over SMTP (operations.md §4.4), with
//! `lettre` on tokio: the relay of `--smtp`, STARTTLS with `--smtp-tls`
//! (rustls, the system's root certificates), LOGIN/PLAIN with
//! `--smtp-auth`, and the empty reverse-path `MAIL FROM:<>` (NEO/py's
//! Python 3 bug Q3 fixed).
//!
//! The relay is a peer like any other: a whole send, connection to the
//! last reply, is bounded by [`SEND_TIMEOUT`], and `lettre` refuses reply
//! lines and replies over its own size limits, so a silent or babbling
//! relay costs one task for at most that long and never blocks the node.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use neo_proto::Address;

/// Longest time one mail may take, from connecting to the last reply.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

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
    transport: AsyncSmtpTransport<Tokio1Executor>,
    envelope: Envelope,
    timeout: Duration,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the credentials: not printed.
        f.debug_struct("Smtp")
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
        let host = config.relay.host.clone();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(config.relay.port)
            .timeout(Some(config.timeout));
        if config.starttls {
            let parameters = TlsParameters::new(host.clone()).map_err(|error| SmtpError::Tls {
                host,
                reason: error.to_string(),
            })?;
            builder = builder.tls(Tls::Required(parameters));
        }
        if let Some((user, password)) = &config.auth {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Smtp {
            transport: builder.build(),
            envelope,
            timeout: config.timeout,
        })
    }

    /// Sends one message (headers and body, CRLF line ends) to every
    /// recipient, within the time limit; the error says what failed.
    pub async fn send(&self, message: &[u8]) -> Result<(), String> {
        let send = self.transport.send_raw(&self.envelope, message);
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err(format!(
                "no answer from the SMTP relay within {} s",
                self.timeout.as_secs_f64()
            )),
        }
    }
}

/// The error with its causes, on one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

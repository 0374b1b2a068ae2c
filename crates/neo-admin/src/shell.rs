//! Runs [`Admin`] on the node shell of `neo-net`: it serves `neoctl` on
//! the listener and makes the master connections the state machine asks
//! for. It also carries the admin's e-mails to the SMTP relay and serves
//! the status page; both report back to the state machine as
//! completions of the node shell, so the node's loop never waits for
//! them. All decisions are the state machine's.

use std::future::Future;

use neo_net::http::HttpLimits;
use neo_net::shell::{run_with_completions, Completion};
use neo_net::{Listener, Node, Output, ShellConfig, ShellError};
use neo_proto::UnixTime;
use tokio::sync::{mpsc, oneshot};

use crate::app::{Admin, AdminConfig, ConfigError};
use crate::http;
use crate::metrics::{AdminMetrics, Metered};
use crate::smtp::Smtp;

/// Why the admin node could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration cannot make an admin node.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// E-mails are asked for without SMTP settings.
    #[error("e-mail notifications need SMTP settings")]
    NoSmtp,
    /// The node's shell failed.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// What the admin talks to besides NEO nodes.
#[derive(Debug, Default)]
pub struct Services {
    /// Where e-mails go: needed with `config.monitor.email`.
    pub smtp: Option<Smtp>,
    /// The status page's listener (`--status`) and its limits.
    pub status: Option<(tokio::net::TcpListener, HttpLimits)>,
    /// What the admin counts (`--metrics`).
    pub metrics: Option<AdminMetrics>,
}

/// Completions waiting for the node: one mail in flight, and questions of
/// the status page (at most one per connection it serves).
const COMPLETIONS: usize = 64;

/// Runs an admin node: serves `neoctl` on `listener` and follows the
/// primary master among `config.masters`, reconnecting forever when it is
/// lost. Returns `Ok` once the cluster has been stopped (the master
/// announced STOPPING, then went away) or when `shutdown` completes.
pub async fn run(
    config: AdminConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    run_with(config, listener, Services::default(), shutdown).await
}

/// [`run`], with e-mails, the status page and metrics.
pub async fn run_with(
    config: AdminConfig,
    listener: Listener,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    if config.monitor.email.is_some() && services.smtp.is_none() {
        return Err(AdminError::NoSmtp);
    }
    let (completions, receiver) = mpsc::channel(COMPLETIONS);
    let page = services.status.map(|(listener, limits)| {
        let completions = completions.clone();
        tokio::spawn(http::serve(listener, limits, move || {
            status_json(completions.clone())
        }))
    });
    let mut node = Shelled {
        admin: Metered::new(Admin::new(config)?, services.metrics),
        smtp: services.smtp,
        completions,
    };
    let result = run_with_completions(
        &mut node,
        Some(listener),
        ShellConfig::default(),
        shutdown,
        receiver,
    )
    .await;
    if let Some(page) = page {
        page.abort();
    }
    result?;
    tracing::info!("admin stopped");
    Ok(())
}

/// The status JSON, asked of the node between two batches of events.
async fn status_json(completions: mpsc::Sender<Completion<Shelled>>) -> Option<String> {
    let (reply, answer) = oneshot::channel();
    let ask: Completion<Shelled> = Box::new(move |node, now| {
        let _ = reply.send(node.admin.admin_mut().status_json(now));
    });
    completions.send(ask).await.ok()?;
    answer.await.ok()
}

/// The admin with what its shell carries out for it.
struct Shelled {
    admin: Metered,
    smtp: Option<Smtp>,
    /// Where sends report back.
    completions: mpsc::Sender<Completion<Shelled>>,
}

impl Shelled {
    /// Sends the mails the admin asks for, each in a task of its own.
    fn send_mails(&mut self) {
        for mail in self.admin.admin_mut().poll_mail() {
            let Some(smtp) = self.smtp.clone() else {
                continue;
            };
            let completions = self.completions.clone();
            tokio::spawn(async move {
                let result = smtp.send(&mail.message).await;
                let id = mail.id;
                let done: Completion<Shelled> =
                    Box::new(move |node, now| node.admin.admin_mut().mail_sent(id, result, now));
                // The node is gone if this fails: nobody to tell.
                let _ = completions.send(done).await;
            });
        }
    }
}

impl Node for Shelled {
    fn handle(&mut self, input: neo_net::Input, now: UnixTime) {
        self.admin.handle(input, now);
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.send_mails();
        self.admin.poll_output()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        self.admin.poll_timeout()
    }
}

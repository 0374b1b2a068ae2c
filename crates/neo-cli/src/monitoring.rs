//! `neoadmin`'s monitoring options turned into what the admin node takes:
//! alerts and e-mails (operations.md §1.3, §4.4) and the status page
//! (`--status`, ours).

use neo_admin::mail::EmailConfig;
use neo_admin::smtp::{Smtp, SmtpConfig, SEND_TIMEOUT};
use neo_admin::MonitorConfig;
use neo_net::http::{self, HttpLimits};
use tokio::net::TcpListener;

use crate::options::AdminOptions;

/// Alerts, e-mails and the status page as the options say.
pub fn monitor_config(options: &AdminOptions) -> MonitorConfig {
    let email = (!options.monitor_email.is_empty()).then(|| EmailConfig {
        to: options.monitor_email.clone(),
        from: email_from(),
    });
    MonitorConfig {
        max_lag: options.monitor_maxlag,
        email,
        status_page: options.status.is_some(),
    }
}

/// The SMTP client for the relay of `--smtp` (default `localhost:25`),
/// when e-mails are on; the recipients and TLS are checked now.
pub fn smtp(options: &AdminOptions) -> Result<Option<Smtp>, String> {
    if options.monitor_email.is_empty() {
        return Ok(None);
    }
    let config = SmtpConfig {
        relay: options.smtp_address(),
        starttls: options.smtp_tls,
        auth: options.smtp_auth.clone(),
        recipients: options.monitor_email.clone(),
        hello: host_name(),
        timeout: SEND_TIMEOUT,
    };
    Smtp::new(&config)
        .map(Some)
        .map_err(|error| error.to_string())
}

/// The status page's listener, bound now so that a busy address stops
/// the program at start.
pub async fn status_listener(
    options: &AdminOptions,
) -> Result<Option<(TcpListener, HttpLimits)>, String> {
    let Some(address) = &options.status else {
        return Ok(None);
    };
    let (listener, bound) = http::bind(address)
        .await
        .map_err(|error| format!("--status {address}: {error}"))?;
    tracing::info!(url = %format!("http://{bound}/"), "status page");
    Ok(Some((listener, HttpLimits::default())))
}

/// The address in `From:`: `$EMAIL`, else `login@host` (NEO/py takes the
/// host's fully qualified name).
fn email_from() -> String {
    if let Some(email) = std::env::var("EMAIL")
        .ok()
        .filter(|email| !email.is_empty())
    {
        return email;
    }
    let login = ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|login| !login.is_empty()))
        .unwrap_or_else(|| "neo".to_owned());
    format!("{login}@{}", host_name())
}

fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

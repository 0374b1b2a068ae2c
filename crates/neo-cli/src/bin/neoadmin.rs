//! `neoadmin`: an admin node (operations.md §1.3).

use std::process::ExitCode;

use neo_admin::{AdminConfig, AdminMetrics};
use neo_cli::daemon::{fail, load_tls, serve, serve_metrics, shutdown_signal};
use neo_cli::options::{parse_admin, report_and_exit};
use neo_net::Listener;

const PROGRAM: &str = "neoadmin";

fn main() -> ExitCode {
    let options = parse_admin(std::env::args_os().skip(1))
        .unwrap_or_else(|error| report_and_exit(PROGRAM, &error));
    let tls = match load_tls(options.common.tls.as_ref()) {
        Ok(tls) => tls,
        Err(message) => return fail(PROGRAM, message),
    };
    if !options.monitor_email.is_empty() {
        return fail(PROGRAM, "e-mail monitoring is not supported yet");
    }
    let logfile = options.common.logfile.clone();
    serve(PROGRAM, logfile.as_deref(), async move {
        let listener = Listener::bind(&options.common.bind)
            .await
            .map_err(|e| e.to_string())?
            .with_tls(tls);
        let config = AdminConfig {
            cluster: options.common.cluster.clone(),
            masters: options.common.all_masters(),
            nid: options.common.nid,
            bind: listener.local_address().clone(),
            monitor_backup: options.monitor_backup.clone(),
        };
        let metrics = serve_metrics(options.common.metrics.as_ref(), AdminMetrics::new).await?;
        tracing::info!(address = %config.bind, tls = listener.tls().is_some(), "admin listening");
        neo_admin::run(config, listener, metrics, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

//! `neoadmin`: an admin node (operations.md §1.3).

use std::process::ExitCode;

use neo_admin::{AdminConfig, AdminMetrics, Services};
use neo_cli::daemon::{fail, listen, load_tls, serve, serve_metrics, shutdown_signal, LogSetup};
use neo_cli::monitoring;
use neo_cli::options::{parse_admin, report_and_exit};

const PROGRAM: &str = "neoadmin";

fn main() -> ExitCode {
    let options = parse_admin(std::env::args_os().skip(1))
        .unwrap_or_else(|error| report_and_exit(PROGRAM, &error));
    let tls = match load_tls(options.common.tls.as_ref()) {
        Ok(tls) => tls,
        Err(message) => return fail(PROGRAM, message),
    };
    let monitor = monitoring::monitor_config(&options);
    let smtp = match monitoring::smtp(&options) {
        Ok(smtp) => smtp,
        Err(message) => return fail(PROGRAM, message),
    };
    serve(PROGRAM, LogSetup::of(&options.common), async move {
        let listener = listen(&options.common, tls).await?;
        let config = AdminConfig {
            cluster: options.common.cluster.clone(),
            masters: options.common.all_masters(),
            nid: options.common.nid,
            bind: listener.local_address().clone(),
            monitor_backup: options.monitor_backup.clone(),
            monitor,
        };
        let services = Services {
            smtp,
            status: monitoring::status_listener(&options).await?,
            metrics: serve_metrics(options.common.metrics.as_ref(), AdminMetrics::new).await?,
        };
        tracing::info!(address = %config.bind, tls = listener.tls().is_some(), "admin listening");
        neo_admin::run_with(config, listener, services, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

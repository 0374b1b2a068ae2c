//! `neomaster`: a master node (operations.md §1.1).

use std::process::ExitCode;

use neo_cli::daemon::{fail, serve, shutdown_signal};
use neo_cli::options::{parse_master, report_and_exit};
use neo_master::MasterConfig;
use neo_net::Listener;

const PROGRAM: &str = "neomaster";

fn main() -> ExitCode {
    let options = parse_master(std::env::args_os().skip(1))
        .unwrap_or_else(|error| report_and_exit(PROGRAM, &error));
    if options.common.tls.is_some() {
        return fail(PROGRAM, "TLS is not supported yet");
    }
    if options.upstream_cluster.is_some() || options.backup {
        return fail(PROGRAM, "backup mode is not supported yet");
    }
    let logfile = options.common.logfile.clone();
    serve(PROGRAM, logfile.as_deref(), async move {
        let listener = Listener::bind(&options.common.bind)
            .await
            .map_err(|e| e.to_string())?;
        let config = MasterConfig {
            cluster: options.common.cluster.clone(),
            address: listener.local_address().clone(),
            partitions: options.partitions,
            replicas: options.replicas,
            autostart: options.autostart,
        };
        tracing::info!(address = %config.address, cluster = %config.cluster, "master listening");
        neo_master::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

//! `neomaster`: a master node (operations.md §1.1).

use std::process::ExitCode;

use neo_cli::daemon::{fail, listen, load_tls, serve, serve_metrics, shutdown_signal, LogSetup};
use neo_cli::options::{parse_master, report_and_exit};
use neo_master::{MasterConfig, MasterMetrics};
use neo_net::resolve;
use neo_proto::Address;

const PROGRAM: &str = "neomaster";

fn main() -> ExitCode {
    let options = parse_master(std::env::args_os().skip(1))
        .unwrap_or_else(|error| report_and_exit(PROGRAM, &error));
    let tls = match load_tls(options.common.tls.as_ref()) {
        Ok(tls) => tls,
        Err(message) => return fail(PROGRAM, message),
    };
    if options.upstream_cluster.is_some() || options.backup {
        return fail(PROGRAM, "backup mode is not supported yet");
    }
    serve(PROGRAM, LogSetup::of(&options.common), async move {
        let listener = listen(&options.common, tls).await?;
        let own = [
            listener.local_address().clone(),
            options.common.bind.clone(),
        ];
        let masters = other_masters(&options.common.all_masters(), &own).await;
        let config = MasterConfig {
            cluster: options.common.cluster.clone(),
            address: listener.local_address().clone(),
            partitions: options.partitions,
            replicas: options.replicas,
            autostart: options.autostart,
            masters,
            nid: options.common.nid,
        };
        let metrics = serve_metrics(options.common.metrics.as_ref(), MasterMetrics::new).await?;
        tracing::info!(address = %config.address, cluster = %config.cluster, tls = listener.tls().is_some(), "master listening");
        neo_master::run(config, listener, metrics, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// The masters of `masters` that are not this one (listening on `own`),
/// comparing resolved addresses so `localhost:10000` is `127.0.0.1:10000`.
async fn other_masters(masters: &[Address], own: &[Address]) -> Vec<Address> {
    let mut own_resolved = Vec::new();
    for address in own {
        own_resolved.push(resolve(address).await.ok());
    }
    let mut others = Vec::new();
    for master in masters {
        let resolved = resolve(master).await.ok();
        let is_own =
            own.contains(master) || (resolved.is_some() && own_resolved.contains(&resolved));
        if !is_own {
            others.push(master.clone());
        }
    }
    others
}

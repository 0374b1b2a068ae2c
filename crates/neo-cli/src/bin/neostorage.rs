//! `neostorage`: a storage node (operations.md §1.2).

use std::process::ExitCode;
use std::time::Duration;

use neo_cli::daemon::{fail, listen, load_tls, serve, serve_metrics, shutdown_signal, LogSetup};
use neo_cli::options::{parse_storage, report_and_exit};
use neo_storage::backend::OpenOptions;
use neo_storage::importer::open_database;
use neo_storage::node::{Limits, Storage, StorageConfig};
use neo_storage::StorageMetrics;

const PROGRAM: &str = "neostorage";

fn main() -> ExitCode {
    let options = parse_storage(std::env::args_os().skip(1))
        .unwrap_or_else(|error| report_and_exit(PROGRAM, &error));
    let tls = match load_tls(options.common.tls.as_ref()) {
        Ok(tls) => tls,
        Err(message) => return fail(PROGRAM, message),
    };
    if options.new_nid || options.dedup {
        return fail(PROGRAM, "--new-nid and --dedup are not supported yet");
    }
    let open = OpenOptions {
        reset: options.reset,
        engine: options.engine.clone(),
        // NEO/py: a negative wait is forever (and so is NaN).
        wait: if options.wait >= 0.0 {
            Duration::try_from_secs_f64(options.wait).ok()
        } else {
            None
        },
        ..OpenOptions::default()
    };
    serve(PROGRAM, LogSetup::of(&options.common), async move {
        let mut db =
            open_database(options.adapter, &options.database, &open).map_err(|e| e.to_string())?;
        if options.reset {
            // `--reset` erases the database and exits, as NEO/py does.
            return Ok(());
        }
        if let Some(nid) = options.common.nid {
            // As NEO/py: an id the database already has takes precedence.
            if db.nid().map_err(|e| e.to_string())?.is_none() {
                db.set_nid(nid).map_err(|e| e.to_string())?;
                db.commit().map_err(|e| e.to_string())?;
            }
        }
        let listener = listen(&options.common, tls).await?;
        let config = StorageConfig {
            cluster: options.common.cluster.clone(),
            address: listener.local_address().clone(),
            masters: options.common.all_masters(),
            limits: Limits::default(),
            devpath: db.topology_path(),
        };
        let mut storage = Storage::new(config, db)?;
        storage.set_disable_pack(options.disable_pack);
        storage.set_disable_drop_partitions(options.disable_drop_partitions);
        let metrics = serve_metrics(options.common.metrics.as_ref(), StorageMetrics::new).await?;
        if let Some(metrics) = metrics {
            storage.set_metrics(metrics);
        }
        tracing::info!(address = %listener.local_address(), tls = listener.tls().is_some(), "storage listening");
        neo_storage::run(storage, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

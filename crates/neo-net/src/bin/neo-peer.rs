//! `neo-peer`: checks that a NEO node answers on an address (`ping`), or
//! plays a minimal NEO peer that only answers `Ping` (`serve`).

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use neo_net::shell::MAX_CONNECTIONS;
use neo_net::{
    connect_alone, ConnectionConfig, Input, Listener, Node, Outbox, Output, ShellConfig,
};
use neo_proto::packets::{Error, Ping, Pong};
use neo_proto::{Address, ErrorCode, Packet, UnixTime};

#[derive(Parser)]
#[command(version, about = "Talk NEO protocol 5 to a node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect, complete the handshake and time Ping/Pong exchanges.
    Ping {
        /// `host:port` or `[v6]:port` of any NEO node.
        address: String,
        /// Number of exchanges.
        #[arg(short, long, default_value_t = 1)]
        count: u32,
    },
    /// Listen and answer Ping with Pong; anything else is refused with
    /// PROTOCOL_ERROR and the connection closed, as NEO/py does.
    Serve {
        /// Address to listen on; port 0 or none picks a free port.
        #[arg(short, long, default_value = "127.0.0.1:0")]
        bind: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ping { address, count } => ping(&address, count).await,
        Command::Serve { bind } => serve(&bind).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("neo-peer: error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn ping(address: &str, count: u32) -> Result<(), String> {
    let address = Address::parse(address, 0).map_err(|e| e.to_string())?;
    let config = ConnectionConfig::default();
    let (connection, _inbox) = connect_alone(&address, &config)
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..count {
        let start = Instant::now();
        let Pong {} = connection.ask(Ping {}).await.map_err(|e| e.to_string())?;
        let elapsed_us = start.elapsed().as_micros();
        println!("Pong from {} in {elapsed_us} µs", connection.peer());
    }
    connection.close().await;
    Ok(())
}

async fn serve(bind: &str) -> Result<(), String> {
    let address = Address::parse(bind, 0).map_err(|e| e.to_string())?;
    let listener = Listener::bind(&address).await.map_err(|e| e.to_string())?;
    // Tests and scripts read the chosen port from this line.
    println!("listening on {}", listener.local_address());
    let mut node = PingNode::default();
    let config = ShellConfig {
        max_connections: max_connections()?,
        ..ShellConfig::default()
    };
    neo_net::shell::run(&mut node, Some(listener), config, std::future::pending())
        .await
        .map_err(|e| e.to_string())
}

/// `NEO_PEER_MAX_CONNECTIONS`: the listener's limit, so tests can reach it.
fn max_connections() -> Result<usize, String> {
    match std::env::var("NEO_PEER_MAX_CONNECTIONS") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("NEO_PEER_MAX_CONNECTIONS={value:?} is not a number")),
        Err(_) => Ok(MAX_CONNECTIONS),
    }
}

/// The smallest node: answers `Ping`, refuses everything else.
#[derive(Default)]
struct PingNode {
    out: Outbox,
}

impl Node for PingNode {
    fn handle(&mut self, input: Input, _now: UnixTime) {
        if let Input::Packet {
            conn,
            msg_id,
            packet,
        } = input
        {
            if let Packet::Ping(_) = packet {
                self.out.answer(conn, msg_id, Pong {});
            } else {
                let message = format!("unexpected packet {}", packet.name());
                self.out
                    .answer(conn, msg_id, Error::new(ErrorCode::ProtocolError, message));
                self.out.close(conn);
            }
        }
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        None
    }
}

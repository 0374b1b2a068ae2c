//! `neo-peer`: checks that a NEO node answers on an address (`ping`), or
//! plays a minimal NEO peer that only answers `Ping` (`serve`).

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use neo_net::{connect_alone, ConnectionConfig, EventKind, Listener};
use neo_proto::packets::{Error, Ping, Pong};
use neo_proto::{Address, ErrorCode, Packet};

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
    loop {
        let accepted = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let config = ConnectionConfig::default();
            let (connection, mut inbox) = match accepted.open(&config).await {
                Ok(opened) => opened,
                Err(error) => {
                    eprintln!("neo-peer: {error}");
                    return;
                }
            };
            while let Some(event) = inbox.recv().await {
                let frame = match event.kind {
                    EventKind::Packet(frame) => frame,
                    EventKind::Closed(Some(error)) => {
                        eprintln!("neo-peer: {error}");
                        break;
                    }
                    EventKind::Closed(None) => break,
                    // This peer sends no requests of its own.
                    EventKind::Answer { .. } | EventKind::Unanswered { .. } => continue,
                };
                if let Packet::Ping(_) = frame.packet {
                    let _ = connection.answer(frame.msg_id, Pong {}).await;
                } else {
                    let message = format!("unexpected packet {}", frame.packet.name());
                    let error = Error::new(ErrorCode::ProtocolError, message);
                    let _ = connection.answer(frame.msg_id, error).await;
                    connection.close().await;
                }
            }
        });
    }
}

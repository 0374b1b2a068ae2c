//! TCP endpoints with NEO's socket options and address syntax, and TLS on
//! them when the node has credentials.

use std::net::SocketAddr;
use std::time::Duration;

use neo_proto::Address;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::connection::{
    events_channel, Announce, Connection, ConnectionConfig, Event, Inbox, Side,
};
use crate::error::NetError;
use crate::node::ConnId;
use crate::tls::Tls;

/// Resolves a NEO address to a socket address: IP literals directly, host
/// names with the system resolver (first answer wins, as in NEO/py).
pub async fn resolve(address: &Address) -> Result<SocketAddr, NetError> {
    if let Ok(ip) = address.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, address.port));
    }
    let mut found = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await
        .map_err(|source| NetError::Resolve {
            address: address.clone(),
            source,
        })?;
    found.next().ok_or_else(|| NetError::Resolve {
        address: address.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"),
    })
}

/// The socket options NEO/py sets: no Nagle delay, and keepalive probes
/// after 60 s idle, every 10 s, 3 times: NEO has no heartbeat of its own.
fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Lets the kernel give the connection up when the peer's kernel has
/// acknowledged nothing for `liveness` (a host cut off, packets silently
/// dropped): the probes of the liveness watchdog then end in an error
/// instead of waiting for retransmissions to give up after minutes.
fn give_up_unacknowledged(stream: &TcpStream, config: &ConnectionConfig) -> std::io::Result<()> {
    SockRef::from(stream).set_tcp_user_timeout(config.liveness)
}

async fn connect_tcp(address: &Address) -> Result<(TcpStream, String), NetError> {
    let socket_address = resolve(address).await?;
    let peer = Address::from(socket_address).to_string();
    let stream = TcpStream::connect(socket_address)
        .await
        .map_err(|e| NetError::io(&peer, e))?;
    configure(&stream).map_err(|e| NetError::io(&peer, e))?;
    Ok((stream, peer))
}

/// Connects to a NEO node and runs the handshake; events go to `events`
/// (without [`crate::EventKind::Opened`]: the caller gets the connection).
pub async fn connect(
    address: &Address,
    events: mpsc::Sender<Event>,
    config: &ConnectionConfig,
) -> Result<Connection, NetError> {
    connect_announced(address, events, config, Announce::Silent).await
}

/// [`connect`], announcing the connection on `events` as `announce` says.
pub(crate) async fn connect_announced(
    address: &Address,
    events: mpsc::Sender<Event>,
    config: &ConnectionConfig,
    announce: Announce,
) -> Result<Connection, NetError> {
    let (stream, peer) = connect_tcp(address).await?;
    establish(stream, Side::Initiator, peer, events, config, announce).await
}

/// Connects to a NEO node, with a channel of the connection's own.
pub async fn connect_alone(
    address: &Address,
    config: &ConnectionConfig,
) -> Result<(Connection, Inbox), NetError> {
    let (stream, peer) = connect_tcp(address).await?;
    open(stream, Side::Initiator, peer, config).await
}

/// Runs TLS, if the node has it, then NEO's handshake; both are bounded
/// by the handshake timeout, so a peer that stalls halfway is dropped.
async fn establish(
    stream: TcpStream,
    side: Side,
    peer: String,
    events: mpsc::Sender<Event>,
    config: &ConnectionConfig,
    announce: Announce,
) -> Result<Connection, NetError> {
    give_up_unacknowledged(&stream, config).map_err(|e| NetError::io(&peer, e))?;
    let id = ConnId::next();
    let Some(tls) = &config.tls else {
        return Connection::establish(stream, side, peer, id, events, config, announce).await;
    };
    let stream = tokio::time::timeout(config.handshake_timeout, secure(tls, stream, side, &peer))
        .await
        .map_err(|_| NetError::HandshakeTimeout {
            peer: peer.clone(),
            seconds: config.handshake_timeout.as_secs(),
        })??;
    Connection::establish(stream, side, peer, id, events, config, announce).await
}

async fn secure(
    tls: &Tls,
    stream: TcpStream,
    side: Side,
    peer: &str,
) -> Result<tokio_rustls::TlsStream<TcpStream>, NetError> {
    match side {
        Side::Initiator => tls.connect(stream, peer).await,
        Side::Acceptor => tls.accept(stream, peer).await,
    }
}

/// [`establish`] with a channel of the connection's own.
async fn open(
    stream: TcpStream,
    side: Side,
    peer: String,
    config: &ConnectionConfig,
) -> Result<(Connection, Inbox), NetError> {
    let (events, inbox) = events_channel(config);
    let connection = establish(stream, side, peer, events, config, Announce::Silent).await?;
    Ok((connection, inbox))
}

/// A listening socket, and the TLS of the node behind it.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    local: Address,
    /// With TLS, every connection of the node is TLS (protocol.md §1.3):
    /// the shell running the node takes it for the connections the node
    /// makes too (see [`crate::shell::run`]).
    tls: Option<Tls>,
}

impl Listener {
    /// Listens on `address`; port 0 picks an ephemeral port.
    pub async fn bind(address: &Address) -> Result<Listener, NetError> {
        let socket_address = resolve(address).await?;
        let listener = TcpListener::bind(socket_address)
            .await
            .map_err(|e| NetError::io(format!("bind {address}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| NetError::io(format!("bind {address}"), e))?;
        Ok(Listener {
            listener,
            local: local.into(),
            tls: None,
        })
    }

    /// The listener of a node with these TLS credentials (or none).
    pub fn with_tls(self, tls: Option<Tls>) -> Listener {
        Listener { tls, ..self }
    }

    /// The node's TLS credentials, if it has some.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Detaches the listening socket from the runtime it was bound in, to
    /// move it to another one ([`Listener::from_std`]); the TLS credentials
    /// stay with the caller ([`Listener::tls`]).
    pub fn into_std(self) -> Result<std::net::TcpListener, NetError> {
        let local = self.local.clone();
        self.listener
            .into_std()
            .map_err(|e| NetError::io(format!("detach listener {local}"), e))
    }

    /// Registers a detached listening socket with the current runtime.
    pub fn from_std(listener: std::net::TcpListener) -> Result<Listener, NetError> {
        let local: Address = listener
            .local_addr()
            .map_err(|e| NetError::io("listener address".to_owned(), e))?
            .into();
        let listener = TcpListener::from_std(listener)
            .map_err(|e| NetError::io(format!("attach listener {local}"), e))?;
        Ok(Listener {
            listener,
            local,
            tls: None,
        })
    }

    /// The address actually bound (with the chosen port).
    pub fn local_address(&self) -> &Address {
        &self.local
    }

    /// Waits for the next incoming TCP connection. The handshake is left to
    /// [`Accepted::establish`], so a slow peer does not hold up the others.
    pub async fn accept(&self) -> Result<Accepted, NetError> {
        let (stream, peer) = self
            .listener
            .accept()
            .await
            .map_err(|e| NetError::io(format!("accept on {}", self.local), e))?;
        let peer = Address::from(peer).to_string();
        configure(&stream).map_err(|e| NetError::io(&peer, e))?;
        Ok(Accepted {
            stream,
            peer,
            tls: self.tls.clone(),
        })
    }
}

/// A TCP connection accepted, before the handshake.
#[derive(Debug)]
pub struct Accepted {
    stream: TcpStream,
    peer: String,
    /// The listener's TLS, used unless the connection config has its own.
    tls: Option<Tls>,
}

impl Accepted {
    /// The remote address.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Runs the handshake (TLS first if the listener or `config` has it);
    /// events go to `events`, announced as `announce` says.
    pub async fn establish(
        self,
        events: mpsc::Sender<Event>,
        config: &ConnectionConfig,
        announce: Announce,
    ) -> Result<Connection, NetError> {
        let config = self.config(config);
        establish(
            self.stream,
            Side::Acceptor,
            self.peer,
            events,
            &config,
            announce,
        )
        .await
    }

    /// Runs the handshake, with a channel of the connection's own.
    pub async fn open(self, config: &ConnectionConfig) -> Result<(Connection, Inbox), NetError> {
        let config = self.config(config);
        open(self.stream, Side::Acceptor, self.peer, &config).await
    }

    fn config(&self, config: &ConnectionConfig) -> ConnectionConfig {
        ConnectionConfig {
            tls: config.tls.clone().or_else(|| self.tls.clone()),
            ..config.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel gives a connection up when the peer's kernel has
    /// acknowledged nothing for the liveness limit.
    #[tokio::test]
    async fn sockets_give_up_unacknowledged_data_after_the_liveness_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let config = ConnectionConfig {
            liveness: Some(Duration::from_millis(700)),
            ..ConnectionConfig::default()
        };
        give_up_unacknowledged(&stream, &config).unwrap();
        assert_eq!(
            SockRef::from(&stream).tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(700))
        );
    }
}

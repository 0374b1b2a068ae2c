//! What a connection runs on: plain TCP, or TLS over TCP (built by
//! [`crate::Tls`], the acceptor telling them apart by the first byte:
//! 0x16 starts a TLS record, 0x92 NEO's magic), so node logic does not
//! change.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A byte stream that can be split into independently owned halves, so the
/// reader and writer tasks never wait on each other.
pub trait Transport: Send + 'static {
    /// The receiving half.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The sending half.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// Splits the stream.
    fn split(self) -> (Self::Reader, Self::Writer);
}

impl Transport for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;
    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

/// TLS: the halves share the TLS session (tokio's split locks it per
/// read or write; plain TCP keeps its lock-free halves).
impl Transport for tokio_rustls::TlsStream<TcpStream> {
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;
    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// In-memory pipes, for tests.
impl Transport for DuplexStream {
    type Reader = ReadHalf<DuplexStream>;
    type Writer = WriteHalf<DuplexStream>;
    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

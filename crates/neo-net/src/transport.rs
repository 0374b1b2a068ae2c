//! What a connection runs on. Plain TCP today; TLS (issue "TLS") will be
//! another `Transport` built by the acceptor after peeking at the first
//! byte (0x16 starts a TLS record, 0x92 NEO's magic), so node logic does not
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

/// In-memory pipes, for tests.
impl Transport for DuplexStream {
    type Reader = ReadHalf<DuplexStream>;
    type Writer = WriteHalf<DuplexStream>;
    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

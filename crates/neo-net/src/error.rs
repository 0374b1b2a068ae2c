use neo_proto::{Address, FrameError, PROTOCOL_VERSION};

/// What went wrong with a connection. Every variant names the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A host name that does not resolve.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// The address as given.
        address: Address,
        /// Why the lookup failed.
        source: std::io::Error,
    },
    /// Socket-level failure (refused, reset, bind in use, ...).
    #[error("{peer}: {source}")]
    Io {
        /// The remote (or local, for bind) address.
        peer: String,
        /// The system error.
        source: std::io::Error,
    },
    /// The peer speaks another protocol version.
    #[error(
        "{peer}: peer speaks NEO protocol version {peer_version}, \
         this node speaks version {PROTOCOL_VERSION}"
    )]
    VersionMismatch {
        /// The remote address.
        peer: String,
        /// Version byte of the peer's magic.
        peer_version: u8,
    },
    /// The peer is not a NEO node (or uses TLS while we do not).
    #[error("{peer}: not a NEO stream (first bytes {first_bytes})")]
    NotNeo {
        /// The remote address.
        peer: String,
        /// Hex of the first bytes received.
        first_bytes: String,
    },
    /// The peer closed the connection before its NEO handshake: not a NEO
    /// node, or one that refuses us (TLS on one side only, among others).
    #[error(
        "{peer}: connection closed before the NEO handshake (is TLS configured on one side only?)"
    )]
    ClosedInHandshake {
        /// The remote address.
        peer: String,
    },
    /// The peer speaks TLS and this node does not.
    #[error("{peer}: the peer uses TLS and this node does not (see --ca, --cert, --key)")]
    PeerUsesTls {
        /// The remote address.
        peer: String,
    },
    /// The peer speaks NEO in clear and this node uses TLS.
    #[error("{peer}: the peer does not use TLS and this node does")]
    PeerWithoutTls {
        /// The remote address.
        peer: String,
    },
    /// The TLS handshake failed: a certificate refused by either end, no
    /// common protocol version or cipher, ...
    #[error("{peer}: TLS handshake failed: {reason}")]
    Tls {
        /// The remote address.
        peer: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The peer did not send the magic in time.
    #[error("{peer}: no handshake within {seconds} s")]
    HandshakeTimeout {
        /// The remote address.
        peer: String,
        /// The time allowed.
        seconds: u64,
    },
    /// The peer sent bytes that are not a valid packet.
    #[error("{peer}: {error}")]
    Protocol {
        /// The remote address.
        peer: String,
        /// What was wrong.
        error: FrameError,
    },
    /// The peer answered a request with the wrong packet, or answered
    /// nothing we asked.
    #[error("{peer}: unexpected answer {answer} to msg_id {msg_id}{expected}")]
    UnexpectedAnswer {
        /// The remote address.
        peer: String,
        /// msg_id of the answer.
        msg_id: u32,
        /// Name of the packet received.
        answer: &'static str,
        /// `", expected X"` when a request was pending.
        expected: String,
    },
    /// The peer sent nothing, not even an answer to a ping, for too long
    /// while we waited for an answer: dead or cut off.
    #[error("{peer}: silent for {seconds:.1} s while an answer was awaited")]
    Silent {
        /// The remote address.
        peer: String,
        /// How long it was silent.
        seconds: f64,
    },
    /// The connection closed before the answer came.
    #[error("{peer}: connection closed")]
    Closed {
        /// The remote address.
        peer: String,
    },
}

impl NetError {
    /// Whether this is about TLS: a peer with TLS on one side only, or a
    /// handshake that failed. These are configuration errors an operator
    /// must see, unlike peers that come and go.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            NetError::PeerUsesTls { .. } | NetError::PeerWithoutTls { .. } | NetError::Tls { .. }
        )
    }

    pub(crate) fn io(peer: impl ToString, source: std::io::Error) -> NetError {
        NetError::Io {
            peer: peer.to_string(),
            source,
        }
    }

    /// The error from decoding the peer's stream.
    pub(crate) fn from_frame(peer: &str, error: FrameError) -> NetError {
        let peer = peer.to_owned();
        match error {
            FrameError::VersionMismatch { peer: peer_version } => {
                NetError::VersionMismatch { peer, peer_version }
            }
            FrameError::NotNeo { first_bytes } => NetError::NotNeo { peer, first_bytes },
            error => NetError::Protocol { peer, error },
        }
    }
}

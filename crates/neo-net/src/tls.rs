//! TLS as NEO uses it (protocol.md §1.3, operations.md §8): one set of
//! credentials per node (a CA file, which may also hold CRLs, the node's
//! certificate and its key), mutual authentication against the CA, no host
//! name check, TLS 1.2 (all NEO/py speaks) and 1.3 where both ends have it.
//! TLS wraps the TCP stream from its first byte; NEO's handshake runs
//! inside it. Credentials are checked when loaded, as NEO/py checks them
//! at start-up, so a node never starts with a certificate it cannot use.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::error::NetError;

/// The first byte of a TLS handshake record (a ClientHello).
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;

/// The first byte of a TLS alert record.
pub(crate) const TLS_ALERT: u8 = 0x15;

/// What a node with TLS sends a peer that speaks NEO in clear: a fatal
/// `unexpected_message` alert, so that a NEO node without TLS reads a TLS
/// record where it expects NEO's magic and can say what is wrong.
const ALERT_UNEXPECTED_MESSAGE: [u8; 7] = [TLS_ALERT, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// How long, and how many bytes, a refused peer is read after the alert:
/// closing with its bytes unread would reset the connection and could
/// destroy the alert before the peer reads it.
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);
const REFUSAL_DRAIN_BYTES: usize = 64 << 10;

/// Why TLS credentials cannot be used. Names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file that cannot be read.
    #[error("TLS {option} file {}: {source}", path.display())]
    Read {
        /// `ca`, `cert` or `key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file whose content cannot be used.
    #[error("TLS {option} file {}: {reason}", path.display())]
    Invalid {
        /// `ca`, `cert` or `key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl TlsError {
    fn invalid(option: &'static str, path: &Path, reason: impl ToString) -> TlsError {
        TlsError::Invalid {
            option,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A node's TLS: the client and server sides built from one set of
/// credentials. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// What the CA file holds.
struct Authority {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Tls {
    /// Loads and checks the credentials: the CA file (certificates and
    /// CRLs), the node's certificate (and the chain behind it) and its
    /// private key. Refused: a file missing or unreadable, a key that does
    /// not match the certificate, a certificate expired, not yet valid,
    /// not issued by a CA of the CA file, or revoked by one of its CRLs.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let authority = read_authority(ca)?;
        let chain = read_chain(cert)?;
        let private_key = read_key(key)?;
        let client_verifier = client_verifier(&authority, &provider)
            .map_err(|error| TlsError::invalid("ca", ca, error))?;
        let server_verifier = Arc::new(PeerVerifier {
            inner: server_verifier(&authority, &provider)
                .map_err(|error| TlsError::invalid("ca", ca, error))?,
        });
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        // Building the server side checks that the key is the
        // certificate's.
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|error| TlsError::invalid("ca", ca, error))?
            .with_client_cert_verifier(client_verifier.clone())
            .with_single_cert(chain.clone(), private_key.clone_key())
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::invalid(
                    "key",
                    key,
                    format!("not the key of the certificate in {}", cert.display()),
                ),
                other => TlsError::invalid("key", key, other),
            })?;
        // As NEO/py: the acceptor's cipher preference wins.
        server.ignore_client_order = true;
        check_own_certificate(&chain, client_verifier.as_ref(), &server_verifier)
            .map_err(|reason| TlsError::invalid("cert", cert, reason))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|error| TlsError::invalid("ca", ca, error))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, private_key)
            .map_err(|error| TlsError::invalid("key", key, error))?;
        Ok(Tls {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// Runs the TLS handshake as the initiator (the TLS client).
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        peer: &str,
    ) -> Result<TlsStream<TcpStream>, NetError> {
        let ip = stream.peer_addr().map_err(|e| NetError::io(peer, e))?.ip();
        // An IP address as the name: no SNI is sent (NEO/py sends none)
        // and names are not checked anyway.
        let name = ServerName::IpAddress(ip.into());
        match TlsConnector::from(self.client.clone())
            .connect(name, stream)
            .await
        {
            Ok(stream) => Ok(stream.into()),
            Err(error) => Err(handshake_error(peer, error)),
        }
    }

    /// Runs the TLS handshake as the acceptor. A peer whose first byte is
    /// not a TLS handshake record speaks NEO in clear: it is told so with
    /// a TLS alert and refused.
    pub(crate) async fn accept(
        &self,
        mut stream: TcpStream,
        peer: &str,
    ) -> Result<TlsStream<TcpStream>, NetError> {
        let mut first = [0u8; 1];
        let peeked = stream
            .peek(&mut first)
            .await
            .map_err(|e| NetError::io(peer, e))?;
        if peeked == 0 {
            return Err(NetError::Closed {
                peer: peer.to_owned(),
            });
        }
        if first[0] != TLS_HANDSHAKE {
            refuse_clear_text(&mut stream).await;
            return Err(NetError::PeerWithoutTls {
                peer: peer.to_owned(),
            });
        }
        match TlsAcceptor::from(self.server.clone()).accept(stream).await {
            Ok(stream) => Ok(stream.into()),
            Err(error) => Err(handshake_error(peer, error)),
        }
    }
}

/// Tells a peer speaking NEO in clear that this node speaks TLS, then
/// closes once it has read that (bounded in time and bytes).
async fn refuse_clear_text(stream: &mut TcpStream) {
    let _ = stream.write_all(&ALERT_UNEXPECTED_MESSAGE).await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = REFUSAL_DRAIN_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN, drain).await;
}

/// The error of a failed TLS handshake, saying what it means for NEO; a
/// plain I/O error for anything else.
pub(crate) fn handshake_error(peer: &str, error: std::io::Error) -> NetError {
    let peer = peer.to_owned();
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => NetError::Tls {
                peer,
                reason: "the peer closed the connection during the handshake".into(),
            },
            _ => NetError::Io {
                peer,
                source: error,
            },
        };
    };
    let reason = match tls {
        // NEO's magic (0x92) where a TLS record was expected.
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            return NetError::PeerWithoutTls { peer }
        }
        rustls::Error::InvalidCertificate(error) => {
            format!("the peer's certificate is refused: {}", describe(error))
        }
        rustls::Error::NoCertificatesPresented => "the peer presented no certificate".into(),
        rustls::Error::AlertReceived(alert) => {
            format!("the peer refused the connection (TLS alert {alert:?}): does it trust our CA and certificate?")
        }
        other => other.to_string(),
    };
    NetError::Tls { peer, reason }
}

/// A certificate error in words.
fn describe(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "not issued by a trusted CA".into(),
        CertificateError::Revoked => "revoked by a CRL of the CA file".into(),
        CertificateError::Expired => "expired".into(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired {} days ago",
            time.as_secs().saturating_sub(not_after.as_secs()) / 86400
        ),
        CertificateError::NotValidYet => "not valid yet".into(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "not valid for {} more days",
            not_before
                .as_secs()
                .saturating_sub(time.as_secs())
                .div_ceil(86400)
        ),
        CertificateError::UnknownRevocationStatus => {
            "the CA file has CRLs but none from this certificate's issuer".into()
        }
        other => other.to_string(),
    }
}

/// Reads a PEM file whole, naming it on failure.
fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        option,
        path: path.to_owned(),
        source,
    })
}

/// The PEM sections of a file, in order.
fn sections(option: &'static str, path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let bytes = read(option, path)?;
    let mut reader = bytes.as_slice();
    let mut found = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some(section)) => found.push(section),
            Ok(None) => return Ok(found),
            Err(error) => return Err(TlsError::invalid(option, path, format!("{error:?}"))),
        }
    }
}

/// The CA certificates and CRLs of the CA file.
fn read_authority(path: &Path) -> Result<Authority, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut crls = Vec::new();
    for (kind, der) in sections("ca", path)? {
        match kind {
            SectionKind::Certificate => roots
                .add(CertificateDer::from(der))
                .map_err(|error| TlsError::invalid("ca", path, error))?,
            SectionKind::Crl => crls.push(CertificateRevocationListDer::from(der)),
            _ => {}
        }
    }
    if roots.is_empty() {
        return Err(TlsError::invalid("ca", path, "no CA certificate in it"));
    }
    Ok(Authority {
        roots: Arc::new(roots),
        crls,
    })
}

/// The node's certificate, then the intermediate certificates behind it.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<_> = sections("cert", path)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if chain.is_empty() {
        return Err(TlsError::invalid("cert", path, "no certificate in it"));
    }
    Ok(chain)
}

/// The first private key of the key file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    sections("key", path)?
        .into_iter()
        .find_map(|(kind, der)| match kind {
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
            _ => None,
        })
        .ok_or_else(|| TlsError::invalid("key", path, "no private key in it"))
}

/// What checks a peer's certificate: the CA file's certificates, and its
/// CRLs if any (for the peer's own certificate, as NEO/py's OpenSSL
/// `VERIFY_CRL_CHECK_LEAF`; a CRL past its next update fails, as there).
fn client_verifier(
    authority: &Authority,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiClientVerifier::builder_with_provider(authority.roots.clone(), provider.clone())
        .with_crls(authority.crls.iter().cloned())
        .only_check_end_entity_revocation()
        .enforce_revocation_expiration()
        .build()
}

fn server_verifier(
    authority: &Authority,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(authority.roots.clone(), provider.clone())
        .with_crls(authority.crls.iter().cloned())
        .only_check_end_entity_revocation()
        .enforce_revocation_expiration()
        .build()
}

/// The initiator's check of the acceptor's certificate: WebPKI's, less
/// the host name, which NEO does not check (nodes are known by address,
/// and NEO/py's certificates name no host).
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, once the chain and revocation passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            result => result,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks the node's own certificate as its peers will, in both roles (a
/// node accepts and initiates): what NEO/py's start-up handshake with
/// itself checks.
fn check_own_certificate(
    chain: &[CertificateDer<'static>],
    as_client: &dyn ClientCertVerifier,
    as_server: &PeerVerifier,
) -> Result<(), String> {
    let (end_entity, intermediates) = chain.split_first().ok_or("no certificate")?;
    let now = UnixTime::now();
    let refused = |error: rustls::Error| match error {
        rustls::Error::InvalidCertificate(error) => describe(&error),
        other => other.to_string(),
    };
    as_client
        .verify_client_cert(end_entity, intermediates, now)
        .map_err(refused)?;
    let any_name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    as_server
        .verify_server_cert(end_entity, intermediates, &any_name, &[], now)
        .map_err(refused)?;
    Ok(())
}

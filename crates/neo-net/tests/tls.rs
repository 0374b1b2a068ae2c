//! TLS between NEO nodes on loopback, with certificates made by the test:
//! mutual authentication, refusals (another CA, a revoked certificate), a
//! peer with TLS on one side only, TLS 1.2 as NEO/py speaks it, and the
//! checks made when credentials are loaded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use neo_net::test_pki::{Credentials, TestPki};
use neo_net::{connect_alone, ConnectionConfig, EventKind, Listener, NetError, Tls};
use neo_proto::packets::{Ping, Pong};
use neo_proto::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path()).unwrap();
    (dir, pki)
}

fn with_tls(tls: Option<Tls>) -> ConnectionConfig {
    ConnectionConfig {
        tls,
        ..ConnectionConfig::default()
    }
}

/// A listener with `tls` whose first accepted connection answers Pings
/// until closed; gives the listener's address and the outcome of that
/// first handshake.
async fn serve_one(tls: Option<Tls>) -> (Address, tokio::task::JoinHandle<Result<(), NetError>>) {
    let listener = Listener::bind(&Address::new("127.0.0.1", 0))
        .await
        .unwrap()
        .with_tls(tls);
    let address = listener.local_address().clone();
    let server = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        let (connection, mut inbox) = accepted.open(&ConnectionConfig::default()).await?;
        while let Some(event) = inbox.recv().await {
            if let EventKind::Packet(frame) = event.kind {
                connection.answer(frame.msg_id, Pong {}).await.unwrap();
            }
        }
        Ok(())
    });
    (address, server)
}

#[tokio::test]
async fn nodes_of_one_ca_talk_over_tls() {
    let (_dir, pki) = pki();
    let tls = pki.node.load().unwrap();
    let (address, server) = serve_one(Some(tls.clone())).await;
    let (client, _inbox) = connect_alone(&address, &with_tls(Some(tls))).await.unwrap();
    for _ in 0..3 {
        client.ask(Ping {}).await.unwrap();
    }
    client.close().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_node_of_another_ca_is_refused_on_both_sides() {
    let (_dir, pki) = pki();
    let (address, server) = serve_one(Some(pki.node.load().unwrap())).await;
    let foreign = with_tls(Some(pki.foreign.load().unwrap()));
    let client = connect_alone(&address, &foreign).await.unwrap_err();
    let server = server.await.unwrap().unwrap_err();
    // The initiator checks the acceptor's certificate first.
    assert!(
        client.to_string().contains("TLS handshake failed")
            && client.to_string().contains("not issued by a trusted CA"),
        "{client}"
    );
    assert!(
        server.to_string().contains("TLS handshake failed"),
        "{server}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_acceptor() {
    let (dir, pki) = pki();
    let (address, server) = serve_one(Some(pki.node.load().unwrap())).await;
    // Trusts the cluster's CA (without its CRL, which would need one from
    // the other CA too), but its own certificate is the other CA's.
    let both = dir.path().join("both.crt");
    let cas = [&pki.revoked.ca, &pki.foreign.ca].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&both, cas.concat()).unwrap();
    let intruder = Credentials {
        ca: both,
        ..pki.foreign.clone()
    };
    let intruder = with_tls(Some(intruder.load().unwrap()));
    let refused = match connect_alone(&address, &intruder).await {
        // With TLS 1.3 the client may finish before the acceptor's verdict.
        Ok((connection, _inbox)) => connection.ask(Ping {}).await.unwrap_err().to_string(),
        Err(error) => error.to_string(),
    };
    let server = server.await.unwrap().unwrap_err();
    assert!(
        server
            .to_string()
            .contains("the peer's certificate is refused: not issued by a trusted CA"),
        "{server}"
    );
    assert!(!refused.is_empty());
}

#[tokio::test]
async fn a_ca_file_may_hold_several_cas() {
    let (dir, pki) = pki();
    let both = dir.path().join("both.crt");
    let cas = [&pki.revoked.ca, &pki.foreign.ca].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&both, cas.concat()).unwrap();
    let trusting_both = |credentials: &Credentials| {
        let credentials = Credentials {
            ca: both.clone(),
            ..credentials.clone()
        };
        credentials.load().unwrap()
    };
    let (address, server) = serve_one(Some(trusting_both(&pki.node))).await;
    let other = with_tls(Some(trusting_both(&pki.foreign)));
    let (client, _inbox) = connect_alone(&address, &other).await.unwrap();
    client.ask(Ping {}).await.unwrap();
    client.close().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() {
    let (_dir, pki) = pki();
    let (address, server) = serve_one(Some(pki.node.load().unwrap())).await;
    // The revoked node's own CA file predates the CRL, so it starts.
    let revoked = with_tls(Some(pki.revoked.load().unwrap()));
    if let Ok((connection, _inbox)) = connect_alone(&address, &revoked).await {
        connection.ask(Ping {}).await.unwrap_err();
    }
    let server = server.await.unwrap().unwrap_err();
    assert!(
        server
            .to_string()
            .contains("the peer's certificate is refused: revoked by a CRL of the CA file"),
        "{server}"
    );
}

#[tokio::test]
async fn a_plain_node_and_a_tls_node_each_say_what_is_wrong() {
    let (_dir, pki) = pki();
    let tls = pki.node.load().unwrap();

    // Plain initiator, TLS acceptor.
    let (address, server) = serve_one(Some(tls.clone())).await;
    let client = connect_alone(&address, &with_tls(None)).await.unwrap_err();
    let server = server.await.unwrap().unwrap_err();
    assert!(matches!(client, NetError::PeerUsesTls { .. }), "{client}");
    assert!(
        matches!(server, NetError::PeerWithoutTls { .. }),
        "{server}"
    );
    assert!(client
        .to_string()
        .ends_with("the peer uses TLS and this node does not (see --ca, --cert, --key)"));

    // TLS initiator, plain acceptor.
    let (address, server) = serve_one(None).await;
    let client = connect_alone(&address, &with_tls(Some(tls)))
        .await
        .unwrap_err();
    let server = server.await.unwrap().unwrap_err();
    assert!(
        matches!(client, NetError::PeerWithoutTls { .. }),
        "{client}"
    );
    assert!(matches!(server, NetError::PeerUsesTls { .. }), "{server}");
    assert!(client
        .to_string()
        .ends_with("the peer does not use TLS and this node does"));
    assert!(server
        .to_string()
        .ends_with("the peer uses TLS and this node does not (see --ca, --cert, --key)"));
}

/// What NEO/py's TLS client is: TLS 1.2 only, with its certificate.
fn tls12_only_client(credentials: &Credentials) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read(&credentials.ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = ca.as_slice();
    while let Some((kind, der)) = rustls::pki_types::pem::from_buf(&mut reader).unwrap() {
        if kind == rustls::pki_types::pem::SectionKind::Certificate {
            roots.add(der.into()).unwrap();
        }
    }
    let cert = rustls::pki_types::CertificateDer::from(
        rustls::pki_types::pem::from_buf(&mut std::fs::read(&credentials.cert).unwrap().as_slice())
            .unwrap()
            .unwrap()
            .1,
    );
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::pem::from_buf(&mut std::fs::read(&credentials.key).unwrap().as_slice())
            .unwrap()
            .unwrap()
            .1
            .into(),
    );
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    Arc::new(config)
}

#[tokio::test]
async fn a_tls_1_2_peer_is_served_as_neo_py_needs() {
    let (_dir, pki) = pki();
    let (address, server) = serve_one(Some(pki.node.load().unwrap())).await;
    let connector = tokio_rustls::TlsConnector::from(tls12_only_client(&pki.node));
    let tcp = tokio::net::TcpStream::connect((address.host.as_str(), address.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("node").unwrap();
    // Our nodes never check it, but this stock verifier does.
    let mut stream = match connector.connect(name, tcp).await {
        Ok(stream) => stream,
        Err(error) => panic!("TLS 1.2 handshake: {error}"),
    };
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    stream.write_all(&neo_proto::MAGIC).await.unwrap();
    let mut magic = [0u8; 6];
    stream.read_exact(&mut magic).await.unwrap();
    assert_eq!(magic, neo_proto::MAGIC);
    drop(stream);
    server.await.unwrap().unwrap();
}

fn load_error(ca: &Path, cert: &Path, key: &Path) -> String {
    Tls::load(ca, cert, key).unwrap_err().to_string()
}

#[test]
fn credentials_are_checked_when_loaded() {
    let (dir, pki) = pki();
    let node = &pki.node;
    let missing = dir.path().join("missing.crt");
    let error = load_error(&node.ca, &missing, &node.key);
    assert!(
        error.starts_with(&format!("TLS cert file {}: ", missing.display())),
        "{error}"
    );
    assert_eq!(
        load_error(&node.ca, &node.cert, &pki.revoked.key),
        format!(
            "TLS key file {}: not the key of the certificate in {}",
            pki.revoked.key.display(),
            node.cert.display()
        )
    );
    let expired = load_error(&node.ca, &pki.expired.cert, &pki.expired.key);
    let expected = format!("TLS cert file {}: expired ", pki.expired.cert.display());
    assert!(expired.starts_with(&expected), "{expired}");
    assert_eq!(
        load_error(&node.ca, &pki.revoked.cert, &pki.revoked.key),
        format!(
            "TLS cert file {}: revoked by a CRL of the CA file",
            pki.revoked.cert.display()
        )
    );
    assert_eq!(
        load_error(&node.ca, &pki.foreign.cert, &pki.foreign.key),
        format!(
            "TLS cert file {}: not issued by a trusted CA",
            pki.foreign.cert.display()
        )
    );
    assert_eq!(
        load_error(&node.key, &node.cert, &node.key),
        format!(
            "TLS ca file {}: no CA certificate in it",
            node.key.display()
        )
    );
    assert_eq!(
        load_error(&node.ca, &node.cert, &node.cert),
        format!("TLS key file {}: no private key in it", node.cert.display())
    );
}

/// Large packets to a slow reader arrive whole. Regression: TLS may keep
/// the end of a write in its own buffer when the socket is full, sent only
/// by the next write or a flush; without a flush after each packet, the
/// tail of the last packet could stay there while both ends wait for each
/// other (ZODB's MT suites hung once on a store). This slow reader keeps
/// the socket full, which makes that case likely, not certain.
#[tokio::test]
async fn large_packets_arrive_whole_over_tls() {
    let (_dir, pki) = pki();
    let tls = pki.node.load().unwrap();
    let listener = Listener::bind(&Address::new("127.0.0.1", 0))
        .await
        .unwrap()
        .with_tls(Some(tls.clone()));
    let address = listener.local_address().clone();
    const PACKETS: usize = 20;
    let receiver = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        // Takes one packet at a time, and none for a while: the sender
        // fills the socket and its TLS buffer.
        let slow = ConnectionConfig {
            event_capacity: 1,
            ..ConnectionConfig::default()
        };
        let (_connection, mut inbox) = accepted.open(&slow).await.unwrap();
        let mut sizes = Vec::new();
        while sizes.len() < PACKETS {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let event = inbox.recv().await.unwrap();
            match event.kind {
                EventKind::Packet(frame) => match frame.packet {
                    neo_proto::Packet::AskStoreObject(object) => sizes.push(object.data.len()),
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
        sizes
    });
    let (sender, _inbox) = connect_alone(&address, &with_tls(Some(tls))).await.unwrap();
    let sizes: Vec<usize> = (0..PACKETS).map(|i| (1 << 20) + i * 12345).collect();
    let sending = sender.clone();
    let packets = sizes.clone();
    tokio::spawn(async move {
        for size in packets {
            let packet = neo_proto::packets::AskStoreObject {
                oid: neo_proto::Oid(1),
                serial: neo_proto::Tid(2),
                compression: 0,
                checksum: neo_proto::Checksum::ZERO,
                data: bytes::Bytes::from(vec![7u8; size]),
                data_serial: None,
                ttid: neo_proto::Tid(3),
            };
            sending.notify(packet).await.unwrap();
        }
    });
    // Sent packets are on the wire: the receiver gets them all while the
    // sender, still open, sends nothing more.
    let received = tokio::time::timeout(std::time::Duration::from_secs(30), receiver);
    assert_eq!(
        received.await.expect("every packet arrives").unwrap(),
        sizes
    );
    sender.close().await;
}

//! TLS across real processes (operations.md §8): nodes without TLS and
//! nodes with a certificate the cluster does not trust are refused, each
//! side saying why in one line, and credentials that cannot work stop a
//! program at once. (`data.rs` runs whole clusters with TLS.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{one_line_error, tls_args, Cluster, NEOADMIN, NEOCTL, NEOMASTER, NEOSTORAGE};
use neo_client::{BlockingClient, ClientConfig, ClientError};
use neo_net::test_pki::Credentials;

/// How long a log line may take to appear.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// neoctl with these arguments: its stderr, which must be one line, and
/// its exit status.
fn neoctl(args: &[String]) -> (String, Option<i32>) {
    let output = Command::new(NEOCTL).args(args).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    (stderr.trim().to_owned(), output.status.code())
}

const USES_TLS: &str = "the peer uses TLS and this node does not (see --ca, --cert, --key)";
const WITHOUT_TLS: &str = "the peer does not use TLS and this node does";

#[test]
fn nodes_with_and_without_tls_do_not_mix_and_both_say_why() {
    let mut cluster = Cluster::with_tls("mixed");
    cluster.start(1, 0);

    // neoctl without TLS, admin with.
    let plain = [
        "-a".to_owned(),
        cluster.admin.clone(),
        "print".into(),
        "cluster".into(),
    ];
    let (error, status) = neoctl(&plain);
    assert_eq!(status, Some(1));
    assert_eq!(error, format!("ERROR: {}: {USES_TLS}", cluster.admin));

    // An admin without TLS: it cannot reach the TLS master, and neoctl
    // with TLS cannot talk to it.
    let admin = format!("127.0.0.1:{}", common::free_port());
    let args = ["-c", "mixed", "-m", &cluster.master, "-b", &admin].map(str::to_owned);
    cluster.spawn_plain("plain-admin", NEOADMIN, &args);
    cluster.wait_log("plain-admin", USES_TLS, LOG_WAIT);
    let master = cluster.wait_log("master", WITHOUT_TLS, LOG_WAIT);
    assert!(
        !master.contains("packet"),
        "no malformed-packet noise: {master}"
    );
    let mut tls_neoctl = cluster.tls_args();
    tls_neoctl.extend([
        "-a".to_owned(),
        admin.clone(),
        "print".into(),
        "cluster".into(),
    ]);
    let (error, status) = neoctl(&tls_neoctl);
    assert_eq!(status, Some(1));
    assert_eq!(error, format!("ERROR: {admin}: {WITHOUT_TLS}"));
    assert_eq!(cluster.neoctl_stdout("print cluster").trim(), "RUNNING");
    cluster.kill("plain-admin");
    cluster.stop();
}

/// A storage with `credentials` tries to join; the master refuses it, and
/// the cluster goes on with its one storage.
fn storage_is_refused(cluster: &mut Cluster, label: &str, credentials: &Credentials) {
    let database = cluster.dir.path().join(format!("{label}.sqlite"));
    let mut args = [
        "-c",
        &cluster.name,
        "-m",
        &cluster.master,
        "-a",
        "SQLite",
        "-d",
        database.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(tls_args(credentials));
    cluster.spawn_plain(label, NEOSTORAGE, &args);
    cluster.wait_log(label, "TLS handshake failed", LOG_WAIT);
    let nodes = cluster.neoctl_stdout("print node");
    assert_eq!(nodes.matches("STORAGE").count(), 1, "{nodes}");
    cluster.kill(label);
}

#[test]
fn a_certificate_of_another_ca_or_revoked_is_refused() {
    let mut cluster = Cluster::with_tls("untrusted");
    cluster.start(1, 0);
    let pki = cluster.pki.clone().unwrap();

    storage_is_refused(&mut cluster, "foreign", &pki.foreign);
    cluster.wait_log("master", "TLS handshake failed", LOG_WAIT);
    // The revoked node's CA file predates the CRL: it starts, and the
    // master, which has the CRL, refuses it.
    storage_is_refused(&mut cluster, "revoked", &pki.revoked);
    cluster.wait_log("master", "revoked by a CRL of the CA file", LOG_WAIT);

    let master = neo_proto::Address::parse(&cluster.master, 0).unwrap();
    let mut config = ClientConfig::new(vec![master], cluster.name.clone());
    config.ready_timeout = Duration::from_secs(2);
    config.connection.tls = Some(pki.revoked.load().unwrap());
    let result = BlockingClient::connect(config).and_then(|client| client.new_oid());
    match result {
        Err(error @ ClientError::NotConnected { .. }) => {
            assert!(error.to_string().contains("TLS"), "{error}");
        }
        other => panic!("a revoked client got {other:?}"),
    }
    cluster.stop();
}

#[test]
fn credentials_that_cannot_work_stop_the_program_with_one_line() {
    let cluster = Cluster::with_tls("badcreds");
    let pki = cluster.pki.clone().unwrap();
    let daemon = ["-c", "x", "-b", "127.0.0.1:0"].map(str::to_owned);
    let run = |program: &str, credentials: Credentials| {
        let mut args = daemon.to_vec();
        args.extend(tls_args(&credentials));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        one_line_error(program, &args)
    };
    let expired = run(NEOMASTER, pki.expired.clone());
    let prefix = format!(
        "neomaster: error: TLS cert file {}: expired ",
        pki.expired.cert.display()
    );
    assert!(expired.starts_with(&prefix), "{expired}");

    let mismatched = Credentials {
        key: pki.revoked.key.clone(),
        ..pki.node.clone()
    };
    assert_eq!(
        run(NEOADMIN, mismatched),
        format!(
            "neoadmin: error: TLS key file {}: not the key of the certificate in {}",
            pki.revoked.key.display(),
            pki.node.cert.display()
        )
    );
    let missing = Credentials {
        ca: cluster.dir.path().join("missing.crt"),
        ..pki.node.clone()
    };
    let error = run(NEOMASTER, missing.clone());
    assert!(
        error.starts_with(&format!(
            "neomaster: error: TLS ca file {}: ",
            missing.ca.display()
        )),
        "{error}"
    );
    let mut args = tls_args(&missing);
    args.extend(["print".to_owned(), "cluster".to_owned()]);
    let (error, status) = neoctl(&args);
    assert_eq!(status, Some(1));
    assert!(error.starts_with("neoctl: error: TLS ca file "), "{error}");
}

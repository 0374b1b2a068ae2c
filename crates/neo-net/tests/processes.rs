//! Two of our processes talk NEO over 127.0.0.1 and [::1], and a peer of
//! the wrong protocol version is refused with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

const NEO_PEER: &str = env!("CARGO_BIN_EXE_neo-peer");

/// A `neo-peer serve` process, killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(bind: &str) -> Server {
        let mut child = Command::new(NEO_PEER)
            .args(["serve", "--bind", bind])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, address }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(address: &str, count: &str) -> std::process::Output {
    Command::new(NEO_PEER)
        .args(["ping", address, "--count", count])
        .output()
        .unwrap()
}

fn handshake_and_ping_between_processes(bind: &str) {
    let server = Server::start(bind);
    let output = ping(&server.address, "3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pongs: Vec<&str> = stdout.lines().collect();
    assert_eq!(pongs.len(), 3, "{stdout}");
    for pong in pongs {
        assert!(
            pong.starts_with(&format!("Pong from {} in ", server.address)),
            "{pong}"
        );
    }
}

#[test]
fn processes_talk_over_ipv4_loopback() {
    handshake_and_ping_between_processes("127.0.0.1:0");
}

#[test]
fn processes_talk_over_ipv6_loopback() {
    handshake_and_ping_between_processes("[::1]:0");
}

#[test]
fn a_peer_of_another_version_is_refused_clearly() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let old_peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .write_all(&[0x92, 0xa3, b'N', b'E', b'O', 4])
            .unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        received
    });
    let output = ping(&address.to_string(), "1");
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        format!("neo-peer: error: {address}: peer speaks NEO protocol version 4, this node speaks version 5")
    );
    // Our side sent its magic and nothing else.
    assert_eq!(old_peer.join().unwrap(), neo_proto::MAGIC);
}

#[test]
fn garbage_does_not_take_the_server_down() {
    let server = Server::start("127.0.0.1:0");
    let mut raw = std::net::TcpStream::connect(&server.address).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut received = Vec::new();
    raw.read_to_end(&mut received).unwrap();
    assert_eq!(received, neo_proto::MAGIC, "closed after its own magic");
    assert!(ping(&server.address, "1").status.success());
}

#[test]
fn a_bad_address_is_a_one_line_error() {
    let output = ping("127.0.0.1:notaport", "1");
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "neo-peer: error: invalid port \"notaport\" in address \"127.0.0.1:notaport\""
    );
}

//! The admin's alerts and e-mails (operations.md §4.4) on real clusters,
//! with a local SMTP sink as relay; and the SMTP client's bounds against
//! broken relays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::smtp_sink::{Behaviour, Received, SmtpSink};
use common::{free_port, one_line_error, Cluster, NEOADMIN};
use neo_admin::smtp::{Smtp, SmtpConfig};
use neo_proto::Address;

const RECIPIENT: &str = "ops@example.invalid";

/// How long the admin gets to notice and mail a change.
const MAIL_WAIT: Duration = Duration::from_secs(30);

fn email_options(smtp: &str) -> Vec<String> {
    ["--monitor-email", RECIPIENT, "--smtp", smtp]
        .map(str::to_owned)
        .to_vec()
}

fn start(cluster: &mut Cluster, smtp: &str) {
    let options = email_options(smtp);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    cluster.start_with_admin(2, &options);
}

fn subject(mail: &Received) -> &str {
    mail.header("Subject").unwrap_or("")
}

/// Polls `print summary` until `done` says so (bounded).
fn wait_summary(cluster: &Cluster, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + MAIL_WAIT;
    loop {
        let summary = cluster.neoctl_stdout("print summary");
        if done(&summary) {
            return summary;
        }
        assert!(
            Instant::now() < deadline,
            "summary still {summary:?}; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_lost_storage_is_mailed_as_a_problem_then_as_ok_once_back() {
    let sink = SmtpSink::start(Behaviour::Accept);
    let mut cluster = Cluster::new("mailed");
    start(&mut cluster, &sink.address());
    let (ok, mail) = sink.wait_for(0, MAIL_WAIT, |mail| {
        subject(mail) == "NEO monitoring: OK" && mail.body().starts_with("RUNNING; UP_TO_DATE=8")
    });
    // The envelope: the empty reverse-path (operations.md §10 Q3).
    assert_eq!(mail.mail_from, "MAIL FROM:<>");
    assert_eq!(mail.rcpt_to, [format!("RCPT TO:<{RECIPIENT}>")]);
    assert_eq!(mail.header("To"), Some(RECIPIENT));
    assert_eq!(
        mail.header("Content-Type"),
        Some("text/plain; charset=\"utf-8\"")
    );
    assert!(mail.header("From").unwrap().starts_with("NEO mailed <"));
    assert!(mail.header("Date").unwrap().ends_with(" -0000"));
    assert!(mail.body().contains("; ltid="), "{}", mail.body());

    cluster.kill("storage1");
    // (The master's node and cell notifications may come apart: a first
    // mail may say DOWN=1 alone.)
    let (problem, mail) = sink.wait_for(ok + 1, MAIL_WAIT, |mail| {
        subject(mail) == "NEO monitoring: PROBLEM (mailed)"
            && mail
                .body()
                .starts_with("RUNNING; OUT_OF_DATE=4, UP_TO_DATE=4; DOWN=1; ltid=")
    });
    assert_eq!(mail.mail_from, "MAIL FROM:<>");
    // The alert is logged as a structured event.
    let logs = cluster.logs();
    // (S1 or S2: the storages race to identify.)
    assert!(logs.contains("neo::alert"), "{logs}");
    assert!(logs.contains(" is DOWN"), "{logs}");

    cluster.start_storage(1);
    sink.wait_for(problem + 1, MAIL_WAIT, |mail| {
        subject(mail) == "NEO monitoring: OK" && mail.body().starts_with("RUNNING; UP_TO_DATE=8")
    });
    assert!(cluster.logs().contains("resolved: S"));
    cluster.stop();
}

#[test]
fn a_failed_mail_shows_in_the_summary_and_goes_out_with_the_next_report() {
    let port = free_port();
    let relay = format!("127.0.0.1:{port}");
    let mut cluster = Cluster::new("unsent");
    start(&mut cluster, &relay);
    // No relay: the failure is logged and the summary says it.
    let summary = wait_summary(&cluster, |summary| {
        summary.contains("A notification could not be sent at")
    });
    assert!(
        summary.starts_with("# {\"problem\": [null]}\nRUNNING; UP_TO_DATE=8"),
        "{summary}"
    );
    assert!(cluster.logs().contains("a notification could not be sent"));

    // The relay is back; the next report (a storage lost) goes out with
    // the note of the failure, then the summary is clean again.
    let sink = SmtpSink::start_on(port, Behaviour::Accept);
    cluster.kill("storage1");
    let (_, mail) = sink.wait_for(0, MAIL_WAIT, |mail| {
        subject(mail) == "NEO monitoring: PROBLEM (unsent)"
    });
    let body = mail.body();
    assert!(body.starts_with("RUNNING; "), "{body}");
    assert!(
        body.contains("\r\n\r\nA notification could not be sent at "),
        "{body}"
    );
    wait_summary(&cluster, |summary| {
        !summary.contains("could not be sent") && summary.contains("DOWN=1")
    });
}

fn smtp_config(port: u16, timeout: Duration) -> SmtpConfig {
    SmtpConfig {
        relay: Address::new("127.0.0.1", port),
        starttls: false,
        auth: None,
        recipients: vec![RECIPIENT.into()],
        hello: String::new(),
        timeout,
    }
}

fn smtp(port: u16, timeout: Duration) -> Smtp {
    Smtp::new(&smtp_config(port, timeout)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_client_logs_in_and_names_this_host() {
    let sink = SmtpSink::start(Behaviour::Accept);
    let config = SmtpConfig {
        auth: Some(("neo".into(), "pass:word".into())),
        hello: "admin.example.invalid".into(),
        ..smtp_config(sink.port, Duration::from_secs(10))
    };
    let message = b"Subject: x\r\n\r\n.leading dot";
    runtime()
        .block_on(Smtp::new(&config).unwrap().send(message))
        .unwrap();
    let mail = &sink.received()[0];
    // PLAIN: base64 of "\0neo\0pass:word".
    assert_eq!(
        mail.session,
        [
            "EHLO admin.example.invalid",
            "AUTH PLAIN AG5lbwBwYXNzOndvcmQ="
        ]
    );
    assert_eq!(mail.mail_from, "MAIL FROM:<>");
    assert_eq!(mail.body(), ".leading dot\r\n");
}

#[test]
fn a_silent_relay_is_given_up_within_the_send_timeout() {
    let sink = SmtpSink::start(Behaviour::Silent);
    let started = Instant::now();
    let result = runtime().block_on(smtp(sink.port, Duration::from_secs(1)).send(b"x\r\n"));
    let error = result.unwrap_err();
    assert!(error.contains("within 1 s"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_endless_reply_line_is_refused() {
    let sink = SmtpSink::start(Behaviour::Babble);
    let started = Instant::now();
    let result = runtime().block_on(smtp(sink.port, Duration::from_secs(20)).send(b"x\r\n"));
    let error = result.unwrap_err();
    assert!(
        error.ends_with("the relay sent more than 262144 bytes"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_e_mail_settings_stop_the_admin_at_start_with_one_line() {
    let master = format!("127.0.0.1:{}", free_port());
    let error = one_line_error(
        NEOADMIN,
        &[
            "-c",
            "x",
            "-m",
            &master,
            "-b",
            "127.0.0.1:0",
            "--monitor-email",
            "not an address",
        ],
    );
    assert!(
        error.contains("--monitor-email \"not an address\""),
        "{error}"
    );
    let error = one_line_error(NEOADMIN, &["-c", "x", "-m", &master, "--monitor-maxlag=-1"]);
    assert!(error.contains("--monitor-maxlag"), "{error}");
}

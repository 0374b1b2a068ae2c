//! A tiny SMTP server for the tests: it records the envelope and the
//! message of every mail it receives, or plays a broken relay.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the sink behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A relay that takes every mail.
    Accept,
    /// Accepts connections and never says a word.
    Silent,
    /// Greets with one endless line.
    Babble,
}

/// One mail as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The `MAIL FROM:` command line, as sent.
    pub mail_from: String,
    /// The `RCPT TO:` command lines.
    pub rcpt_to: Vec<String>,
    /// The `EHLO` and `AUTH` command lines of the session.
    pub session: Vec<String>,
    /// The message, dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl Received {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.data.split("\r\n\r\n").next()?;
        head.split("\r\n")
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
    }

    /// The body, after the blank line.
    pub fn body(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }
}

pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl SmtpSink {
    /// A sink on a free port of 127.0.0.1.
    pub fn start(behaviour: Behaviour) -> SmtpSink {
        SmtpSink::start_on(0, behaviour)
    }

    /// A sink on this port of 127.0.0.1.
    pub fn start_on(port: u16, behaviour: Behaviour) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (mails, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let mails = mails.clone();
                std::thread::spawn(move || match behaviour {
                    Behaviour::Accept => {
                        let _ = session(stream, &mails);
                    }
                    Behaviour::Silent => {
                        std::thread::sleep(Duration::from_secs(120));
                        drop(stream);
                    }
                    Behaviour::Babble => babble(stream),
                });
            }
        });
        SmtpSink {
            port,
            received,
            stop,
        }
    }

    /// `127.0.0.1:PORT`, for `--smtp`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for a mail from index `from` on that
    /// `matches`; returns its index and the mail.
    pub fn wait_for(
        &self,
        from: usize,
        limit: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> (usize, Received) {
        let deadline = Instant::now() + limit;
        loop {
            let received = self.received();
            if let Some((index, mail)) = received
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, mail)| matches(mail))
            {
                return (index, mail.clone());
            }
            assert!(
                Instant::now() < deadline,
                "no such mail within {limit:?}; received: {received:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One SMTP session of a relay that accepts everything.
fn session(stream: TcpStream, mails: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 sink ESMTP\r\n")?;
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut session = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_uppercase();
        match verb.as_str() {
            "EHLO" => {
                session.push(command);
                writer.write_all(b"250-sink\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")?;
            }
            "AUTH" => {
                session.push(command);
                writer.write_all(b"235 welcome\r\n")?;
            }
            "MAIL" => {
                mail_from = command;
                rcpt_to.clear();
                writer.write_all(b"250 OK\r\n")?;
            }
            "RCPT" => {
                rcpt_to.push(command);
                writer.write_all(b"250 OK\r\n")?;
            }
            "DATA" => {
                writer.write_all(b"354 go on\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                mails.lock().unwrap().push(Received {
                    mail_from: mail_from.clone(),
                    rcpt_to: rcpt_to.clone(),
                    session: session.clone(),
                    data,
                });
                writer.write_all(b"250 queued\r\n")?;
            }
            "QUIT" => {
                writer.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => writer.write_all(b"250 OK\r\n")?,
        }
    }
}

/// Greets with a line that never ends (until the peer gives up).
fn babble(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    if stream.write_all(b"220-").is_err() {
        return;
    }
    let chunk = [b'x'; 4096];
    while stream.write_all(&chunk).is_ok() {}
}

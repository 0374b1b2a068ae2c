//! E-mail notifications (operations.md §4.4), without I/O: when to send,
//! the message itself, and what a failed send leaves behind. The admin's
//! shell carries a [`Mail`] to the SMTP relay and reports the outcome
//! with [`Notifier::sent`].
//!
//! As NEO/py: a report is evaluated whenever a monitored value changed,
//! and a mail goes out when something changed since the previous mail or
//! the previous attempt failed; each evaluation starts a 10-minute timer
//! that evaluates again (so a failed mail is sent again), dropped after a
//! successful send (this admin monitors no backup cluster, whose lag the
//! timer exists to notice). Unlike NEO/py, sending does not stop the
//! node: one mail is in flight at a time, and an evaluation asked
//! meanwhile is made once it ends.

use std::fmt::Write as _;

use neo_cluster::{civil_from_days, UnixTime};

use crate::summary::Severity;

/// Seconds between evaluations when nothing happens (NEO/py: 600).
pub const REEVALUATION_INTERVAL: f64 = 600.0;

/// Who gets the mails and who they are from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailConfig {
    /// `--monitor-email`: recipients, in order.
    pub to: Vec<String>,
    /// The address in `From:` (`$EMAIL`, else `login@fqdn`).
    pub from: String,
}

/// A message to send to every recipient, with the empty reverse-path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// Names this attempt in [`Notifier::sent`].
    pub id: u64,
    /// The whole message (headers and body), CRLF line ends, without a
    /// last one (the SMTP client adds it).
    pub message: Vec<u8>,
    /// Its `Subject:`.
    pub subject: String,
}

/// A mail handed to the shell, not reported back yet.
#[derive(Debug)]
struct Sending {
    id: u64,
    /// Its `Date:`, named in the failure note.
    date: String,
    /// Whether it reported a change (a failure note is then replaced).
    changed: bool,
}

/// The notification state of one admin.
#[derive(Debug)]
pub struct Notifier {
    config: EmailConfig,
    /// The admin's cluster: the subject names it.
    cluster: String,
    /// A monitored value changed since the last mail was composed.
    changed: bool,
    /// The note of the last failed send, appended to the summary and to
    /// the next mail, until a mail goes through.
    failure: Option<String>,
    sending: Option<Sending>,
    /// An evaluation was asked while a mail was in flight.
    again: bool,
    /// When to evaluate again if nothing else happens.
    timer: Option<UnixTime>,
    next_id: u64,
}

impl Notifier {
    /// A notifier that has sent nothing yet; its first evaluation sends.
    pub fn new(config: EmailConfig, cluster: String) -> Notifier {
        Notifier {
            config,
            cluster,
            changed: true,
            failure: None,
            sending: None,
            again: false,
            timer: None,
            next_id: 0,
        }
    }

    /// A monitored value changed.
    pub fn changed(&mut self) {
        self.changed = true;
    }

    /// The note of the last failed send, if the last attempt failed.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// When the re-evaluation timer fires.
    pub fn deadline(&self) -> Option<UnixTime> {
        self.timer
    }

    /// Whether the timer is due; if so, it is stopped (the evaluation it
    /// asks for starts it again).
    pub fn take_due(&mut self, now: UnixTime) -> bool {
        let due = self.timer.is_some_and(|due| due <= now);
        if due {
            self.timer = None;
        }
        due
    }

    /// Evaluates a report of `severity` with body `report` (operations.md
    /// §4.3): the mail to send, if one is due and none is in flight.
    pub fn evaluate(&mut self, severity: Severity, report: &str, now: UnixTime) -> Option<Mail> {
        if self.sending.is_some() {
            self.again = true;
            return None;
        }
        self.timer = Some(now + REEVALUATION_INTERVAL);
        if !self.changed && self.failure.is_none() {
            return None;
        }
        let changed = std::mem::take(&mut self.changed);
        let date = rfc2822_date(now);
        let subject = subject(severity, changed.then_some(self.cluster.as_str()));
        let mut body = report.to_owned();
        body.push_str(self.failure.as_deref().unwrap_or(""));
        let message = self.compose(&date, &subject, &body);
        self.next_id += 1;
        self.sending = Some(Sending {
            id: self.next_id,
            date,
            changed,
        });
        Some(Mail {
            id: self.next_id,
            message,
            subject,
        })
    }

    /// The outcome of mail `id`; `true` when an evaluation was asked
    /// meanwhile and is to be made now.
    pub fn sent(&mut self, id: u64, result: Result<(), String>) -> bool {
        let Some(sending) = self.sending.take_if(|sending| sending.id == id) else {
            return false;
        };
        match result {
            Ok(()) => {
                self.failure = None;
                self.timer = None;
            }
            Err(error) => {
                // A mail about a change replaces the note; a repeat of a
                // failed mail keeps the first failure's.
                if sending.changed || self.failure.is_none() {
                    self.failure = Some(format!(
                        "\n\nA notification could not be sent at {}:\n\n{error}",
                        sending.date
                    ));
                }
            }
        }
        std::mem::take(&mut self.again)
    }

    fn compose(&self, date: &str, subject: &str, body: &str) -> Vec<u8> {
        let ascii = body.is_ascii();
        let mut text = String::new();
        let headers = [
            ("MIME-Version", "1.0".to_owned()),
            ("Content-Type", "text/plain; charset=\"utf-8\"".to_owned()),
            (
                "Content-Transfer-Encoding",
                if ascii { "7bit" } else { "8bit" }.to_owned(),
            ),
            ("Date", date.to_owned()),
            ("Subject", subject.to_owned()),
            (
                "From",
                format!("NEO {} <{}>", self.cluster, self.config.from),
            ),
            ("To", self.config.to.join(", ")),
        ];
        for (name, value) in headers {
            let _ = write!(text, "{name}: {}\r\n", one_line(&value));
        }
        text.push_str("\r\n");
        for (index, line) in body.split('\n').enumerate() {
            if index > 0 {
                text.push_str("\r\n");
            }
            text.push_str(line.trim_end_matches('\r'));
        }
        // The SMTP client ends the data with CRLF "." CRLF.
        text.into_bytes()
    }
}

/// A header value on one line: a line break in a cluster name or an
/// address must not start a header of its own.
fn one_line(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}

/// `NEO monitoring: PROBLEM|WARNING|OK`, then ` (name)` when the cluster
/// at that severity (for PROBLEM: warning or problem) changed since the
/// last mail (operations.md §4.4).
pub fn subject(severity: Severity, changed: Option<&str>) -> String {
    let word = match severity {
        Severity::Problem => "PROBLEM",
        Severity::Warning => "WARNING",
        Severity::Ok => return "NEO monitoring: OK".to_owned(),
    };
    match changed {
        Some(name) => format!("NEO monitoring: {word} ({name})"),
        None => format!("NEO monitoring: {word}"),
    }
}

/// A `Date:` as Python's `email.utils.formatdate()` writes it, in UTC:
/// `Wed, 25 Nov 2026 21:43:29 -0000`.
pub fn rfc2822_date(now: UnixTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = now.floor() as i64;
    let days = seconds.div_euclid(86400);
    let in_day = seconds.rem_euclid(86400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(month as usize).saturating_sub(1).min(11)];
    format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} -0000",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25 21:43:29 UTC, as in operations.md §11.7.
    const T: UnixTime = 1_795_643_009.0;

    fn notifier() -> Notifier {
        let config = EmailConfig {
            to: vec![
                "ops@example.invalid".into(),
                "second@example.invalid".into(),
            ],
            from: "neo-admin@example.invalid".into(),
        };
        Notifier::new(config, "opstest".into())
    }

    const LINE: &str = "RUNNING; UP_TO_DATE=24; ltid=040d42d5c02149d3 (2026-11-25 21:41:45.030476)";

    #[test]
    fn dates_are_written_as_python_does() {
        assert_eq!(rfc2822_date(T), "Wed, 25 Nov 2026 21:43:29 -0000");
        assert_eq!(rfc2822_date(0.5), "Thu, 01 Jan 1970 00:00:00 -0000");
    }

    #[test]
    fn messages_are_those_of_operations_11_7() {
        let mut notifier = notifier();
        let mail = notifier.evaluate(Severity::Ok, LINE, T).unwrap();
        let expected = "MIME-Version: 1.0\r\n\
            Content-Type: text/plain; charset=\"utf-8\"\r\n\
            Content-Transfer-Encoding: 7bit\r\n\
            Date: Wed, 25 Nov 2026 21:43:29 -0000\r\n\
            Subject: NEO monitoring: OK\r\n\
            From: NEO opstest <neo-admin@example.invalid>\r\n\
            To: ops@example.invalid, second@example.invalid\r\n\
            \r\n\
            RUNNING; UP_TO_DATE=24; ltid=040d42d5c02149d3 (2026-11-25 21:41:45.030476)";
        assert_eq!(String::from_utf8(mail.message).unwrap(), expected);
        assert!(!notifier.sent(mail.id, Ok(())));
        assert_eq!(notifier.deadline(), None);
    }

    #[test]
    fn subjects_name_the_cluster_only_when_it_changed() {
        assert_eq!(
            subject(Severity::Problem, Some("opstest")),
            "NEO monitoring: PROBLEM (opstest)"
        );
        assert_eq!(
            subject(Severity::Warning, Some("opstest")),
            "NEO monitoring: WARNING (opstest)"
        );
        assert_eq!(subject(Severity::Problem, None), "NEO monitoring: PROBLEM");
        assert_eq!(subject(Severity::Ok, Some("opstest")), "NEO monitoring: OK");
    }

    #[test]
    fn a_mail_goes_out_only_on_a_change_or_after_a_failure() {
        let mut notifier = notifier();
        let first = notifier.evaluate(Severity::Ok, LINE, T).unwrap();
        notifier.sent(first.id, Ok(()));
        // Nothing changed: nothing sent, the timer evaluates again later.
        assert_eq!(notifier.evaluate(Severity::Ok, LINE, T + 1.0), None);
        assert_eq!(notifier.deadline(), Some(T + 1.0 + REEVALUATION_INTERVAL));
        assert!(!notifier.take_due(T + 2.0));
        assert!(notifier.take_due(T + 1.0 + REEVALUATION_INTERVAL));
        assert_eq!(notifier.deadline(), None);

        notifier.changed();
        let problem = notifier.evaluate(Severity::Problem, "RUNNING; DOWN=1", T + 2.0);
        let problem = problem.unwrap();
        assert_eq!(problem.subject, "NEO monitoring: PROBLEM (opstest)");
        // In flight: a new change waits for the outcome.
        notifier.changed();
        assert_eq!(notifier.evaluate(Severity::Ok, LINE, T + 3.0), None);
        assert!(notifier.sent(problem.id, Err("connection refused".into())));
        let note = "\n\nA notification could not be sent at Wed, 25 Nov 2026 21:43:31 -0000:\
            \n\nconnection refused";
        assert_eq!(notifier.failure(), Some(note));

        // The next evaluation resends, with the note in the body.
        let again = notifier.evaluate(Severity::Ok, LINE, T + 4.0).unwrap();
        let text = String::from_utf8(again.message).unwrap();
        assert!(text.ends_with(&format!("{LINE}{}", note.replace('\n', "\r\n"))));
        assert_eq!(again.subject, "NEO monitoring: OK");
        // It reported the change made while the first was in flight: its
        // failure replaces the note; the timer sends again.
        assert!(!notifier.sent(again.id, Err("timed out".into())));
        let note = "\n\nA notification could not be sent at Wed, 25 Nov 2026 21:43:33 -0000:\
            \n\ntimed out";
        assert_eq!(notifier.failure(), Some(note));
        let later = T + 4.0 + REEVALUATION_INTERVAL;
        assert_eq!(notifier.deadline(), Some(later));
        assert!(notifier.take_due(later));
        let third = notifier.evaluate(Severity::Ok, LINE, later).unwrap();
        assert_eq!(third.subject, "NEO monitoring: OK");
        // A repeat that fails too keeps the note of the first failure.
        notifier.sent(third.id, Err("still down".into()));
        assert_eq!(notifier.failure(), Some(note));
        let fourth = notifier.evaluate(Severity::Ok, LINE, later + 1.0).unwrap();
        notifier.sent(fourth.id, Ok(()));
        assert_eq!(notifier.failure(), None);
        assert_eq!(notifier.deadline(), None);
        // Outcomes of unknown attempts change nothing.
        assert!(!notifier.sent(99, Err("late".into())));
        assert_eq!(notifier.failure(), None);
    }
}

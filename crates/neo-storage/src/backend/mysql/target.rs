//! The database named by `-d/--database` for MySQL (operations.md §2.5):
//! `[user[:password]@]database[socket]`, read as NEO/py reads it.

use std::path::PathBuf;

use crate::backend::expand_user;

/// Where MySQL clients look for the server when no socket is named (the
/// path Debian's and MariaDB's client libraries are built with).
const DEFAULT_SOCKET: &str = "/run/mysqld/mysqld.sock";

/// A MySQL database and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// User name; `None`: the client's default (the server then sees an
    /// anonymous or OS-named user, as with NEO/py's binding).
    pub user: Option<String>,
    /// Password, if one was given after `user:`.
    pub password: Option<String>,
    /// Database name.
    pub database: String,
    /// The server's Unix socket.
    pub socket: PathBuf,
}

impl Target {
    /// Reads NEO/py's syntax. The user part is everything before the last
    /// `@` that leaves a database name after it; the user name stops at
    /// the first `:`, the password is the rest. The database name stops at
    /// the first `~`, `.` or `/`, where the socket path starts (`~`
    /// expanded). Without a socket, `$MYSQL_UNIX_PORT` or the client's
    /// default socket is used, as libmysqlclient does. NEO/py has no host
    /// or port form: the server is always reached through a Unix socket.
    pub fn parse(text: &str) -> Option<Target> {
        // NEO/py's pattern prefers the last `@` that works.
        let splits = text.rmatch_indices('@').filter_map(|(at, _)| {
            let (credentials, rest) = (&text[..at], &text[at + 1..]);
            let (user, password) = match credentials.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (credentials, None),
            };
            (!user.is_empty()).then_some((Some(user), password, rest))
        });
        splits
            .chain(std::iter::once((None, None, text)))
            .find_map(|(user, password, rest)| {
                let end = rest.find(['~', '.', '/']).unwrap_or(rest.len());
                let (database, socket) = rest.split_at(end);
                (!database.is_empty()).then(|| Target {
                    user: user.map(str::to_owned),
                    password: password.map(str::to_owned),
                    database: database.to_owned(),
                    socket: if socket.is_empty() {
                        std::env::var_os("MYSQL_UNIX_PORT")
                            .map(PathBuf::from)
                            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
                    } else {
                        expand_user(socket)
                    },
                })
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn target(user: Option<&str>, password: Option<&str>, database: &str, socket: &str) -> Target {
        Target {
            user: user.map(str::to_owned),
            password: password.map(str::to_owned),
            database: database.to_owned(),
            socket: PathBuf::from(socket),
        }
    }

    #[test]
    fn neopy_forms() {
        let parse = |text| Target::parse(text).unwrap();
        assert_eq!(
            parse("root@neo1/var/run/mysqld/mysqld.sock"),
            target(Some("root"), None, "neo1", "/var/run/mysqld/mysqld.sock")
        );
        assert_eq!(
            parse("neo:secret@neo1/tmp/s"),
            target(Some("neo"), Some("secret"), "neo1", "/tmp/s")
        );
        // A password may hold `@` and `:`; the last usable `@` ends it.
        assert_eq!(
            parse("neo:p@ss:w@neo1/tmp/s"),
            target(Some("neo"), Some("p@ss:w"), "neo1", "/tmp/s")
        );
        assert_eq!(
            parse("neo:@neo1/tmp/s"),
            target(Some("neo"), Some(""), "neo1", "/tmp/s")
        );
        // The socket starts at the first `~`, `.` or `/`.
        assert_eq!(parse("neo1./s").socket, PathBuf::from("./s"));
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(parse("neo1~/s").socket, PathBuf::from(home).join("s"));
        }
        // No user part when no database name would follow its `@`.
        assert_eq!(parse("a@/tmp/s"), target(None, None, "a@", "/tmp/s"));
        assert_eq!(parse("root@").database, "root@");
        assert!(Target::parse("").is_none());
        assert!(Target::parse("/tmp/s").is_none());
    }
}

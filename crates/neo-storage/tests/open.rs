//! `backend::open`: the engine named by `-a`, on the database named by
//! `-d`, as NEO/py spells them (and `Native`, ours).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use neo_storage::backend::{self, Adapter, OpenError, OpenOptions};
use neo_storage::db::Database;
use neo_storage::importer::open_database;

#[test]
fn adapters_go_by_neopy_names() {
    for adapter in [
        Adapter::Importer,
        Adapter::MySql,
        Adapter::MySqlDb,
        Adapter::PyMySql,
        Adapter::Sqlite,
        Adapter::Native,
    ] {
        assert_eq!(Adapter::from_name(adapter.name()), Some(adapter));
    }
    assert_eq!(Adapter::from_name("SQLite"), Some(Adapter::Sqlite));
    assert_eq!(
        Adapter::from_name("sqlite"),
        None,
        "names are case-sensitive"
    );
}

#[test]
fn the_importer_is_opened_through_its_configuration_file() {
    let error = backend::open(Adapter::Importer, "importer.conf", &OpenOptions::default())
        .err()
        .expect("not an engine");
    assert!(matches!(error, OpenError::NotAnEngine { .. }), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("importer.conf");
    let open = |path: &std::path::Path| {
        open_database(
            Adapter::Importer,
            path.to_str().unwrap(),
            &OpenOptions::default(),
        )
        .err()
        .expect("refused")
        .to_string()
    };
    let error = open(&conf);
    assert!(
        error.starts_with(&format!("{}: ", conf.display())),
        "{error}"
    );
    std::fs::write(&conf, "[neo]\nadapter = SQLite\n").unwrap();
    assert!(open(&conf).contains("`database` is missing"));
    let source = dir.path().join("missing.fs");
    std::fs::write(
        &conf,
        format!(
            "[neo]\nadapter = SQLite\ndatabase = {}\n[root]\nstorage = <filestorage>\n  \
             path {}\n  </filestorage>\n",
            dir.path().join("neo.sqlite").display(),
            source.display()
        ),
    )
    .unwrap();
    let error = open(&conf);
    assert!(error.contains(&source.display().to_string()), "{error}");
    std::fs::write(&source, b"FS30").unwrap();
    assert!(open(&conf).contains("Can not import empty storage"));
}

/// NEO/py's three names of MySQL (two of them chose its Python binding)
/// open the same engine, on NEO/py's database string.
#[test]
fn the_three_mysql_names_read_a_mysql_database_string() {
    for adapter in [Adapter::MySql, Adapter::MySqlDb, Adapter::PyMySql] {
        let error = backend::open(adapter, "/no/database/name", &OpenOptions::default())
            .err()
            .expect("no database name");
        assert!(matches!(error, OpenError::BadDatabase { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("[user[:password]@]database[socket]"),
            "{error}"
        );
    }
}

#[test]
fn an_sqlite_database_is_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    let backend = backend::open(
        Adapter::Sqlite,
        path.to_str().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    let mut db = Database::new(backend).unwrap();
    assert_eq!(db.name().unwrap(), None);
    assert!(path.is_file());
    for database in ["", "file:neo.sqlite?cache_size=10"] {
        let error = backend::open(Adapter::Sqlite, database, &OpenOptions::default())
            .err()
            .expect("not a path");
        assert!(matches!(error, OpenError::BadDatabase { .. }), "{error}");
    }
}

/// The topology path is NEO/py's: the host name, then the device of the
/// database file.
#[test]
fn the_topology_path_is_the_host_then_the_device_of_the_data() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    let backend = backend::open(
        Adapter::Sqlite,
        path.to_str().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    let mut db = Database::new(backend).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let device = std::fs::metadata(&path).unwrap().dev();
    assert_eq!(
        db.topology_path(),
        [hostname.trim().to_owned(), device.to_string()]
    );
}

/// A truncation is refused while importing below the sources' last tid
/// (a restart would import again what was cut) and, with write-back, at
/// any tid (what was cut is in the source already), as NEO/py refuses
/// both; the error says why.
#[test]
fn an_importer_refuses_truncations_that_would_part_it_from_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.fs");
    let mut writer = neo_filestorage::Writer::open(&source).unwrap();
    let last_tid = 0x03f0_0000_0000_0000;
    writer
        .append(&neo_filestorage::NewTransaction {
            tid: last_tid,
            status: b' ',
            user: b"",
            description: b"",
            extension: b"",
            records: vec![neo_filestorage::NewRecord {
                oid: 0,
                data: Some(b"\x80\x02cfoo\nBar\nq\x00.\x80\x02}q\x01."),
                data_txn: None,
            }],
        })
        .unwrap();
    writer.close().unwrap();
    let truncate = |writeback: bool, tid: u64| {
        let conf = dir.path().join(format!("importer-{writeback}.conf"));
        std::fs::write(
            &conf,
            format!(
                "[neo]\nadapter = SQLite\ndatabase = {}\nwriteback = {writeback}\n\
                 [root]\nstorage = <filestorage>\n  path {}\n  </filestorage>\n",
                dir.path().join(format!("neo-{writeback}.sqlite")).display(),
                source.display()
            ),
        )
        .unwrap();
        let mut db = open_database(
            Adapter::Importer,
            conf.to_str().unwrap(),
            &OpenOptions::default(),
        )
        .unwrap();
        db.set_truncate_tid(Some(neo_proto::Tid(tid))).unwrap();
        db.truncate().map(|_| ()).map_err(|error| error.to_string())
    };
    let below = truncate(false, last_tid - 1).unwrap_err();
    assert!(
        below.contains(&format!(
            "can not truncate at {:016x} below the last tid of the imported databases ({last_tid:016x})",
            last_tid - 1
        )),
        "{below}"
    );
    let written_back = truncate(true, last_tid + 1).unwrap_err();
    assert!(
        written_back.contains("transactions are written back to the source"),
        "{written_back}"
    );
    assert_eq!(truncate(false, last_tid + 1), Ok(()));
}

"""The Importer merging two FileStorages made by ZODB (operations.md §6):
the second one is mounted in the first at a placeholder object, and ZODB,
through NEO, finds the mounted objects where the placeholder was, with
the class of the mounted object (not the placeholder's), before and after
the import ends."""

import os
import time

import pytest
import transaction
import ZODB
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

from neocluster import Cluster


def make_sources(directory):
    """main.fs: root['mount'] is a placeholder (oid 1), root['local'] a
    mapping; foo.fs: its root holds 'target' (oid 1), the object to mount,
    which references a child."""
    main_path = os.path.join(directory, 'main.fs')
    db = ZODB.DB(FileStorage(main_path))
    with db.transaction() as conn:
        root = conn.root()
        root['mount'] = PersistentList(['placeholder'])
        root['local'] = PersistentMapping(value=b'from main')
    with db.transaction() as conn:
        assert conn.root()['mount']._p_oid == b'\0' * 7 + b'\1'
        conn.root()['local']['value'] = b'from main, twice'
    db.close()
    foo_path = os.path.join(directory, 'foo.fs')
    db = ZODB.DB(FileStorage(foo_path))
    with db.transaction() as conn:
        target = conn.root()['target'] = PersistentMapping()
        target['child'] = PersistentMapping(value=b'from foo')
    with db.transaction() as conn:
        assert conn.root()['target']._p_oid == b'\0' * 7 + b'\1'
        conn.root()['target']['name'] = 'mounted'
    db.close()
    return main_path, foo_path


def write_conf(directory, main_path, foo_path):
    conf = os.path.join(directory, 'importer.conf')
    with open(conf, 'w') as f:
        f.write(
            '[neo]\nadapter = SQLite\ndatabase = %s\n\n'
            '[main]\nstorage =\n  <filestorage>\n    path %s\n  </filestorage>\n'
            'foo = 1\n\n'
            '[foo]\noid = 1\nstorage =\n  <filestorage>\n    path %s\n'
            '  </filestorage>\n'
            % (os.path.join(directory, 'destination.sqlite'), main_path, foo_path))
    return conf


def check_merged(db):
    with db.transaction() as conn:
        root = conn.root()
        assert root['local']['value'] == b'from main, twice'
        mounted = root['mount']
        # The placeholder's class is gone with its oid.
        assert type(mounted) is PersistentMapping
        assert mounted['name'] == 'mounted'
        assert mounted['child']['value'] == b'from foo'
        # foo's oids were moved past main's (0..2): its oid 1 is 4.
        assert mounted._p_oid == b'\0' * 7 + b'\4'


def wait_imported(cluster, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(os.path.join(cluster.dir, 'neosimple.log')) as log:
            if 'All data are imported' in log.read():
                return
        time.sleep(0.1)
    pytest.fail('the import did not end')


def test_two_databases_are_merged_at_their_mount_point(tmp_path):
    directory = str(tmp_path)
    conf = write_conf(directory, *make_sources(directory))
    cluster = Cluster(adapter='Importer', databases=[conf]).start()
    try:
        db = ZODB.DB(cluster.storage())
        try:
            check_merged(db)
            wait_imported(cluster)
            check_merged(db)
            # New commits go on top of the merged databases.
            with db.transaction() as conn:
                conn.root()['mount']['added'] = PersistentMapping(value=b'new')
            with db.transaction() as conn:
                assert conn.root()['mount']['added']['value'] == b'new'
        finally:
            db.close()
    finally:
        cluster.stop()

"""The storage through ZODB's application stack (DB, Connection,
transaction, BTrees), configuration (ZConfig, zodburi), invalidations
between clients, the cache, and the errors a user can make; on plain
clusters and on a TLS one (every node and client with certificates)."""


import subprocess
import sys
import threading
import time

import pytest
import transaction
import ZODB
import ZODB.config
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.POSException import ConflictError, POSKeyError, ReadOnlyError
from ZODB.utils import p64, z64

from neocluster import Cluster, credentials
from neo.client.Storage import Storage
from neo.client.exception import NEOStorageClosedError, NEOStorageConnectionError

N_ENTRIES = 100000


@pytest.fixture(scope='module', params=[(1, 0, False), (2, 1, False),
                                        (1, 0, True)],
                ids=['1storage', '2storages-replicas1', '1storage-tls'])
def cluster(request):
    storages, replicas, tls = request.param
    c = Cluster(storages, replicas, tls=tls).start()
    yield c
    c.stop()


def test_btree_100k(cluster):
    """Writes 100,000 OOBTree entries through ZODB.DB, reads them back
    through a second client."""
    db = ZODB.DB(cluster.storage())
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        root['tree'] = tree = OOBTree()
        for i in range(N_ENTRIES):
            tree['key%06d' % i] = i
            if i % 20000 == 19999:
                tm.commit()
        tm.commit()
        conn.close()
    finally:
        db.close()
    db = ZODB.DB(cluster.storage())
    try:
        conn = db.open()
        tree = conn.root()['tree']
        assert len(tree) == N_ENTRIES
        expected = 0
        for key, value in tree.items():
            assert key == 'key%06d' % expected
            assert value == expected
            expected += 1
        assert expected == N_ENTRIES
        assert tree['key054321'] == 54321
        conn.close()
    finally:
        db.close()


def test_invalidations_between_clients(cluster):
    """A commit by one client is seen by another's DB on its next
    transaction, and its cache is invalidated."""
    db1 = ZODB.DB(cluster.storage())
    db2 = ZODB.DB(cluster.storage())
    try:
        tm1 = transaction.TransactionManager()
        tm2 = transaction.TransactionManager()
        c1 = db1.open(tm1)
        c1.root()['m'] = PersistentMapping(v=1)
        tm1.commit()
        c2 = db2.open(tm2)
        tm2.begin()
        assert c2.root()['m']['v'] == 1
        for value in range(2, 6):
            c1.root()['m']['v'] = value
            tm1.commit()
            deadline = time.time() + 10
            while True:
                tm2.begin()
                if c2.root()['m']['v'] == value:
                    break
                assert time.time() < deadline, 'invalidation not received'
                time.sleep(0.01)
        # Concurrent change of the same object: ConflictError.
        tm1.begin()
        tm2.begin()
        c1.root()['m']['v'] = 'a'
        c2.root()['m']['v'] = 'b'
        tm1.commit()
        with pytest.raises(ConflictError):
            tm2.commit()
        tm2.abort()
    finally:
        db1.close()
        db2.close()


def test_conflict_resolution_counter(cluster):
    """Concurrent increments of a BTrees Length resolve their conflicts."""
    from BTrees.Length import Length
    db = ZODB.DB(cluster.storage())
    try:
        tm = transaction.TransactionManager()
        c = db.open(tm)
        c.root()['len'] = Length()
        tm.commit()
        errors = []

        def work():
            try:
                tm = transaction.TransactionManager()
                c = db.open(tm)
                for _ in range(20):
                    for attempt in range(10):
                        try:
                            c.root()['len'].change(1)
                            tm.commit()
                            break
                        except ConflictError:
                            tm.abort()
                c.close()
            except Exception as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        tm.begin()
        assert c.root()['len']() == 80
    finally:
        db.close()


def test_cache_avoids_network(cluster):
    storage = cluster.storage()
    try:
        oid = storage.new_oid()
        from ZODB.Connection import TransactionMetaData
        t = TransactionMetaData()
        storage.tpc_begin(t)
        storage.store(oid, z64, b'x' * 1000, '', t)
        storage.tpc_vote(t)
        tid = storage.tpc_finish(t)
        storage._client.clear_cache()
        before = storage._client.cache_stats()
        assert storage.load(oid) == (b'x' * 1000, tid)  # miss: network
        start = time.perf_counter()
        for _ in range(1000):
            assert storage.load(oid) == (b'x' * 1000, tid)
        cached = time.perf_counter() - start
        after = storage._client.cache_stats()
        assert after['misses'] - before['misses'] == 1
        assert after['hits'] - before['hits'] >= 1000
        storage._client.clear_cache()
        start = time.perf_counter()
        for _ in range(200):
            storage._client.clear_cache()
            storage.load(oid)
        uncached = (time.perf_counter() - start) * 5
        # Cached loads are much faster than loads from the storage node.
        assert cached < uncached, (cached, uncached)
    finally:
        storage.close()


def test_prefetch_fills_the_cache(cluster):
    """storage.prefetch(oids, tid) and Connection.prefetch: the revisions
    current before tid come into the cache, so the loads that follow do not
    go to the network; an older tid gets the older revisions."""
    db = ZODB.DB(cluster.storage())
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        root['prefetch'] = objects = [PersistentMapping({'v': i})
                                      for i in range(300)]
        tm.commit()
        first = db.storage.lastTransaction()
        for obj in objects:
            obj['v'] += 1000
        tm.commit()
        oids = [obj._p_oid for obj in objects]
        conn.close()

        storage = cluster.storage()
        try:
            last = storage.lastTransaction()
            assert storage._client.prefetch(oids, p64(int.from_bytes(
                last, 'big') + 1)) == len(oids)
            # Already cached: nothing to load again.
            assert storage._client.prefetch(oids, p64(int.from_bytes(
                last, 'big') + 1)) == 0
            # The previous revisions, ending where the next begins.
            storage.prefetch(iter(oids), p64(int.from_bytes(first, 'big') + 1))
            stats = storage._client.cache_stats()
            for i, oid in enumerate(oids):
                data, serial = storage.load(oid)
                assert serial == last
                assert storage.loadBefore(oid, last)[1:] == (first, last)
            after = storage._client.cache_stats()
            assert after['misses'] == stats['misses']
            assert after['hits'] - stats['hits'] == 2 * len(oids)
        finally:
            storage.close()

        # Through ZODB: ghosts prefetched, then activated without a miss.
        db2 = ZODB.DB(cluster.storage())
        try:
            conn2 = db2.open(transaction.TransactionManager())
            ghosts = conn2.root()['prefetch']
            client = db2.storage._client
            conn2.prefetch(ghosts)
            stats = client.cache_stats()
            assert [g['v'] for g in ghosts] == [1000 + i for i in range(300)]
            assert client.cache_stats()['misses'] == stats['misses']
            conn2.close()
        finally:
            db2.close()
    finally:
        db.close()


def test_len_follows_commits_without_listing_every_oid(cluster):
    """len(storage): exact, and after the first count brought up to date
    from the transactions committed since (creations, deletions)."""
    from ZODB.Connection import TransactionMetaData
    storage = cluster.storage()
    try:
        def commit(stores):
            t = TransactionMetaData()
            storage.tpc_begin(t)
            for oid, serial, data in stores:
                if data is None:
                    storage.deleteObject(oid, serial, t)
                else:
                    storage.store(oid, serial, data, '', t)
            storage.tpc_vote(t)
            return storage.tpc_finish(t)

        base = len(storage)
        counts = []
        count_since = storage._count_since
        storage._count_since = lambda *a: counts.append(count_since(*a)) \
            or counts[-1]
        oids = [storage.new_oid() for _ in range(5)]
        tid = commit([(oid, z64, b'new') for oid in oids])
        assert len(storage) == base + 5
        commit([(oid, tid, None) for oid in oids[:2]]
               + [(oids[2], tid, b'changed')])
        assert len(storage) == base + 3
        assert len(storage) == base + 3  # nothing new: no request at all
        assert counts == [base + 5, base + 3]
        # Too many objects written since: counted again, as exactly.
        storage.len_increment_limit = 2
        commit([(storage.new_oid(), z64, b'new') for _ in range(3)])
        assert len(storage) == base + 6
        assert counts[-1] is None
    finally:
        storage.close()


@pytest.mark.parametrize('page', [1000, 3])
def test_record_iternext_lists_every_current_record(cluster, page):
    """IStorageCurrentRecordIteration (zodbupdate's way through a
    database): every existing object once, in oid order, with its current
    record as of the first call, whatever the partitions' page size."""
    from ZODB.Connection import TransactionMetaData
    storage = cluster.storage()
    try:
        storage.record_page = page
        t = TransactionMetaData()
        storage.tpc_begin(t)
        for i in range(40):
            storage.store(storage.new_oid(), z64, b'record %d' % i, '', t)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
        expected = storage._client.oids_at(storage.lastTransaction())
        seen = []
        next_oid = None
        while True:
            oid, serial, data, next_oid = storage.record_iternext(next_oid)
            if not seen:
                # Committed after the start: not in this iteration.
                t = TransactionMetaData()
                storage.tpc_begin(t)
                storage.store(storage.new_oid(), z64, b'later', '', t)
                storage.tpc_vote(t)
                storage.tpc_finish(t)
            assert (data, serial) == storage.load(oid)
            seen.append(oid)
            if next_oid is None:
                break
        assert seen == expected
    finally:
        storage.close()


def test_zconfig(cluster):
    config = """
    %%import neo.client
    <zodb>
      <NEOStorage>
        master_nodes %s
        name %s
        cache-size 1MB
        compress zlib=9
    %s
      </NEOStorage>
    </zodb>
    """ % (cluster.master_nodes, cluster.name, cluster.zconfig_tls())
    db = ZODB.config.databaseFromString(config)
    try:
        assert db.storage.getName() == 'NEOStorage(%s)' % cluster.name
        assert db.storage._client.cache_stats()['budget'] == 1 << 20
        with db.transaction() as conn:
            conn.root()['zconfig'] = 1
    finally:
        db.close()


def test_zconfig_bad_compress(cluster):
    import ZConfig
    config = """
    %%import neo.client
    <zodb>
      <NEOStorage>
        master_nodes %s
        name %s
        compress zlib=10
      </NEOStorage>
    </zodb>
    """ % (cluster.master_nodes, cluster.name)
    with pytest.raises(ZConfig.DataConversionError,
                       match='invalid compression level: 10'):
        ZODB.config.databaseFromString(config)


def test_zodburi(cluster):
    import zodburi
    from neo.client.zodburi import resolve_uri
    uri = 'neo://%s@%s?read_only=true&cache_size=2MB&pool_size=7' % (
        cluster.name, cluster.master_nodes)
    assert resolve_uri(uri)[1] == {'pool_size': '7'}
    # Through zodburi's entry point, with its own database keywords.
    uri = 'neo://%s@%s?read_only=true&cache_size=2MB&database_name=x%s' % (
        cluster.name, cluster.master_nodes, cluster.uri_tls())
    factory, dbkw = zodburi.resolve_uri(uri)
    assert dbkw['database_name'] == 'x'
    storage = factory()
    try:
        assert storage.isReadOnly()
        assert storage._client.cache_stats()['budget'] == 2 << 20
        with pytest.raises(ReadOnlyError):
            storage.new_oid()
    finally:
        storage.close()


@pytest.mark.parametrize('uri,message', [
    ('neo://n@127.0.0.1:1/x', 'non-empty path'),
    ('neo://n@127.0.0.1:1#f', 'non-empty fragment'),
    ('zeo://n@127.0.0.1:1', 'expected neo:// or neos:// scheme'),
    ('neo://n@127.0.0.1:1?name=x', 'invalid option name'),
])
def test_zodburi_errors(uri, message):
    from neo.client.zodburi import resolve_uri
    with pytest.raises(ValueError, match=message):
        resolve_uri(uri)


def test_read_only(cluster):
    storage = cluster.storage(read_only=True)
    try:
        from ZODB.Connection import TransactionMetaData
        with pytest.raises(ReadOnlyError):
            storage.tpc_begin(TransactionMetaData())
        with pytest.raises(POSKeyError):
            storage.load(p64(1 << 40))
    finally:
        storage.close()


def test_many_storages_many_threads(cluster):
    storages = [cluster.storage() for _ in range(3)]
    errors = []

    def work(storage, n):
        from ZODB.Connection import TransactionMetaData
        try:
            for i in range(10):
                oid = storage.new_oid()
                t = TransactionMetaData()
                storage.tpc_begin(t)
                storage.store(oid, z64, b'%d-%d' % (n, i), '', t)
                storage.tpc_vote(t)
                tid = storage.tpc_finish(t)
                for s in storages:
                    assert s.loadSerial(oid, tid) == b'%d-%d' % (n, i)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(storages[n % 3], n))
               for n in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for s in storages:
        s.close()
    assert not errors


def test_tls_needs_all_three_files(cluster):
    with pytest.raises(ValueError, match='3 files must be provided'):
        Storage(master_nodes=cluster.master_nodes, name=cluster.name,
                ca='ca.pem')


def test_tls_files_are_checked_first(cluster, tmp_path):
    missing = str(tmp_path / 'missing.crt')
    with pytest.raises(ValueError, match='TLS ca file %s: ' % missing):
        Storage(master_nodes=cluster.master_nodes, name=cluster.name,
                ca=missing, cert=missing, key=missing)


def test_tls_and_plain_do_not_mix(cluster, tmp_path):
    """A plain client of a TLS cluster and a TLS client of a plain one
    fail in a bounded time, saying why."""
    if cluster.tls:
        kw = {}
        message = 'the peer uses TLS and this node does not'
    else:
        from neocluster import make_pki
        kw = credentials(make_pki(str(tmp_path)))
        message = 'the peer does not use TLS and this node does'
    start = time.time()
    with pytest.raises(NEOStorageConnectionError, match=message):
        Storage(master_nodes=cluster.master_nodes, name=cluster.name,
                _ready_timeout=2, **kw)
    assert time.time() - start < 10


@pytest.fixture(scope='module')
def tls_cluster():
    c = Cluster(tls=True).start()
    yield c
    c.stop()


def test_tls_untrusted_certificates_are_refused(tls_cluster):
    for name in ('foreign', 'revoked'):
        with pytest.raises(NEOStorageConnectionError, match='TLS'):
            tls_cluster.storage(_ready_timeout=2,
                                **credentials(tls_cluster.pki, name))


def test_neos_uri_takes_credentials_from_the_environment(tls_cluster,
                                                         monkeypatch):
    from neo.client.zodburi import resolve_uri
    for key, path in tls_cluster.tls.items():
        monkeypatch.setenv('NEO_' + key.upper(), path)
    factory, _ = resolve_uri('neos://%s@%s' % (tls_cluster.name,
                                              tls_cluster.master_nodes))
    storage = factory()
    try:
        assert storage.new_oid()
    finally:
        storage.close()


def test_unknown_keyword(cluster):
    with pytest.raises(TypeError):
        Storage(master_nodes=cluster.master_nodes, name=cluster.name,
                bogus=1)


def test_wrong_cluster_name(cluster):
    start = time.time()
    with pytest.raises(NEOStorageConnectionError):
        Storage(master_nodes=cluster.master_nodes, name='not-' + cluster.name,
                _ready_timeout=2, **cluster.tls)
    assert time.time() - start < 10


def test_wrong_master_address():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    start = time.time()
    with pytest.raises(NEOStorageConnectionError):
        Storage(master_nodes='127.0.0.1:%d' % port, name='x',
                _ready_timeout=2)
    assert time.time() - start < 10


def test_bad_master_syntax():
    with pytest.raises(ValueError):
        Storage(master_nodes='127.0.0.1:notaport', name='x')


def test_closed_storage(cluster):
    storage = cluster.storage()
    storage.close()
    with pytest.raises(NEOStorageClosedError):
        storage.load(z64)
    with pytest.raises(NEOStorageClosedError):
        storage.new_oid()
    storage.close()  # twice is fine


def test_cluster_stopped():
    """The cluster going away: operations fail with a clear error in a
    bounded time."""
    c = Cluster().start()
    storage = c.storage(_ready_timeout=2)
    try:
        c.stop()
        start = time.time()
        with pytest.raises(Exception) as info:
            storage.sync()
        assert 'neo' in type(info.value).__module__
        assert time.time() - start < 30
    finally:
        storage.close()
        c.stop()


_EXIT_SCRIPT = """
import sys, ZODB, transaction
from neo.client.Storage import Storage
storage = Storage(master_nodes=sys.argv[1], name=sys.argv[2],
                  **dict(zip(('ca', 'cert', 'key'), sys.argv[5:])))
db = ZODB.DB(storage)
connection = db.open()
connection.root()['exit'] = int(sys.argv[3])
transaction.commit()
if sys.argv[4] == 'close':
    db.close()
"""


def test_interpreter_exit_is_clean(cluster):
    # Regression: the invalidation thread waits in native code without the
    # GIL; at interpreter exit CPython ends daemon threads that come back
    # from native code with pthread_exit, which cannot unwind through Rust
    # and aborted the process ("FATAL: exception not rethrown"), with or
    # without close(). Many exits, so the race shows.
    for i in range(24):
        mode = 'close' if i % 2 else 'leave'
        result = subprocess.run(
            [sys.executable, '-c', _EXIT_SCRIPT, cluster.master_nodes,
             cluster.name, str(i), mode,
             *(cluster.tls[k] for k in ('ca', 'cert', 'key') if cluster.tls)],
            capture_output=True, timeout=60)
        assert result.returncode == 0, (mode, result.returncode,
                                        result.stderr.decode()[-2000:])


def test_wrong_checksums_fail_unless_ignored():
    """Data whose checksum does not match is refused; with
    ``ignore_wrong_checksum`` (NEO/py's option, to salvage a damaged
    database) it is returned anyway."""
    cluster = Cluster().start()
    try:
        db = ZODB.DB(cluster.storage())
        conn = db.open()
        conn.root()['salvage'] = 'precious ' * 10
        transaction.commit()
        db.close()
        cluster.stop(keep=True)
        import sqlite3
        with sqlite3.connect(cluster.database()) as sql:
            changed = sql.execute(
                "UPDATE data SET hash = X'%s'" % ('01' * 20)).rowcount
        assert changed > 0
        cluster.start()
        storage = cluster.storage()
        try:
            with pytest.raises(Exception, match='checksum'):
                storage.load(z64)
        finally:
            storage.close()
        storage = cluster.storage(ignore_wrong_checksum=True)
        try:
            data, _ = storage.load(z64)
            assert b'precious' in data
        finally:
            storage.close()
    finally:
        cluster.stop()


def test_sort_keys_are_unique_per_storage_instance(cluster):
    first, second = cluster.storage(), cluster.storage()
    try:
        assert first.sortKey() != second.sortKey()
        assert first.sortKey() == first.sortKey()
    finally:
        first.close()
        second.close()

"""The persistent client cache (``cache_file``): reused at the next start
for what the cluster did not change, dropped (with a log line) when it is
of another cluster, ahead of the cluster, or damaged, and never the cause of
a stale revision, even when its writer is killed mid-write (kill -9).

The truth every cached read is compared with is what a client without any
cache reads (``cache_size=0``)."""

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib

import pytest
import ZODB.config
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64, z64

from neocluster import Cluster

LOGGER = 'neo.client'


@pytest.fixture(scope='module')
def cluster():
    c = Cluster(storages=2, replicas=1).start()
    yield c
    c.stop()


def commit(storage, changes, serials):
    """Commits `changes` ({oid: data, or None to delete}) based on
    `serials` ({oid: serial}, updated); returns the TID."""
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    for oid, data in changes.items():
        if data is None:
            storage.deleteObject(oid, serials[oid], txn)
        else:
            storage.store(oid, serials.get(oid, z64), data, '', txn)
    storage.tpc_vote(txn)
    tid = storage.tpc_finish(txn)
    for oid in changes:
        serials[oid] = tid
    return tid


def create(storage, count, size=200, per_txn=10):
    """`count` new objects; returns {oid: serial}."""
    serials = {}
    oids = [storage.new_oid() for _ in range(count)]
    for first in range(0, count, per_txn):
        commit(storage, {oid: payload(oid, 0, size)
                         for oid in oids[first:first + per_txn]}, serials)
    return serials


def payload(oid, version, size=200):
    head = b'%d:%d:' % (u64(oid), version)
    return head + b'x' * max(0, size - len(head))


def read(storage, oid):
    """``(data, serial)``, or ``'deleted'``."""
    try:
        return storage.load(oid)
    except POSKeyError:
        return 'deleted'


def truth(cluster, oids):
    """What a client without any cache reads."""
    plain = cluster.storage(cache_size=0)
    try:
        plain.sync()
        return {oid: read(plain, oid) for oid in oids}
    finally:
        plain.close()


def stats(storage):
    return storage._client.cache_stats()


def messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_warm_restart(cluster, tmp_path, caplog):
    """Closed then reopened: every object is served by the file, exactly."""
    path = str(tmp_path / 'cache')
    storage = cluster.storage(cache_file=path)
    try:
        serials = create(storage, 60)
        for oid in serials:
            read(storage, oid)
    finally:
        storage.close()
    assert os.path.getsize(path) > 60 * 200
    expected = truth(cluster, serials)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        storage = cluster.storage(cache_file=path)
    try:
        before = stats(storage)
        assert before['restored'] >= 60
        got = {oid: read(storage, oid) for oid in serials}
        after = stats(storage)
        assert got == expected
        assert after['hits'] - before['hits'] == 60
        assert after['misses'] == before['misses']
    finally:
        storage.close()
    assert any('revisions reused' in m for m in messages(caplog))


def test_changes_while_closed_are_not_served(cluster, tmp_path, caplog):
    """Another client changes and deletes objects while the first is
    closed: after the restart those are loaded anew, the others are hits,
    and the old revisions stay in the cache as history, ended where the
    other client's transactions ended them."""
    path = str(tmp_path / 'cache')
    storage = cluster.storage(cache_file=path)
    try:
        serials = create(storage, 40)
        old = {oid: read(storage, oid) for oid in serials}
    finally:
        storage.close()
    oids = sorted(serials)
    changed, deleted = oids[::3], oids[1]
    other = cluster.storage()
    try:
        ends = {}
        for version, oid in enumerate(changed, 1):
            ends[oid] = commit(other, {oid: payload(oid, version)}, serials)
        ends[deleted] = commit(other, {deleted: None}, serials)
    finally:
        other.close()
    expected = truth(cluster, oids)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        storage = cluster.storage(cache_file=path)
    try:
        before = stats(storage)
        got = {oid: read(storage, oid) for oid in oids}
        after = stats(storage)
        assert got == expected
        assert got[deleted] == 'deleted'
        for oid in changed:
            assert got[oid] != old[oid]
        fresh = len(changed) + 1
        assert after['misses'] - before['misses'] == fresh
        assert after['hits'] - before['hits'] == len(oids) - fresh
        # History: the revision before each change, from the file.
        for oid, end in ends.items():
            hits = stats(storage)['hits']
            data, serial, next_serial = storage.loadBefore(oid, end)
            assert (data, serial, next_serial) == (old[oid][0], old[oid][1], end)
            assert stats(storage)['hits'] == hits + 1
    finally:
        storage.close()
    assert any('%d transactions since it was written ended %d'
               % (len(ends), len(ends)) in m for m in messages(caplog))


def test_file_within_the_budget(cluster, tmp_path, caplog):
    """The file never holds more than cache_size; reopened with a smaller
    cache_size, the most recently used revisions are kept."""
    path = str(tmp_path / 'cache')
    budget = 60000
    storage = cluster.storage(cache_file=path, cache_size=budget)
    try:
        serials = create(storage, 100, size=2000)
        oids = sorted(serials)
        for oid in oids:
            read(storage, oid)
        kept = stats(storage)['entries']
    finally:
        storage.close()
    # Each record takes 28 bytes beyond its data on disk, the cache counts
    # 80: the file stays under the budget (plus its header).
    assert 0 < os.path.getsize(path) <= budget + 100
    expected = truth(cluster, oids)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        storage = cluster.storage(cache_file=path, cache_size=budget // 2)
    try:
        restored = stats(storage)['restored']
        assert 0 < restored < kept
        # The last ones loaded were the most recently used.
        hits = stats(storage)['hits']
        for oid in oids[-restored:]:
            assert read(storage, oid) == expected[oid]
        assert stats(storage)['hits'] == hits + restored
    finally:
        storage.close()
    assert any('left out, over cache_size' in m for m in messages(caplog))


def test_too_old(cluster, tmp_path, caplog):
    """More transactions since the file than may be checked: dropped."""
    path = str(tmp_path / 'cache')
    storage = cluster.storage(cache_file=path)
    try:
        serials = create(storage, 10)
    finally:
        storage.close()
    other = cluster.storage()
    try:
        for version in range(1, 5):
            commit(other, {oid: payload(oid, version)
                           for oid in list(serials)[:2]}, serials)
    finally:
        other.close()
    expected = truth(cluster, serials)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        storage = cluster.storage(cache_file=path, _cache_check_limit=3)
    try:
        assert stats(storage)['restored'] == 0
        assert {oid: read(storage, oid) for oid in serials} == expected
    finally:
        storage.close()
    assert any('too old: more than 3 transactions' in m
               for m in messages(caplog)), messages(caplog)
    # The file written at that close is recent: reused.
    storage = cluster.storage(cache_file=path, _cache_check_limit=3)
    try:
        assert stats(storage)['restored'] > 0
    finally:
        storage.close()


def check_dropped(cluster, path, oids, reason, caplog):
    """Opens with `path`: the file must be dropped saying `reason`, and
    every load must be the truth."""
    expected = truth(cluster, oids)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        storage = cluster.storage(cache_file=path)
    try:
        assert stats(storage)['restored'] == 0
        assert {oid: read(storage, oid) for oid in oids} == expected
    finally:
        storage.close()
    dropped = [m for m in messages(caplog) if 'dropped' in m]
    assert dropped and reason in dropped[0], messages(caplog)


def test_other_cluster_with_the_same_name(tmp_path, caplog):
    """Same name, another database: dropped."""
    name = 'pcache-same-name-%d' % os.getpid()
    path = str(tmp_path / 'cache')
    first = Cluster(name=name).start()
    try:
        storage = first.storage(cache_file=path)
        try:
            oids = list(create(storage, 10))
        finally:
            storage.close()
    finally:
        first.stop()
    second = Cluster(name=name).start()
    try:
        storage = second.storage()
        try:
            # The same oids, other data.
            serials = {}
            commit(storage, {oid: b'second cluster' for oid in oids}, serials)
        finally:
            storage.close()
        check_dropped(second, path, oids, 'another cluster of that name',
                      caplog)
    finally:
        second.stop()


def copy_database(source, to):
    """Copies a storage's SQLite files (the database and its WAL)."""
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(to + suffix):
            os.remove(to + suffix)
        if os.path.exists(source + suffix):
            shutil.copy(source + suffix, to + suffix)


def test_cluster_restored_from_a_backup(tmp_path, caplog):
    """The database goes back to a backup taken before the file was
    written: the file's TID is ahead of the cluster (dropped); once the
    restored cluster committed past it, its TID is unknown there (dropped):
    objects written after the backup must not come back from the file."""
    cluster = Cluster().start()
    path = str(tmp_path / 'cache')
    backup = str(tmp_path / 'backup.sqlite')
    try:
        storage = cluster.storage()
        try:
            serials = create(storage, 10)
        finally:
            storage.close()
        cluster.stop(keep=True)
        copy_database(cluster.database(), backup)
        cluster.start()
        storage = cluster.storage(cache_file=path)
        try:
            later = create(storage, 10)
            commit(storage, {oid: b'after the backup' for oid in serials},
                   dict(serials))
            oids = sorted(serials) + sorted(later)
            for oid in oids:
                read(storage, oid)
        finally:
            storage.close()
        saved = str(tmp_path / 'cache.saved')
        shutil.copy(path, saved)
        cluster.stop(keep=True)
        copy_database(backup, cluster.database())
        cluster.start()
        check_dropped(cluster, path, oids, 'ahead of the cluster', caplog)
        assert not os.path.exists(path + '.tmp')
        # The restored cluster goes on past the file's TID.
        storage = cluster.storage()
        try:
            commit(storage, {oid: b'restored, then changed'
                             for oid in sorted(serials)[:3]}, serials)
        finally:
            storage.close()
        shutil.copy(saved, path)
        check_dropped(cluster, path, oids, 'not a transaction of this cluster',
                      caplog)
        assert all(read_plain == 'deleted' for read_plain in
                   truth(cluster, later).values())
    finally:
        cluster.stop()


@pytest.mark.parametrize('damage', [
    'truncated', 'flipped', 'version', 'empty', 'garbage', 'trailing',
    'renamed'])
def test_damaged_file(cluster, tmp_path, caplog, damage):
    """Damaged files are dropped with a log line, never served; so is a
    file of another cluster name (checksum recomputed: the header is
    ``NEOcache``, version u32, name length u16, name, ...; the trailer the
    CRC-32 of all before it, big-endian)."""
    path = str(tmp_path / 'cache')
    storage = cluster.storage(cache_file=path)
    try:
        serials = create(storage, 20)
    finally:
        storage.close()
    with open(path, 'rb') as f:
        content = bytearray(f.read())
    if damage == 'truncated':
        content = content[:len(content) * 2 // 3]
    elif damage == 'flipped':
        content[len(content) // 2] ^= 0x10
    elif damage == 'version':
        content[11] += 1
    elif damage == 'empty':
        content = b''
    elif damage == 'garbage':
        content = os.urandom(5000)
    elif damage == 'renamed':
        size = int.from_bytes(content[12:14], 'big')
        assert content[14:14 + size] == cluster.name.encode()
        content[14:14 + size] = b'X' * size
        content[-4:] = zlib.crc32(content[:-4]).to_bytes(4, 'big')
    else:
        content += b'\0'
    with open(path, 'wb') as f:
        f.write(content)
    reason = {'truncated': 'truncated', 'flipped': 'dropped',
              'version': 'format version', 'empty': 'not a cache file',
              'garbage': 'not a cache file', 'trailing': 'after the end',
              'renamed': 'written for cluster'}
    check_dropped(cluster, path, list(serials), reason[damage], caplog)


# The client killed mid-write: commits and loads forever, saving the cache
# every few milliseconds (argv: masters, name, cache file, oids as hex).
_WRITER = r'''
import random, sys
from ZODB.Connection import TransactionMetaData
from ZODB.utils import u64
from neo.client.Storage import Storage
masters, name, path = sys.argv[1:4]
oids = [bytes.fromhex(h) for h in sys.argv[4].split(',')]
storage = Storage(master_nodes=masters, name=name, cache_file=path,
                  cache_size=8 << 20, _cache_save_interval=0.002)
rng = random.Random()
serials = {oid: storage.load(oid)[1] for oid in oids}
print('ready', flush=True)
while True:
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    changed = rng.sample(oids, 5)
    for oid in changed:
        data = b'%d:%f:' % (u64(oid), rng.random())
        storage.store(oid, serials[oid], data + b'y' * rng.randrange(20000),
                      '', txn)
    storage.tpc_vote(txn)
    tid = storage.tpc_finish(txn)
    for oid in changed:
        serials[oid] = tid
    for oid in rng.sample(oids, 20):
        storage.load(oid)
'''


def test_kill_9_mid_write(cluster, tmp_path):
    """A client that saves its cache continuously while committing is
    killed (SIGKILL) at random moments, several times; each time, a client
    opened on its cache file serves exactly what the cluster holds."""
    path = str(tmp_path / 'cache')
    storage = cluster.storage()
    try:
        oids = sorted(create(storage, 100, size=10000))
    finally:
        storage.close()
    rng = random.Random(os.getpid())
    restored = torn = 0
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, '-c', _WRITER, cluster.master_nodes,
             cluster.name, path, ','.join(oid.hex() for oid in oids)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            assert child.stdout.readline().strip() == b'ready'
            time.sleep(rng.uniform(0.3, 1.5))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        torn += os.path.exists(path + '.tmp')
        expected = truth(cluster, oids)
        storage = cluster.storage(cache_file=path, cache_size=8 << 20)
        try:
            restored += stats(storage)['restored']
            got = {oid: read(storage, oid) for oid in oids}
            # Twice: the second time everything comes from the cache.
            again = {oid: read(storage, oid) for oid in oids}
        finally:
            storage.close()
        assert got == expected
        assert again == expected
    # The file was used, not just dropped each time.
    assert restored > 0
    print('kill -9: %d of 8 kills left a partial temporary file; %d'
          ' revisions restored in all' % (torn, restored))


def test_zconfig_and_uri(cluster, tmp_path):
    """``cache-file`` in <NEOStorage>, ``cache_file`` in neo:// URIs."""
    from neo.client.zodburi import resolve_uri
    import ZConfig
    path = str(tmp_path / 'zconfig-cache')
    config = """
    %%import neo.client
    <zodb>
      <NEOStorage>
        master_nodes %s
        name %s
        cache-file %s
      </NEOStorage>
    </zodb>
    """
    db = ZODB.config.databaseFromString(
        config % (cluster.master_nodes, cluster.name, path))
    try:
        assert 'restored' in db.storage._client.cache_stats()
        with db.transaction() as conn:
            conn.root()['pcache'] = 1
    finally:
        db.close()
    assert os.path.exists(path)
    with pytest.raises(ZConfig.DataConversionError):
        ZODB.config.databaseFromString(config % (
            cluster.master_nodes, cluster.name, str(tmp_path / 'no' / 'x')))
    factory, dbkw = resolve_uri('neo://%s@%s?cache_file=%s&pool_size=3' % (
        cluster.name, cluster.master_nodes, path))
    assert dbkw == {'pool_size': '3'}
    storage = factory()
    try:
        assert stats(storage)['restored'] > 0
    finally:
        storage.close()
    # Without the option, no persistent cache.
    storage = cluster.storage()
    try:
        assert 'restored' not in stats(storage)
    finally:
        storage.close()

"""Garbage collection by ``Storage.pack(t, referencesf)``: what is
unreachable from the root at the pack time goes, everything else stays."""

import time

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.POSException import POSKeyError
from ZODB.serialize import referencesf
from ZODB.utils import p64, u64

from neo import _neo
from neocluster import Cluster


@pytest.fixture(params=[(1, 0), (2, 1)], ids=['1storage', '2storages-replicas1'])
def cluster(request):
    storages, replicas = request.param
    c = Cluster(storages, replicas).start()
    yield c
    c.stop()


def _storage(cluster):
    storage = cluster.storage()
    storage.wait_for_pack = True
    return storage


def _pause():
    """Makes the next commit's time distinct from what precedes."""
    now = time.time()
    while time.time() <= now + 0.01:
        time.sleep(0.005)


def _gone(storage, oid, serials):
    with pytest.raises(POSKeyError):
        storage.load(oid)
    for serial in serials:
        with pytest.raises(POSKeyError):
            storage.loadSerial(oid, serial)
    with pytest.raises(POSKeyError):
        storage.loadBefore(oid, p64(u64(storage.lastTransaction()) + 1))
    # No record is left, not even a deletion.
    with pytest.raises(_neo.NeoError) as info:
        storage._client.object(oid, None, None)
    assert info.value.args[0] == 'oid_does_not_exist'


def test_pack_collects_garbage(cluster):
    storage = _storage(cluster)
    db = ZODB.DB(storage)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        root['a'] = a = PersistentMapping()
        a['c'] = c = PersistentMapping()          # reachable through a
        root['d'] = d = PersistentMapping()       # unlinked before pack time
        d['f'] = f = PersistentMapping()          # only reachable from d
        root['g'] = g = PersistentMapping()       # unlinked after pack time
        g['h'] = h = PersistentMapping()
        tm.commit()
        d['x'] = 1
        tm.commit()
        serials_d = [entry['tid'] for entry in storage.history(d._p_oid, 10)]
        serials_f = [entry['tid'] for entry in storage.history(f._p_oid, 10)]
        assert len(serials_d) == 2
        del root['d']
        tm.commit()
        _pause()
        pack_time = time.time()
        _pause()
        del root['g']
        tm.commit()
        len_before = len(storage)

        db.pack(pack_time)

        _gone(storage, d._p_oid, serials_d)
        _gone(storage, f._p_oid, serials_f)
        for obj in (root, a, c, g, h):
            storage.load(obj._p_oid)
        assert len(storage) == len_before - 2
        # The undo log shows neither pack's own transactions (the order,
        # the deletions) nor what precedes the pack time.
        log = storage.undoLog(0, 100)
        assert [d['description'] for d in log] == [b''] * len(log)
        assert len(log) == 1 and log[0]['time'] > pack_time
        # Unlinked after the pack time: still there for an undo.
        undo_id = log[0]['id']
        db.undo(undo_id, tm.get())
        tm.commit()
        conn.sync()
        assert root['g']['h'] is not None
        assert sorted(root) == ['a', 'g']

        # The next pack, now: g, h are reachable again; nothing goes.
        _pause()
        db.pack(time.time())
        for obj in (root, a, c, g, h):
            storage.load(obj._p_oid)
        conn.close()
    finally:
        db.close()


def test_pack_without_gc_keeps_garbage(cluster):
    storage = _storage(cluster)
    db = ZODB.DB(storage)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        root['d'] = d = PersistentMapping()
        tm.commit()
        del root['d']
        tm.commit()
        _pause()
        storage.pack(time.time(), referencesf, gc=False)
        storage.load(d._p_oid)
        conn.close()
    finally:
        db.close()


def test_pack_gc_sees_garbage_linked_again(cluster):
    """A client holding an unlinked object links it again while pack is
    about to delete it: GC starts over and keeps it."""
    storage = _storage(cluster)
    db = ZODB.DB(storage)
    other = ZODB.DB(cluster.storage())
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        root['a'] = PersistentMapping()
        root['d'] = PersistentMapping()
        tm.commit()
        # The other client loads d before it is unlinked.
        tm2 = transaction.TransactionManager()
        conn2 = other.open(tm2)
        conn2.sync()
        d2 = conn2.root()['d']
        d2._p_activate()
        a2 = conn2.root()['a']
        del root['d']
        tm.commit()
        _pause()
        pack_time = time.time()

        # The third sync of pack is after the deletions are voted.
        calls = []
        sync = storage.sync

        def sync_and_link(*args, **kw):
            calls.append(None)
            if len(calls) == 3:
                a2['d'] = d2
                tm2.commit()
            return sync(*args, **kw)
        storage.sync = sync_and_link
        try:
            db.pack(pack_time)
        finally:
            del storage.sync
        assert len(calls) > 3  # started over
        conn.sync()
        assert root['a']['d'] is not None
        storage.load(d2._p_oid)
        conn2.close()
        conn.close()
    finally:
        other.close()
        db.close()

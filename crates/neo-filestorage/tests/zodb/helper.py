"""ZODB's side of neo-filestorage's tests: makes Data.fs files with ZODB
and dumps what ZODB sees in them, as JSON, for the Rust tests to compare.

    helper.py make PATH [--small] [--pack]   a file with everything the format has
    helper.py append PATH                    two more transactions, by ZODB
    helper.py dump PATH                      ZODB's view of the file, read-only
    helper.py reindex PATH                   open for writing and close: ZODB saves PATH.index
    helper.py hold-lock PATH                 hold the file open for writing until stdin closes
    helper.py try-open PATH                  "locked" or "opened"
"""

import json
import sys
import time

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
from ZODB.utils import maxtid, p64, u64


def commit(user, description, **extension):
    txn = transaction.get()
    txn.user = user
    txn.description = description
    for key, value in extension.items():
        txn.setExtendedInfo(key, value)
    txn.commit()


def undo_last(db, description):
    """Undoes the newest undoable transaction whose description matches."""
    for entry in db.undoLog(0, 100):
        if entry['description'] == description:
            db.undo(entry['id'])
            commit('undoer', 'undo ' + description)
            return
    raise SystemExit('nothing to undo named %r' % description)


def make(path, small, pack):
    n_objects, rounds = (4, 3) if small else (200, 12)
    db = ZODB.DB(FileStorage(path))
    conn = db.open()
    root = conn.root()
    objs = [PersistentMapping({'i': i}) for i in range(n_objects)]
    root['objs'] = objs
    # Objects no later round touches, so that undo can revert them.
    undoable = [PersistentMapping({'u': i}) for i in range(3)]
    root['undoable'] = undoable
    commit('alice', 'create', purpose='test', n=n_objects)
    for u in undoable:
        u['x'] = 1
    commit('alice', 'prepare')
    for r in range(rounds):
        for i in range(r % 3, n_objects, 3):
            objs[i]['v'] = r
        commit('bob', 'round %d' % r)
        if pack and r == rounds // 2:
            # Pack time between two transactions, away from both.
            time.sleep(0.2)
            pack_time = time.time()
            time.sleep(0.2)
    if not small:
        root['big'] = PersistentMapping({'data': bytes(range(256)) * 400})
        commit('carol', 'big record', size=102400)
        root['big']['data'] = b'y' * 70000
        commit('carol', 'big again')
    for u in undoable:
        u['x'] = 2
    commit('alice', 'to undo')
    # Undo: backpointers to the revisions of 'prepare'.
    undo_last(db, 'to undo')
    # An undone creation: no-data record for the new object.
    root['tmp'] = PersistentMapping({'short': 'lived'})
    commit('dave', 'tmp')
    undo_last(db, 'tmp')
    # Undoing an undo: backpointers to backpointers.
    undo_last(db, 'undo to undo')
    # A deletion, at the storage level.
    orphan = PersistentMapping({'orphan': True})
    root['orphan'] = orphan
    commit('erin', 'orphan')
    oid = orphan._p_oid
    del root['orphan']
    commit('erin', 'unlink orphan')
    storage = db.storage
    serial = storage.load(oid)[1]
    txn = TransactionMetaData('erin', 'delete orphan')
    storage.tpc_begin(txn)
    storage.deleteObject(oid, serial, txn)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)
    if pack:
        db.pack(pack_time)
        objs[0]['after'] = 'pack'
        commit('frank', 'after pack')
    conn.close()
    db.close()


def append(path):
    db = ZODB.DB(FileStorage(path))
    conn = db.open()
    root = conn.root()
    root['appended'] = PersistentMapping({'by': 'zodb'})
    commit('zodb', 'append 1')
    root['appended']['again'] = True
    commit('zodb', 'append 2')
    conn.close()
    db.close()


def hx(b):
    return None if b is None else b.hex()


def load(method, *args):
    try:
        r = method(*args)
    except POSKeyError:
        return {'kind': 'nodata'}
    if r is None:
        return {'kind': 'norevision'}
    if isinstance(r, bytes):   # loadSerial
        return {'kind': 'found', 'data': r.hex()}
    data, serial, end = r
    return {'kind': 'found', 'data': hx(data), 'serial': hx(serial), 'next': hx(end)}


def dump(path):
    fs = FileStorage(path, read_only=True)
    txns = []
    revisions = {}
    for t in fs.iterator():
        records = []
        for r in t:
            records.append({'oid': hx(r.oid), 'data': hx(r.data), 'data_txn': hx(r.data_txn)})
            revisions.setdefault(r.oid, []).append(r.tid)
        txns.append({
            'tid': hx(t.tid), 'status': t.status, 'user': hx(t.user),
            'description': hx(t.description), 'extension': hx(t.extension_bytes),
            'position': t._tpos, 'records': records,
        })
    objects = []
    for oid, tids in sorted(revisions.items()):
        loads = []
        for tid in tids:
            after = p64(u64(tid) + 1)
            loads.append({'tid': hx(tid),
                          'before': load(fs.loadBefore, oid, tid),
                          'before_next': load(fs.loadBefore, oid, after),
                          'serial': load(fs.loadSerial, oid, tid)})
        objects.append({'oid': hx(oid), 'loads': loads,
                        'latest': load(fs.loadBefore, oid, maxtid),
                        'history': [hx(h['tid']) for h in fs.history(oid, size=1 << 30)]})
    json.dump({
        'size': fs.getSize(), 'last_tid': hx(fs.lastTransaction()),
        'objects_count': len(fs), 'max_oid': hx(fs._oid),
        'used_index': fs._used_index, 'txns': txns, 'objects': objects,
    }, sys.stdout)
    fs.close()


def main():
    command, path = sys.argv[1], sys.argv[2]
    if command == 'make':
        make(path, '--small' in sys.argv, '--pack' in sys.argv)
    elif command == 'append':
        append(path)
    elif command == 'dump':
        dump(path)
    elif command == 'reindex':
        FileStorage(path).close()
    elif command == 'hold-lock':
        fs = FileStorage(path)
        print('locked', flush=True)
        sys.stdin.read()
        fs.close()
    elif command == 'try-open':
        try:
            FileStorage(path).close()
            print('opened')
        except Exception as e:
            print('locked' if 'lock' in type(e).__name__.lower() else repr(e))
    else:
        raise SystemExit(__doc__)


main()

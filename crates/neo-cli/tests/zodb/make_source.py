"""Makes a FileStorage with ZODB, for the Importer's tests, and dumps what
ZODB's own iterator sees in it as JSON.

    make_source.py PATH MEGABYTES SEED DUMP
    make_source.py --dump PATH DUMP      (only the dump of an existing file)

Transactions carry a user, a description and an extension; objects are
PersistentMappings holding bytes (half random, half compressible), created
and modified over time; some transactions are undone (back-pointers, and
an undone creation: a record without data).
"""

import base64
import hashlib
import json
import random
import sys

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

def make(path, megabytes, seed):
    rng = random.Random(seed)
    db = ZODB.DB(FileStorage(path))
    conn = db.open()
    root = conn.root()
    objects = []
    size = 0
    payload = 4096
    per_transaction = 16
    number = 0
    while size < megabytes << 20:
        number += 1
        txn = transaction.get()
        txn.setUser("importer-test")
        txn.note("transaction %d" % number)
        txn.setExtendedInfo("number", number)
        for _ in range(per_transaction):
            if objects and rng.random() < 0.2:
                obj = rng.choice(objects)
            else:
                # Unreferenced objects, added to the connection: a container
                # would be rewritten with every transaction.
                obj = PersistentMapping()
                conn.add(obj)
                objects.append(obj)
            if rng.random() < 0.5:
                data = rng.randbytes(payload)
            else:
                data = (b"compressible %d " % number) * (payload // 20)
            obj["data"] = data
            size += len(data)
        txn.commit()


    def undo(tid):
        db.undo(base64.encodebytes(tid).rstrip(b"\n"))
        transaction.commit()


    # Modifications undone (back-pointers), then a creation undone (no data).
    for obj in objects[:3]:
        obj["data"] = b"to be undone"
        transaction.commit()
        undo(db.lastTransaction())
    txn = transaction.get()
    txn.note("creation to undo")
    fresh = PersistentMapping(data=b"short-lived")
    root["fresh"] = fresh
    txn.commit()
    undo(db.lastTransaction())
    conn.close()
    db.close()


def dump(path, dump_path):
    storage = FileStorage(path, read_only=True)
    records = {}
    # Not lastTransaction(): after a crash, that is the tid of the
    # transaction cut short, which the iterator leaves out.
    last_tid = None
    for txn in storage.iterator():
        last_tid = txn.tid
        for record in txn:
            records.setdefault(record.oid.hex(), []).append([
                txn.tid.hex(),
                None if record.data is None else hashlib.sha1(record.data).hexdigest(),
                None if record.data_txn is None else record.data_txn.hex(),
            ])
    storage.close()
    with open(dump_path, "w") as f:
        json.dump({"last_tid": last_tid.hex(), "objects": records}, f)


if sys.argv[1] == "--dump":
    dump(sys.argv[2], sys.argv[3])
else:
    make(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    dump(sys.argv[1], sys.argv[4])

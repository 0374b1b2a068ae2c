"""Prints ZODB's iteration of FileStorages as JSON, one line per
transaction: tid, status, user, description, extension (hex), and for
each record oid, tid, the data's length and SHA-256 (null for no data)
and data_txn, so that two files can be compared line by line.

usage: python dump.py PATH
"""
import hashlib
import json
import sys

import ZODB.FileStorage

storage = ZODB.FileStorage.FileStorage(sys.argv[1], read_only=True)
for txn in storage.iterator():
    records = []
    for record in txn:
        data = record.data
        records.append({
            "oid": record.oid.hex(),
            "tid": record.tid.hex(),
            "data": None if data is None
                else [len(data), hashlib.sha256(data).hexdigest()],
            "data_txn": record.data_txn and record.data_txn.hex(),
        })
    print(json.dumps({
        "tid": txn.tid.hex(),
        "status": txn.status,
        "user": txn.user.hex(),
        "description": txn.description.hex(),
        "extension": txn.extension_bytes.hex(),
        "records": records,
    }))
storage.close()

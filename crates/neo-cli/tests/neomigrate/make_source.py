"""Makes the FileStorage that tests/neomigrate.rs copies into NEO and back:
several transactions with user, description and extension, objects with
many revisions, undos (back-pointers, and an undone creation: a record
without data), a record over 1 MiB, a pack in the middle (transactions
with status 'p') and more commits after it.

usage: python make_source.py PATH
"""
import sys
import time

import transaction
import ZODB
import ZODB.FileStorage
from persistent.mapping import PersistentMapping

path = sys.argv[1]
storage = ZODB.FileStorage.FileStorage(path)
db = ZODB.DB(storage)


def commit(note, user="", extension=None):
    txn = transaction.get()
    txn.note(note)
    if user:
        txn.setUser(user, "/neomigrate")
    for key, value in (extension or {}).items():
        txn.setExtendedInfo(key, value)
    txn.commit()


def last_undo_id():
    return db.undoLog(0, 1)[0]["id"]


def undo_last(note):
    db.undo(last_undo_id())
    commit(note, "undoer")


connection = db.open()
root = connection.root()
root["objects"] = PersistentMapping()
commit("create the container", "alice", {"step": 0, "bytes": b"\x00\xff"})



def revisions(first, last):
    """300 objects, a revision each per pass, 20 objects per transaction."""
    for revision in range(first, last):
        for start in range(0, 300, 20):
            for i in range(start, start + 20):
                key = "o%03d" % i
                if key not in root["objects"]:
                    root["objects"][key] = PersistentMapping()
                root["objects"][key]["value"] = (i, revision, "x" * (i % 50))
            commit("revision %d of %d.." % (revision, start), "bob",
                   {"revision": revision})


revisions(0, 3)
# An undo that the pack will resolve into data.
root["objects"]["o003"]["value"] = "undone before the pack time"
commit("a change to undo early", "alice")
undo_last("undo the early change")

# The pack time: what was written before is rewritten with status 'p'.
connection.sync()
time.sleep(0.05)
pack_time = time.time()
time.sleep(0.05)

revisions(3, 6)

# A record over 1 MiB, not compressible to nothing.
root["big"] = PersistentMapping()
root["big"]["blob"] = bytes(range(256)) * (5 << 12)  # 1.25 MiB
commit("a big record", "carol")

# Undo of a change: back-pointers to the previous revisions; undoing the
# undo points back again.
root["objects"]["o007"]["value"] = "to be undone"
commit("a change to undo", "alice")
undo_last("undo the change")
undo_last("redo the change")

# Undo of a creation: the new object gets a record without data.
root["created"] = PersistentMapping(note="short-lived")
commit("a creation to undo", "alice")
undo_last("undo the creation")

db.pack(pack_time)
connection.sync()

for revision in range(6, 9):
    for i in range(0, 300, 7):
        root["objects"]["o%03d" % i]["value"] = (i, revision)
    commit("after the pack at %d" % revision, "dave", {"after": True})

root["objects"]["o011"]["value"] = "undone after the pack"
commit("another change to undo", "erin")
undo_last("undo after the pack")

# And more after the pack itself.
root["objects"]["o001"]["value"] = "last"
commit("the last one", "frank", {"last": [1, 2, 3]})
connection.close()
db.close()

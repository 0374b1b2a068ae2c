"""Micro-benchmark of what every commit does for each record it stores and
the revision that record is based on: ``Storage._oid_references``, with
the native scanner (now) and with ``ZODB.serialize.referencesf`` alone
(before). Not a test: figures, on the records of ``test_references``'s
ZODB corpus (mappings, lists, BTree buckets and trees of every kind).

    target/py-venv/bin/python crates/neo-py/tests/bench_references.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ZODB.serialize import referencesf  # noqa: E402

from neo.client.Storage import _is_record, _oid_references  # noqa: E402
from test_references import _zodb_corpus  # noqa: E402


def python_path(data):
    """``_oid_references`` as it was: referencesf for every record."""
    if not _is_record(data):
        return set()
    try:
        refs = referencesf(data)
    except Exception:
        return set()
    return {ref for ref in refs if isinstance(ref, bytes) and len(ref) == 8}


def best_of(function, records, rounds=7):
    """Seconds per record: the best of `rounds` passes over them all."""
    best = float('inf')
    for _ in range(rounds):
        start = time.perf_counter()
        for data in records:
            function(data)
        best = min(best, time.perf_counter() - start)
    return best / len(records)


def main():
    records = _zodb_corpus()
    buckets = [data for data in records if b'\nOOBucket\n' in data[:40]]
    for data in records:
        assert _oid_references(data) == python_path(data)
    print('%d records, %d bytes on average; %d OOBuckets'
          % (len(records), sum(map(len, records)) // len(records),
             len(buckets)))
    for name, corpus in (('all records', records), ('OOBuckets', buckets)):
        before = best_of(python_path, corpus)
        after = best_of(_oid_references, corpus)
        print('%-12s referencesf %6.2f us  scanner %6.2f us  x%.1f'
              % (name, before * 1e6, after * 1e6, before / after))


if __name__ == '__main__':
    main()

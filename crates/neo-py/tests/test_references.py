"""``_neo.references``, the Rust scanner of ZODB records, against the judge:
``ZODB.serialize.referencesf``. Whenever the scanner answers, referencesf
succeeds and returns the same list (same oids, same order, same
duplicates); whenever referencesf raises, the scanner says ``None`` (and
``Storage`` then asks referencesf itself). Records come from a real ZODB
stack (``ZODB.DB`` on ``MappingStorage``: mappings, lists, BTrees of every
kind, weak and cross-database references, classes with
``__getnewargs__``), from picklers of every protocol fed random values and
persistent ids of every form, and from random mutations of all of these.
No cluster is needed."""

import contextlib
import io
import pickle
import random
import resource

import pytest
import transaction
import zodbpickle.pickle
import ZODB
from BTrees.IIBTree import IIBTree
from BTrees.IOBTree import IOBTree
from BTrees.LOBTree import LOBTree
from BTrees.OIBTree import OIBTree
from BTrees.OOBTree import OOBTree, OOSet, OOTreeSet
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from persistent.wref import PersistentWeakKeyDictionary, WeakRef
from ZODB.MappingStorage import MappingStorage
from ZODB.serialize import referencesf

from neo import _neo
from neo.client import Storage as storage_module


class Item(Persistent):
    """A persistent object with some state."""

    def __init__(self, value=None):
        self.value = value


class WithArgs(Persistent):
    """Its class metadata carries ``__getnewargs__``'s result, and other
    records reference it by plain oid."""

    def __new__(cls, name='x'):
        return super().__new__(cls)

    def __init__(self, name='x'):
        self.name = name

    def __getnewargs__(self):
        return (self.name,)


def _judge(data):
    """referencesf's list, or None if it raises."""
    try:
        return referencesf(data)
    except Exception:
        return None


def _check(data):
    """The scanner agrees with referencesf; returns whether it answered."""
    got = _neo.references(data)
    expected = _judge(data)
    if got is None:
        return False
    assert expected is not None, (data, got)
    assert got == expected, data
    return True


def _records(storage):
    return [record.data for txn in storage.iterator() for record in txn
            if record.data is not None]


def _odd_value(rng, depth=0):
    """Values of every kind a state may hold."""
    kinds = ['int', 'bigint', 'neg', 'float', 'bool', 'none', 'bytes',
             'longbytes', 'ascii', 'text', 'tuple', 'list', 'dict']
    if depth > 3:
        kinds = kinds[:10]
    kind = rng.choice(kinds)
    if kind == 'int':
        return rng.randrange(1 << 16)
    if kind == 'bigint':
        return rng.randrange(1 << 200)
    if kind == 'neg':
        return -rng.randrange(1 << 40)
    if kind == 'float':
        return rng.random() * 1e6
    if kind == 'bool':
        return rng.random() < 0.5
    if kind == 'none':
        return None
    if kind == 'bytes':
        return rng.randbytes(rng.randrange(20))
    if kind == 'longbytes':
        return rng.randbytes(300)
    if kind == 'ascii':
        return 'k%d' % rng.randrange(1000)
    if kind == 'text':
        return 'é\u20ac\U0001f600' * rng.randrange(1, 4)
    items = [_odd_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 'tuple':
        return tuple(items)
    if kind == 'list':
        return items
    return {str(i): item for i, item in enumerate(items)}


def _zodb_corpus():
    """Every revision of a database built through ZODB's own stack."""
    rng = random.Random(16)
    storages = {'main': MappingStorage(), 'other': MappingStorage()}
    databases = {}
    db = ZODB.DB(storages['main'], databases=databases, database_name='main')
    ZODB.DB(storages['other'], databases=databases, database_name='other')
    try:
        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        root = conn.root()
        other = conn.get_connection('other')
        root['items'] = items = PersistentList(Item(i) for i in range(50))
        root['mapping'] = PersistentMapping(
            {'k%d' % i: items[i] for i in range(0, 50, 3)})
        root['args'] = [WithArgs('n%d' % i) for i in range(5)]
        root['odd'] = PersistentMapping(
            {'v%d' % i: _odd_value(rng) for i in range(200)})
        root['big'] = PersistentList(range(5000))
        root['shared'] = Item(((items[1], items[2]), (items[1], items[2])))
        # Cross-database references.
        foreign = Item('foreign')
        other.root()['foreign'] = foreign
        other.add(foreign)
        root['foreign'] = foreign
        root['foreign_holder'] = Item([foreign, items[3]])
        # Weak references, alone and as the keys of their dictionary.
        root['weak'] = Item([WeakRef(items[4]), WeakRef(items[5])])
        weak_dict = PersistentWeakKeyDictionary()
        weak_dict[items[6]] = 'six'
        root['weak_dict'] = weak_dict
        tm.commit()
        # BTrees big enough to split into buckets and trees.
        trees = {
            'oo': OOBTree(), 'io': IOBTree(), 'lo': LOBTree(), 'oi': OIBTree(),
            'ii': IIBTree(), 'set': OOSet(), 'treeset': OOTreeSet(),
        }
        root.update(trees)
        for i in range(3000):
            key = 'key%06d' % rng.randrange(100000)
            trees['oo'][key] = items[i % 50] if i % 3 else key
            trees['io'][i] = items[i % 50]
            trees['lo'][i << 33] = (items[i % 50], i)
            trees['oi'][key] = i
            trees['ii'][i] = i * 2
            trees['treeset'].insert(key)
            if i < 20:
                trees['set'].insert(key)
            if i % 500 == 0:
                tm.commit()
        tm.commit()
        # More revisions: objects moved, deleted, modified.
        for i in range(20):
            del trees['oo'][next(iter(trees['oo'].keys()))]
            items[i].value = ('moved', items[i + 1])
            root['mapping']['k%d' % i] = items[49 - i]
            tm.commit()
        conn.close()
        return _records(storages['main']) + _records(storages['other'])
    finally:
        for each in databases.values():
            each.close()


class Ref:
    """Stands for a persistent id in the values pickled below."""

    def __init__(self, pid):
        self.pid = pid


def _persistent_id(obj):
    return obj.pid if isinstance(obj, Ref) else None


def _random_pid(rng):
    oid = rng.choice([rng.randbytes(8), b'\0' * 7 + bytes([rng.randrange(128)]),
                      rng.randbytes(rng.randrange(12))])
    forms = [
        lambda: oid,
        lambda: (oid, Item),
        lambda: (oid, None),
        lambda: (oid,),
        lambda: ['w', (oid,)],
        lambda: ['w', (oid, 'other')],
        lambda: ['m', ('other', oid, Item)],
        lambda: ['n', ('other', oid)],
        lambda: [oid],
        lambda: oid.decode('latin-1'),
        lambda: 'abcdefgh',
        lambda: ('abcdefgh', None),
        # Forms referencesf refuses.
        lambda: (),
        lambda: 7,
        lambda: (7, Item),
        lambda: ([oid], None),
        lambda: {'a': oid},
    ]
    return rng.choice(forms)()


def _random_state(rng, depth=0):
    if depth > 3 or rng.random() < 0.3:
        if rng.random() < 0.4:
            return Ref(_random_pid(rng))
        return _odd_value(rng, 4)
    items = [_random_state(rng, depth + 1) for _ in range(rng.randrange(6))]
    kind = rng.randrange(3)
    if kind == 0:
        return tuple(items)
    if kind == 1:
        return items
    return {'k%d' % i: item for i, item in enumerate(items)}


def _dump(pickler_class, protocol, meta, state):
    """A record as ObjectWriter makes one: one pickler (one memo) for both."""
    out = io.BytesIO()
    pickler = pickler_class(out, protocol)
    pickler.persistent_id = _persistent_id
    pickler.dump(meta)
    pickler.dump(state)
    return out.getvalue()


def _pickler_corpus(count):
    """Records of random states with random persistent ids, written by
    zodbpickle (protocols 1 to 3, as ZODB) and the standard library
    (protocols 0 to 5: zodbpickle's unpickler refuses 4 and 5)."""
    rng = random.Random(1616)
    records = []
    writers = [(zodbpickle.pickle.Pickler, p) for p in (1, 2, 3)] + [
        (pickle.Pickler, p) for p in range(6)]
    for i in range(count):
        pickler_class, protocol = writers[i % len(writers)]
        meta = rng.choice([Item, (Item, ('a',)), ((Item.__module__, 'Item'), None),
                           Ref((b'\0' * 7 + b'\x09', None))])
        state = _random_state(rng)
        try:
            records.append(_dump(pickler_class, protocol, meta, state))
        except (pickle.PicklingError, ValueError, TypeError,
                UnicodeEncodeError):
            pass  # a pid protocol 0 cannot write
    return records


@contextlib.contextmanager
def _address_space_limited(extra=1 << 30):
    """Mutated records can make referencesf's unpickler allocate a memo of
    gigabytes (an index of 2**32): with the address space limited, that
    allocation fails (MemoryError, referencesf raises) instead."""
    with open('/proc/self/status') as status:
        size = next(int(line.split()[1]) * 1024 for line in status
                    if line.startswith('VmSize:'))
    previous = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


def _mutants(rng, data, count):
    for _ in range(count):
        mutant = bytearray(data)
        kind = rng.randrange(5)
        if kind == 0 and mutant:  # truncated
            del mutant[rng.randrange(len(mutant)):]
        elif kind == 1:  # bytes changed
            for _ in range(rng.randrange(1, 4)):
                if mutant:
                    mutant[rng.randrange(len(mutant))] = rng.randrange(256)
        elif kind == 2:  # bytes inserted
            at = rng.randrange(len(mutant) + 1)
            mutant[at:at] = rng.randbytes(rng.randrange(1, 4))
        elif kind == 3 and mutant:  # bytes removed
            at = rng.randrange(len(mutant))
            del mutant[at:at + rng.randrange(1, 4)]
        else:  # an opcode of another record spliced in
            at = rng.randrange(len(mutant) + 1)
            mutant[at:at] = rng.choice([b'Q', b'(', b'0', b'1', b'2', b't',
                                        b'\x85', b'\x86', b'h\x00', b'e', b'u',
                                        b'N', b')', b']', b'}', b's', b'a'])
        yield bytes(mutant)


@pytest.fixture(scope='module')
def zodb_records():
    records = _zodb_corpus()
    assert len(records) > 200
    return records


@pytest.fixture(scope='module')
def pickler_records():
    return _pickler_corpus(3000)


def test_the_scanner_is_used():
    """ZODB's referencesf runs zodbpickle's C unpickler here, the one the
    scanner follows: Storage uses it."""
    assert storage_module._SCANNER


def test_every_record_zodb_writes_is_answered_exactly(zodb_records):
    """ZODB's records (protocol 3) are all answered, none left to Python:
    otherwise the scanner would save nothing."""
    references = 0
    for data in zodb_records:
        assert _check(data), data
        references += len(_neo.references(data))
    assert references > 1000


def test_every_form_of_persistent_id_is_judged_like_referencesf(
        pickler_records):
    answered = refused = 0
    for data in pickler_records:
        if _check(data):
            answered += 1
        elif _judge(data) is None:
            refused += 1
    # Both outcomes are exercised: pids referencesf takes, and records
    # it refuses (bad pids, protocols 4 and 5).
    assert answered > len(pickler_records) // 4
    assert refused > len(pickler_records) // 10


def test_mutated_records_are_answered_as_referencesf_or_not_at_all(
        zodb_records, pickler_records):
    rng = random.Random(1717)
    small = [data for data in zodb_records if len(data) < 4000]
    sample = rng.sample(small, min(len(small), 300)) + rng.sample(
        pickler_records, 500)
    cases = answered = 0
    with _address_space_limited():
        for data in sample:
            for mutant in _mutants(rng, data, 12):
                cases += 1
                answered += _check(mutant)
    assert cases >= 9000
    assert answered > cases // 10


# Opcodes with their arguments, for records made of random sequences of
# them: most are nonsense to a pickler, many are accepted by referencesf's
# unpickler, and every stack rule (marks, memo, what APPEND or SETITEM
# accept, what can be a dict key, what a pid may be) is met.
_PIECES = [
    b'N', b'\x88', b'\x89', b'K\x07', b'J\xff\xff\xff\xff', b'M\x01\x02',
    b'\x8a\x01\x05', b'\x8b\x00\x00\x00\x00', b'G' + bytes(8),
    b'C\x08\x00\x00\x00\x00\x00\x00\x00\x07', b'C\x03abc',
    b'B\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x09',
    b'U\x08ABCDEFGH', b'U\x02\xc3\xa9', b'T\x02\x00\x00\x00ab',
    b'X\x08\x00\x00\x00abcdefgh', b'X\x02\x00\x00\x00\xc3\xa9',
    b'X\x03\x00\x00\x00\xed\xa0\x80', b'X\x01\x00\x00\x00\xff',
    b'Vabc\n', b'V\xe9\n', b'Va\\u00e9\n', b"S'abc'\n", b'S"ab"\n',
    b"S'a\\x41'\n", b"S'ab\n", b'I5\n', b'I01\n', b'I-0\n', b'I010\n',
    b'I0x1\n', b'L5L\n', b'L-12\n', b'F1.5\n',
    b')', b']', b'}', b'(', b't', b'l', b'd', b'a', b'e', b's', b'u',
    b'0', b'1', b'2', b'\x85', b'\x86', b'\x87', b'Q', b'Pabc\n', b'P\n',
    b'R', b'b', b'\x81', b'o', b'ifoo\nBar\n', b'cfoo\nBar\n',
    b'\x82\x01', b'\x83\x01\x00', b'\x84\x01\x00\x00\x00',
    b'q\x01', b'q\x02', b'h\x01', b'h\x02', b'r\x03\x00\x00\x00',
    b'j\x03\x00\x00\x00', b'p4\n', b'g4\n', b'p05\n', b'g05\n',
    b'\x80\x02', b'\x80\x04', b'\x94', b'\x95' + bytes(8),
]


# Those that push one value and pop none.
_SCALARS = [piece for piece in _PIECES
            if piece[:1] in b'N\x88\x89KJM\x8a\x8bGCBUTXVSILF)]}c'
            or piece.startswith((b'\x82', b'\x83', b'\x84'))]


def _value(rng, depth=0):
    """Opcodes that push one value when all goes well: containers built
    and filled by every opcode that does so, on targets that are usually,
    not always, of the right kind (the same for dict keys and persistent
    ids), the memo, what noload turns into None."""
    choice = rng.randrange(16) if depth < 4 else 0
    sub = lambda: _value(rng, depth + 1)  # noqa: E731
    subs = lambda: b''.join(sub() for _ in range(rng.randrange(4)))  # noqa
    if choice == 0:
        return rng.choice(_SCALARS)
    if choice == 1:  # a tuple
        count = rng.randrange(5)
        if count <= 3 and rng.random() < 0.5:
            return b''.join(sub() for _ in range(count)) + (
                b')\x85\x86\x87'[count:count + 1])
        return b'(' + b''.join(sub() for _ in range(count)) + b't'
    if choice in (2, 3):  # a list, or something appended to
        target = b']' if rng.random() < 0.8 else sub()
        if rng.random() < 0.5:
            return target + sub() + b'a'
        return target + b'(' + subs() + b'e'
    if choice in (4, 5):  # a dict, or something set into
        target = b'}' if rng.random() < 0.8 else sub()
        if rng.random() < 0.5:
            return target + sub() + sub() + b's'
        pairs = b''.join(sub() + sub() for _ in range(rng.randrange(3)))
        return target + b'(' + pairs + b'u'
    if choice == 6:
        return b'(' + subs() + rng.choice([b'l', b'd'])
    if choice in (7, 8, 9):  # a persistent id, of any kind
        return sub() + b'Q'
    if choice == 10:  # memoized, or fetched from the memo
        if rng.random() < 0.5:
            return sub() + b'q' + bytes([rng.randrange(4)])
        return b'h' + bytes([rng.randrange(4)])
    if choice == 11:
        return sub() + sub() + rng.choice([b'R', b'\x81', b'b'])
    if choice == 12:
        return b'(' + sub() + subs() + rng.choice([b'o', b'ifoo\nBar\n'])
    if choice == 13:
        return sub() + b'20'
    if choice == 14:
        return b'(' + subs() + b'1' + sub()
    return rng.choice(_SCALARS[:3] + [b'C\x08' + bytes(7) + b'\x07Q',
                                      b'U\x08ABCDEFGH', b'X\x01\x00\x00\x00w'])


def _random_record(rng):
    pickles = []
    for _ in range(2):
        pickle_ = rng.choice([b'', b'\x80\x02', b'\x80\x03']) + _value(rng)
        if rng.random() < 0.2:  # noise
            at = rng.randrange(len(pickle_) + 1)
            pickle_ = pickle_[:at] + rng.choice(_PIECES) + pickle_[at:]
        pickles.append(pickle_ + b'.')
    return b''.join(pickles)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # escapes
def test_random_opcode_sequences_are_judged_like_referencesf():
    rng = random.Random(1919)
    answered = with_refs = 0
    with _address_space_limited():  # a line's bytes may become an index
        for _ in range(40000):
            data = _random_record(rng)
            if _check(data):
                answered += 1
                with_refs += bool(_neo.references(data))
    assert answered > 2000 and with_refs > 400


# Records no pickler writes that referencesf's unpickler accepts, each with
# a rule of its own; the scanner follows them all.
_ODD_RECORDS = [
    b'(0C\x03abcQ.N.',                    # POP takes back an empty mark
    b'(N1C\x03abcQ.N.',                   # POP_MARK
    b'C\x03abc(C\x03xyzifoo\nBar\n\x86Q.N.',  # INST drops its arguments
    b'C\x03abc(cfoo\nBar\nNNo\x86Q.N.',    # OBJ keeps only the class
    b'C\x03abc)(u\x86Q.N.',               # SETITEMS of nothing, on a tuple
    b'C\x03abcK\x01(e\x86Q.N.',           # APPENDS of nothing, on an int
    b'C\x03abcN(NNu\x86Q.N.',             # SETITEMS on None: dropped
    b'C\x03abcN(NNe\x86Q.N.',             # APPENDS on None: dropped
    b'(C\x03abcNNd0C\x03xyzQ.N.',         # DICT drops an odd last item
    b'C\x03abcq\x01.h\x01Q.',              # the memo outlives the first STOP
    b'C\x03abcNNR\x86Q.N.',               # REDUCE: None
    b'C\x03abc\x82\x05\x86Q.N.',          # EXT1: None
    b'Pabc\n.N.',                           # a text PERSID is bytes
    b'C\x03abcI01\n\x86Q.N.',             # a text bool
    b'\x80\x02C\x03abcQ.N.trailing bytes',
]


def test_odd_records_referencesf_accepts_are_answered_alike():
    for data in _ODD_RECORDS:
        assert _check(data), data


def test_random_bytes_are_survived():
    rng = random.Random(1818)
    with _address_space_limited():
        for _ in range(5000):
            data = rng.choice([b'\x80\x03', b'(', b'c', b'']) + rng.randbytes(
                rng.randrange(40))
            _check(data)


def test_storage_oid_references_is_the_python_path(zodb_records,
                                                   pickler_records):
    """What commit checks: the same set as with referencesf alone (8-byte
    oids of what begins as a record; nothing if referencesf raises)."""

    def python_path(data):
        if not storage_module._is_record(data):
            return set()
        try:
            refs = referencesf(data)
        except Exception:
            return set()
        return {ref for ref in refs if isinstance(ref, bytes)
                and len(ref) == 8}

    for data in zodb_records + pickler_records + [b'', b'junk', b'\x80\x04']:
        assert storage_module._oid_references(data) == python_path(data)


def test_gc_reads_zodbs_referencesf_through_the_scanner(zodb_records,
                                                        pickler_records):
    """What GC reads when given ZODB's referencesf: the same list, or the
    same failure."""
    for data in zodb_records + pickler_records:
        expected = _judge(data)
        if expected is None:
            with pytest.raises(Exception):
                storage_module._scanned_references(data)
        else:
            assert storage_module._scanned_references(data) == expected

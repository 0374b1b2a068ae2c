"""``neo.client.Storage.Storage``: a ZODB storage on a NEO cluster.

Everything that touches the network is in the native module ``neo._neo``
(the Rust client, with its object cache); this module gives it ZODB's
storage API: per-transaction state, conflict resolution, mapping of errors
to ZODB exceptions, and delivery of invalidations.

Invalidations and commit notifications are queued by the Rust client in
commit order, without the GIL. They are delivered to ZODB (``registerDB``)
by whichever Python thread drains the queue first -- a background thread,
or any call that needs an up-to-date view (``lastTransaction``, ``sync``,
``load``, ``tpc_finish``) -- under one lock, so that ZODB always sees them
in order and before ``lastTransaction()`` returns their TID.

With ``cache_file``, the object cache persists across restarts: the native
module restores what is still valid of that file when the storage opens
(after asking the cluster what changed since it was written) and rewrites
it from a background thread and at ``close()``; see its ``persist.rs``.
"""

import atexit
from bisect import bisect_left, bisect_right
import itertools
import logging
import os
import signal
import threading
import time
import weakref
from pickle import dumps, loads

import ZODB.interfaces
from ZODB.BaseStorage import DataRecord, TransactionRecord
from ZODB.ConflictResolution import ConflictResolvingStorage
from ZODB.POSException import (
    ConflictError, POSKeyError, ReadConflictError, ReadOnlyError,
    StorageTransactionError, UndoError)
from ZODB.serialize import referencesf as _referencesf
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64, z64
from zope.interface import implementer

from .. import _neo
from .exception import (
    NEOPrimaryMasterLost, NEOStorageClosedError, NEOStorageConnectionError,
    NEOStorageError)


# How many oids allocated and not seen committed a Storage remembers: a
# record may reference those before they are stored (see
# _check_new_references). Beyond, the oldest count as any other.
_MAX_ALLOCATED = 100000

# Numbers the Storage instances of this process (sortKey).
_instance_numbers = itertools.count()

logger = logging.getLogger('neo.client')

MAX_TID = b'\x7f\xff\xff\xff\xff\xff\xff\xff'

# The description of the transactions pack commits (orders, GC deletions).
_PACK_DESCRIPTION = b'IStorage.pack'

_log_handler = None

# NEO/py's message when only some of ca, cert, key are given.
_TLS_INCOMPLETE = ('To enable encryption, 3 files must be provided: the CA'
                   ' certificate, and the certificate of this node with its'
                   ' private key.')


class _NeoLogHandler(logging.Handler):
    """Hands the ``neo`` loggers' records to the native log, which writes
    them in the daemons' line format beside the Rust client's own."""

    def emit(self, record):
        try:
            message = record.getMessage()
            if record.exc_info:
                message += '\n' + self.formatter.formatException(
                    record.exc_info)
            _neo.log(record.levelno, record.name, message)
        except Exception:
            self.handleError(record)


def _reopen_log(signum, frame):
    try:
        _neo.reopen_log()
    except OSError as e:
        logging.getLogger(__name__).error('cannot reopen the NEO log: %s', e)


def _setup_logfile(path):
    """Only one NEO log per process: the last one configured wins.

    logrotate's signals reopen it: SIGUSR2 (Zope's convention) and
    SIGRTMIN+1 (NEO/py's), unless the application handles them already.
    """
    global _log_handler
    _neo.log_to(path)
    root = logging.getLogger('neo')
    if _log_handler is None:
        _log_handler = _NeoLogHandler()
        _log_handler.setFormatter(logging.Formatter())
        root.addHandler(_log_handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        if threading.current_thread() is threading.main_thread():
            for signum in signal.SIGUSR2, signal.SIGRTMIN + 1:
                if signal.getsignal(signum) == signal.SIG_DFL:
                    signal.signal(signum, _reopen_log)


def _tid_from_time(t):
    """The first TID at or after time `t` (seconds since the epoch)."""
    gm = time.gmtime(t)
    return TimeStamp(*(gm[:5] + (gm[5] + t % 1,))).raw()


def _error(e, oid=None):
    """A ZODB exception for a ``neo._neo.NeoError``."""
    kind, message, e_oid, serial = e.args
    oid = e_oid if e_oid is not None else oid
    if kind in ('oid_does_not_exist', 'oid_not_found', 'no_data'):
        return POSKeyError(oid)
    if kind == 'read_only':
        return ReadOnlyError(message)
    if kind == 'not_undoable':
        return UndoError('non-undoable transaction', oid)
    if kind == 'invalid_use':
        return StorageTransactionError(message)
    if kind == 'master_lost':
        return NEOPrimaryMasterLost(message)
    if kind == 'closed':
        return NEOStorageClosedError(message)
    if kind == 'not_connected':
        return NEOStorageConnectionError(message)
    return NEOStorageError(message)


# How ZODB's records begin: a protocol 2+ pickle (PROTO), or a protocol 1
# one (the class: MARK or GLOBAL).
_RECORD_STARTS = tuple(b'\x80' + bytes([v]) for v in range(1, 6)) + (b'(', b'c')


def _is_record(data):
    """Whether `data` may be a ZODB record: anything else is not parsed,
    since arbitrary bytes can make the unpickler allocate gigabytes (a
    memo index of 2**32) or spend seconds."""
    return data.startswith(_RECORD_STARTS)


def _scanner_follows_referencesf():
    """Whether ZODB's referencesf runs zodbpickle's C unpickler, whose
    ``noload`` the native scanner follows (as on CPython; not with
    zodbpickle's pure-Python one, under ``PURE_PYTHON``)."""
    try:
        import ZODB._compat
        from zodbpickle import _pickle
    except ImportError:
        return False
    return issubclass(ZODB._compat.Unpickler, _pickle.Unpickler)


_SCANNER = _scanner_follows_referencesf()


def _scanned_references(data):
    """``ZODB.serialize.referencesf(data)``: the native scanner's answer,
    which is referencesf's exactly, or referencesf's own when the scanner
    cannot tell (it reads no protocol 4 or 5, no escaped text, nothing
    malformed: see ``references.rs``). Raises as referencesf does."""
    if _SCANNER and type(data) is bytes:
        refs = _neo.references(data)
        if refs is not None:
            return refs
    return _referencesf(data)


def _oid_references(data):
    """The oids a ZODB record references (none if it is not one)."""
    if not _is_record(data):
        return set()
    try:
        refs = _scanned_references(data)
    except Exception:
        return set()
    return {ref for ref in refs if isinstance(ref, bytes) and len(ref) == 8}


def _compress_option(compress):
    """``True``/``False``/``None``/``(0, level)``/``'zlib'``/``'zlib=N'``."""
    if compress is None:
        return True
    if isinstance(compress, str):
        text = compress.strip().lower()
        if text in ('false', 'off', 'no', '0'):
            return False
        if text in ('true', 'on', 'yes', '1', 'zlib') or text.startswith('zlib='):
            return True
        raise ValueError('not a valid %r option: %r' % ('compress', compress))
    if isinstance(compress, tuple):
        return True
    return bool(compress)


class _GCRetry(Exception):
    """A concurrent commit disturbed garbage collection: start over."""


class _GCImpossible(Exception):
    """Garbage collection cannot be done safely (unreadable references)."""


class _Context:
    """What a storage knows of one transaction between tpc_begin and
    tpc_finish/tpc_abort."""

    __slots__ = ('native', 'resolved', 'preindex', 'voted', 'stores',
                 'referenced')

    def __init__(self, native):
        self.native = native
        # oid -> (base serial, data) of its last store in this transaction
        self.stores = {}
        # oid -> the committed serial a conflict on it was resolved against
        self.resolved = {}
        # oid -> revision restored in this transaction (restore)
        self.preindex = {}
        # oids newly referenced by what it stores, checked current
        self.referenced = set()
        self.voted = False


# At interpreter exit, CPython ends a daemon thread that comes back from
# native code with pthread_exit, which cannot unwind through Rust: the
# process would abort ("FATAL: exception not rethrown") if a delivery
# thread were waiting in `wait_events` then. They are stopped and joined
# first, by an exit hook (those run before daemon threads are ended).
_delivery_threads = weakref.WeakSet()
_exiting = threading.Event()


def _stop_delivery():
    _exiting.set()
    for thread in list(_delivery_threads):
        # Each wakes at least every 0.2 s.
        thread.join(5)


atexit.register(_stop_delivery)


def _deliver_forever(ref):
    """Background delivery of invalidations, until the storage goes."""
    while not _exiting.is_set():
        storage = ref()
        if storage is None or storage._closed:
            return
        client = storage._client
        del storage
        try:
            ready = client.wait_events(0.2)
        except Exception:
            return
        if ready:
            storage = ref()
            if storage is None or storage._closed:
                return
            try:
                storage._deliver()
            except Exception:
                logger.exception('delivering invalidations')
            del storage


@implementer(
    ZODB.interfaces.IStorage,
    ZODB.interfaces.IPrefetchStorage,
    ZODB.interfaces.IStorageRestoreable,
    ZODB.interfaces.IStorageIteration,
    ZODB.interfaces.IStorageCurrentRecordIteration,
    ZODB.interfaces.IStorageUndoable,
    ZODB.interfaces.IExternalGC,
    ZODB.interfaces.ReadVerifyingStorage,
)
class Storage(ConflictResolvingStorage):
    """A ZODB storage on a NEO cluster (a drop-in for NEO/py's client)."""

    def __init__(self, master_nodes, name, compress=None, logfile=None,
                 read_only=False, cache_size=20 * 1024 * 1024,
                 dynamic_master_list=None, ignore_wrong_checksum=False,
                 ca=None, cert=None, key=None, cache_file=None,
                 metrics=None, _ready_timeout=10.0, _cache_save_interval=30.0,
                 _cache_check_limit=None):
        tls = None
        if ca or cert or key:
            if not (ca and cert and key):
                raise ValueError(_TLS_INCOMPLETE)
            tls = tuple(os.path.expanduser(str(path))
                        for path in (ca, cert, key))
        if logfile:
            _setup_logfile(logfile)
        self._name = name
        self.__name__ = 'NEOStorage(%s)' % (name,)
        # ZODB orders the storages of a transaction by sortKey(): two
        # instances (of one cluster, even) must never share one.
        self._sort_key = '%s:%s#%d' % (self.__name__, master_nodes,
                                       next(_instance_numbers))
        self._is_read_only = bool(read_only)
        self._closed = False
        self._db = None
        self._lock = threading.Lock()
        self._deliver_lock = threading.RLock()
        self._txns = {}
        self._callbacks = {}
        # oids from new_oid() not seen committed yet, oldest first (see
        # _check_new_references), at most _MAX_ALLOCATED.
        self._allocated = {}
        self._thread = None
        # Tests only: how often the persistent cache is written, and how
        # many transactions since it was may be checked at start.
        persist = {'cache_save_interval': float(_cache_save_interval)}
        if _cache_check_limit is not None:
            persist['cache_check_limit'] = int(_cache_check_limit)
        try:
            self._client = _neo.Client(
                master_nodes, name, read_only=self._is_read_only,
                compress=_compress_option(compress),
                cache_size=int(cache_size or 0),
                ready_timeout=float(_ready_timeout),
                dynamic_master_list=dynamic_master_list, tls=tls,
                ignore_wrong_checksum=bool(ignore_wrong_checksum),
                cache_file=(os.path.expanduser(str(cache_file))
                            if cache_file else None),
                metrics=str(metrics) if metrics else None,
                **persist)
        except _neo.NeoError as e:
            raise _error(e) from None
        if metrics:
            logger.info('metrics listening on %s',
                        self._client.metrics_address())
        self._log_cache_file()
        self._ltid = self._call(self._client.last_tid)

    # -- helpers ------------------------------------------------------------

    def _log_cache_file(self):
        """Logs what the persistent cache did (restored, dropped, write
        errors) since the last call."""
        for level, message in self._client.cache_file_log():
            if level == 'warning':
                logger.warning('%s', message)
            else:
                logger.info('%s', message)

    def _call(self, method, *args, oid=None):
        try:
            return method(*args)
        except _neo.NeoError as e:
            raise _error(e, oid) from None

    def _context(self, transaction):
        try:
            return self._txns[transaction]
        except (KeyError, TypeError):
            raise StorageTransactionError(
                'transaction not begun on this storage: %r' % (transaction,))

    def _deliver(self):
        """Delivers queued invalidations and commit callbacks, in order."""
        with self._deliver_lock:
            events = self._client.drain_events()
            for event in events:
                kind, tid = event[0], event[1]
                if kind == 'objects':
                    for oid in event[2]:
                        self._allocated.pop(oid, None)
                    db = self._db
                    if db is not None:
                        try:
                            db.invalidate(tid, event[2])
                        except Exception:
                            logger.exception('invalidating %d oids',
                                             len(event[2]))
                    if tid > self._ltid:
                        self._ltid = tid
                elif kind == 'finished':
                    callback = self._callbacks.pop(event[2], None)
                    if callback is not None:
                        try:
                            callback(tid)
                        except Exception:
                            logger.exception('tpc_finish callback')
                    if tid > self._ltid:
                        self._ltid = tid
                else:  # 'all': invalidations may have been missed
                    db = self._db
                    if db is not None:
                        try:
                            db.invalidateCache()
                        except Exception:
                            logger.exception('invalidating all caches')
                    self._ltid = tid

    def _resolve(self, ctx, conflicts):
        """Resolves conflicts reported by the storages and stores the
        results; raises ConflictError/ReadConflictError when that fails."""
        while conflicts:
            oid, serial, conflict_serial, data, checked = conflicts.pop(0)
            if checked:
                raise ReadConflictError(
                    oid=oid, serials=(conflict_serial, serial))
            resolved = ctx.resolved.get(oid)
            if resolved is not None and conflict_serial <= resolved:
                continue  # late answer of a slower replica
            if data is None:
                raise ConflictError(oid=oid, serials=(conflict_serial, serial))
            if conflict_serial > self._call(self._client.last_tid):
                self.sync()
            new_data = self.tryToResolveConflict(
                oid, conflict_serial, serial, data)
            ctx.resolved[oid] = conflict_serial
            ctx.stores[oid] = (conflict_serial, new_data)
            conflicts.extend(self._call(
                ctx.native.store, oid, conflict_serial, new_data, None,
                oid=oid))

    def _store(self, ctx, oid, serial, data, data_serial=None):
        ctx.stores[oid] = (serial, data)
        self._resolve(ctx, self._call(
            ctx.native.store, oid, serial, data, data_serial, oid=oid))

    # -- IStorage -----------------------------------------------------------

    def getName(self):
        return self.__name__

    def sortKey(self):
        return self._sort_key

    def getSize(self):
        # The storages know their databases' sizes but NEO's protocol has
        # no request for it (NEO/py has none either), and summing every
        # record's size would read the whole database: 0, as documented.
        return 0

    # The most objects written since the last count that __len__ looks at
    # one by one; beyond, counting again is cheaper.
    len_increment_limit = 2000

    def __len__(self):
        """The number of objects that exist at the last TID. Counted once
        (every oid listed, partition by partition), then brought up to
        date from the transactions committed since: each object they wrote
        counts if it exists now and did not then. A pack in between may
        have removed the history that tells, so then it counts again."""
        with self._deliver_lock:
            last = self._call(self._client.last_tid)
            counted = getattr(self, '_counted', None)
            if counted is not None and counted[0] == last:
                return counted[1]
            count = None
            if counted is not None:
                count = self._count_since(counted[0], counted[1], last)
            if count is None:
                count = self._call(self._client.object_count_at, last)
            self._counted = last, count
            return count

    def _count_since(self, tid, count, last):
        """`count` objects at `tid` brought up to `last`, or None."""
        written = set()
        for _, info in self._written_between(p64(u64(tid) + 1), last):
            oids = info[4]
            if not oids and info[1] == _PACK_DESCRIPTION:
                return None
            written.update(oids)
            if len(written) > self.len_increment_limit:
                return None
        written = sorted(written)
        missing_then = set(self._call(self._client.missing, written,
                                      p64(u64(tid) + 1)))
        missing_now = set(self._call(self._client.missing, written,
                                     p64(u64(last) + 1)))
        return count + len(missing_then) - len(missing_now)

    def metrics(self):
        """This client's metrics (cache, round trips to the cluster) as
        OpenMetrics text: what the ``metrics`` option serves."""
        return self._client.metrics()

    def isReadOnly(self):
        return self._is_read_only

    def supportsUndo(self):
        return True

    def registerDB(self, db, limit=None):
        self._db = db
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=_deliver_forever, args=(weakref.ref(self),),
                name='neo-invalidations %s' % self._name, daemon=True)
            _delivery_threads.add(self._thread)
            self._thread.start()

    def close(self):
        if self._closed:
            return
        self._closed = True
        with self._lock:
            txns = list(self._txns.values())
            self._txns.clear()
        for ctx in txns:
            try:
                ctx.native.abort()
            except Exception:
                pass
        try:
            self._client.close()
        except _neo.NeoError:
            pass
        self._log_cache_file()

    def lastTransaction(self):
        self._deliver()
        return self._ltid

    def sync(self, force=True):
        self._call(self._client.sync)
        self._deliver()

    def new_oid(self):
        if self._is_read_only:
            raise ReadOnlyError()
        oid = self._call(self._client.new_oid)
        allocated = self._allocated
        allocated[oid] = None
        if len(allocated) > _MAX_ALLOCATED:
            allocated.pop(next(iter(allocated)), None)
        return oid

    def load(self, oid, version=''):
        r = self.loadBefore(oid, p64(u64(self.lastTransaction()) + 1))
        if r is None:
            raise POSKeyError(oid)
        return r[0], r[1]

    def loadBefore(self, oid, tid):
        return self._call(self._client.load_before, oid, tid, oid=oid)

    def prefetch(self, oids, tid):
        """IPrefetchStorage: loads the revisions of `oids` current before
        `tid` into the cache, all requests in flight at once (a hint:
        failures are left to the loads that follow)."""
        self._client.prefetch(list(oids), tid)

    def loadSerial(self, oid, serial):
        return self._call(self._client.load_serial, oid, serial, oid=oid)

    def getTid(self, oid):
        return self.load(oid)[1]

    def history(self, oid, size=1, filter=None):
        entries = self._call(self._client.history, oid, 0, max(size, 1),
                             oid=oid)
        result = []
        for serial, length in entries:
            info = self._transaction_info(serial)
            if info is None:
                continue
            user, description, extension, _, _ = info
            d = {
                'tid': serial,
                'serial': serial,
                'time': TimeStamp(serial).timeTime(),
                'user_name': user,
                'description': description,
                'size': length,
                'version': '',
            }
            if extension:
                try:
                    d.update(loads(extension))
                except Exception:
                    pass
            if filter is None or filter(d):
                result.append(d)
        return result

    def _transaction_info(self, tid):
        try:
            return self._client.transaction_info(tid)
        except _neo.NeoError as e:
            if e.args[0] == 'tid_not_found':
                return None
            raise _error(e) from None

    # -- IStorageCurrentRecordIteration -------------------------------------

    def record_iternext(self, next=None):
        """``(oid, tid, data, next oid or None)`` of the object with the
        smallest oid at or after `next` (from the start when None), current
        at the TID of the call that started the iteration (a consistent
        view, as tools such as zodbupdate expect). Oids come a window at a
        time, merged from every partition."""
        cursor = self._record_cursor
        if next is None or cursor is None:
            cursor = self._record_cursor = [self.lastTransaction(), []]
            next = z64
        tid, window = cursor
        if not window or not window[0] <= next <= window[-1]:
            window = cursor[1] = self._oids_window(next, tid)
        i = bisect_left(window, next)
        if i == len(window):
            raise ValueError('no object at or after %s' % next.hex())
        oid = window[i]
        if i + 1 == len(window):
            window = cursor[1] = self._oids_window(p64(u64(oid) + 1), tid)
            i = -1
        next_oid = window[i + 1] if i + 1 < len(window) else None
        data, serial, _ = self.loadBefore(oid, p64(u64(tid) + 1))
        return oid, serial, data, next_oid

    _record_cursor = None
    # Oids asked per partition at a time by record_iternext.
    record_page = 1000

    def _oids_window(self, start, tid):
        """The oids existing at `tid` from `start`, ascending, as far as
        every partition's page goes; empty past the last one."""
        window, end = [], None
        for partition in range(self._call(self._client.partition_count)):
            oids, more = self._call(self._client.oids_page, partition,
                                    start, tid, self.record_page)
            window.extend(oids)
            if more is not None and oids and (end is None or oids[-1] < end):
                end = oids[-1]
        window.sort()
        if end is not None:
            window = window[:bisect_right(window, end)]
        return window

    # -- two-phase commit ---------------------------------------------------

    def tpc_begin(self, transaction, tid=None, status=' '):
        if self._is_read_only:
            raise ReadOnlyError()
        with self._lock:
            if transaction in self._txns:
                raise StorageTransactionError(
                    'Duplicate tpc_begin calls for same transaction')
        native = self._call(self._client.begin, tid)
        with self._lock:
            self._txns[transaction] = _Context(native)

    def store(self, oid, serial, data, version, transaction):
        if self._is_read_only:
            raise ReadOnlyError()
        if version:
            raise ValueError('versions are not supported')
        ctx = self._context(transaction)
        self._store(ctx, oid, serial or z64, data)

    def deleteObject(self, oid, serial, transaction):
        if self._is_read_only:
            raise ReadOnlyError()
        ctx = self._context(transaction)
        self._store(ctx, oid, serial, None)

    def checkCurrentSerialInTransaction(self, oid, serial, transaction):
        ctx = self._context(transaction)
        self._resolve(ctx, self._call(
            ctx.native.check_current, oid, serial, oid=oid))

    def restore(self, oid, serial, data, version, prev_txn, transaction):
        """Stores the revision `serial` (the TID given to tpc_begin) as is,
        based on the revision current in the storage (copying history)."""
        if self._is_read_only:
            raise ReadOnlyError()
        ctx = self._context(transaction)
        base = ctx.preindex.get(oid)
        if base is None:
            try:
                base = self.loadBefore(oid, serial)
                base = z64 if base is None else base[1]
            except POSKeyError:
                # deleted or never stored: the latest record, if any
                try:
                    base = self._client.object(oid, None, serial)[0]
                except _neo.NeoError:
                    base = z64
        self._store(ctx, oid, base, data)
        ctx.preindex[oid] = serial

    def tpc_vote(self, transaction):
        ctx = self._context(transaction)
        native = ctx.native
        self._resolve(ctx, self._call(native.wait_stores))
        extension = getattr(transaction, 'extension_bytes', None)
        if extension is None:
            ext = getattr(transaction, 'extension', None)
            extension = dumps(ext, 2) if ext else b''
        user = transaction.user
        description = transaction.description
        if isinstance(user, str):
            user = user.encode('utf-8')
        if isinstance(description, str):
            description = description.encode('utf-8')
        while True:
            self._check_new_references(ctx)
            conflicts = self._call(native.vote, user, description, extension)
            if not conflicts:
                break
            self._resolve(ctx, conflicts)
            self._resolve(ctx, self._call(native.wait_stores))
        self._verify_referenced(ctx)
        ctx.voted = True
        return list(ctx.resolved) or None

    def _check_new_references(self, ctx):
        """Checks current (read-locks until the end of the commit) every
        existing object that a record stored by this transaction references
        and the revision it is based on did not: a garbage collection can
        then never delete an object this transaction links again without
        one of them failing (ARCHITECTURE.md, "Pack's garbage
        collection"). Restored records copy history and are not checked."""
        # A reference that the revision some stored record is based on has
        # (an object moved from one container to another) is inherited.
        new, inherited = set(), set()
        for oid, (serial, data) in ctx.stores.items():
            if data is None or oid in ctx.preindex:
                continue
            new |= _oid_references(data)
            if serial != z64:
                try:
                    base = self._client.load_serial(oid, serial)
                except _neo.NeoError:
                    continue  # its references count as new
                if base is not None:
                    inherited |= _oid_references(base)
        new -= inherited
        new -= ctx.stores.keys()
        new -= ctx.referenced
        # Allocated here and not committed yet: no collection can have
        # deleted them (the storage API allows storing them later).
        new.difference_update(self._allocated)
        if not new:
            return
        before = p64(u64(self._call(self._client.last_tid)) + 1)
        new = sorted(new)
        self._client.prefetch(new, before)  # one round trip for all
        for ref in new:
            try:
                current = self._client.load_before(ref, before)
            except _neo.NeoError as e:
                if e.args[0] not in ('no_data', 'oid_does_not_exist',
                                     'oid_not_found'):
                    raise _error(e, ref) from None
                current = None
            if current is None:
                raise ReadConflictError(
                    'a stored record references %s, which no longer exists'
                    % ref.hex(), oid=ref)
            ctx.referenced.add(ref)
            self._resolve(ctx, self._call(
                ctx.native.check_current, ref, current[1], oid=ref))

    def _verify_referenced(self, ctx):
        """Once the checks of `_check_new_references` hold their locks:
        each object checked must still exist. A storage does not report a
        conflict for an object that has no record at all, which is what a
        garbage collection's purge leaves; under the lock, the object can
        no longer be deleted, and after a sync every deletion committed
        before the lock was taken is visible to a read."""
        if not ctx.referenced:
            return
        self._call(self._client.sync)
        before = p64(u64(self._call(self._client.last_tid)) + 1)
        missing = self._call(self._client.missing, sorted(ctx.referenced),
                             before)
        if missing:
            raise ReadConflictError(
                'a stored record references %s, which no longer exists'
                % missing[0].hex(), oid=missing[0])

    def tpc_finish(self, transaction, f=None):
        ctx = self._context(transaction)
        ttid = None
        if f is not None:
            ttid = ctx.native.ttid
            self._callbacks[ttid] = f
        try:
            tid = self._call(ctx.native.finish)
        except BaseException:
            if ttid is not None:
                self._callbacks.pop(ttid, None)
            raise
        with self._lock:
            self._txns.pop(transaction, None)
        for oid in ctx.stores:
            self._allocated.pop(oid, None)
        # Runs our callback (and earlier invalidations) in commit order.
        self._deliver()
        return tid

    def tpc_abort(self, transaction):
        with self._lock:
            ctx = self._txns.pop(transaction, None)
        if ctx is not None:
            try:
                ctx.native.abort()
            except _neo.NeoError as e:
                logger.warning('tpc_abort: %s', e.args[1])

    # Whether pack() waits for the storages to complete the pack (as
    # FileStorage does). NEO/py's client returns once the order is
    # committed; so does this one unless this is set (tests do).
    wait_for_pack = False

    def pack(self, t, referencesf=None, gc=None):
        """Removes the history older than time `t` and, given `referencesf`
        (unless `gc` is false), the objects unreachable at that time (see
        `_collect_garbage`)."""
        if self._is_read_only:
            raise ReadOnlyError()
        self.sync()
        pack_tid = min(_tid_from_time(t), self.lastTransaction())
        if pack_tid == z64:
            return
        garbage = None
        if referencesf is not None and gc is not False:
            garbage = self._collect_garbage(pack_tid, referencesf)
        pack_ids = [self._call(self._client.pack, pack_tid)]
        if garbage is not None:
            # The deletions and everything before them go (sec. 11.2).
            deleted_tid, oids = garbage
            pack_ids.append(self._call(self._client.pack, deleted_tid, oids))
        pack_ids = [pack_id for pack_id in pack_ids if pack_id is not None]
        if not pack_ids:
            return
        with self._deliver_lock:
            if pack_ids[-1] > self._ltid:
                self._ltid = pack_ids[-1]
        if self.wait_for_pack:
            for pack_id in pack_ids:
                self._call(self._client.wait_for_pack, pack_id)
            # Only then are the pruned revisions gone: forget them here too
            # (other clients may keep serving what they cached).
            self._client.clear_cache()

    # -- garbage collection -------------------------------------------------

    # How many times GC starts over when a concurrent commit touches (or
    # links again) an object it is about to delete.
    gc_attempts = 3

    def _collect_garbage(self, pack_tid, referencesf):
        """Deletes the objects that exist at `pack_tid` but are garbage:

        - kept are the root (oid 0), every object written after `pack_tid`
          (transactions in ``(pack_tid, last]``), and, transitively, every
          object referenced by a kept object's revision current at
          `pack_tid` or by any of its later revisions (so that every
          snapshot from `pack_tid` on stays loadable);
        - the others (not modified since `pack_tid`) are deleted by one
          transaction, each based on its revision current at `pack_tid`:
          a concurrent change of one of them is a conflict, and a commit
          that references one again is seen before that transaction
          finishes; either way GC starts over with a new snapshot.

        Returns ``(tid of that transaction, [oids])``, for a partial pack
        at that TID that removes the deletions and all that precedes them,
        or None if there is nothing to delete (or GC was not possible)."""
        for _ in range(self.gc_attempts):
            try:
                result = self._try_collect_garbage(pack_tid, referencesf)
            except _GCRetry as e:
                logger.info('pack: garbage collection starts over: %s', e)
                continue
            except _GCImpossible as e:
                logger.warning('pack: no garbage collection: %s', e)
                return None
            return result
        logger.warning('pack: no garbage collection (%d attempts disturbed'
                       ' by concurrent commits)', self.gc_attempts)
        return None

    def _record(self, oid, at=None, before=None):
        """``(serial, next_serial, data or None)``, or None if there is no
        such record (never created, or packed away)."""
        try:
            serial, next_serial, data, _ = self._client.object(
                oid, at, before)
        except _neo.NeoError as e:
            if e.args[0] in ('oid_not_found', 'oid_does_not_exist',
                             'no_data'):
                return None
            raise _error(e, oid) from None
        return serial, next_serial, data

    def _references(self, referencesf, oid, data):
        if not _is_record(data):
            raise _GCImpossible('%s is not a ZODB record' % oid.hex())
        # ZODB's own referencesf (what DB.pack passes) is answered by the
        # scanner, which returns the same list; any other is called.
        if referencesf is _referencesf:
            referencesf = _scanned_references
        try:
            return referencesf(data)
        except Exception as e:
            raise _GCImpossible('cannot read the references of %s: %r'
                                % (oid.hex(), e)) from None

    def _written_between(self, first, last):
        """``(tid, transaction_info)`` of each transaction in
        ``[first, last]``, in TID order, fetched as iterated."""
        start = first
        while start <= last:
            tids = self._call(self._client.iterate_tids, start, last, 100)
            if not tids:
                return
            for tid in tids:
                info = self._transaction_info(tid)
                if info is not None:
                    yield tid, info
            start = p64(u64(tids[-1]) + 1)

    def _try_collect_garbage(self, pack_tid, referencesf):
        self.sync()
        last = self._call(self._client.last_tid)
        after_pack = p64(u64(pack_tid) + 1)
        candidates = set(self._call(self._client.oids_at, pack_tid))
        if not candidates:
            return None
        # Roots: oid 0 and whatever was written after pack_tid.
        todo = [z64]
        for _, info in self._written_between(after_pack, last):
            todo.extend(info[4])
        kept = set()
        while todo:
            oid = todo.pop()
            if oid in kept:
                continue
            kept.add(oid)
            # Its revisions from the newest down to the one current at
            # pack_tid (older ones are not readable after the pack).
            record = self._record(oid)
            while record is not None:
                serial, _, data = record
                if data is not None:
                    for ref in self._references(referencesf, oid, data):
                        if ref not in kept:
                            todo.append(ref)
                if serial <= pack_tid:
                    break
                record = self._record(oid, before=serial)
        root = self._record(z64)
        if root is None or root[2] is None:
            # Without a root, nothing is known to be reachable: keep all.
            return None
        garbage = candidates - kept
        if not garbage:
            return None
        serials = {}
        for oid in sorted(garbage):
            record = self._record(oid, before=after_pack)
            if record is None or record[1] is not None or record[2] is None:
                raise _GCRetry('%s changed meanwhile' % oid.hex())
            serials[oid] = record[0]
        native = self._call(self._client.begin, None)
        try:
            conflicts = []
            for oid, serial in serials.items():
                conflicts.extend(self._call(
                    native.store, oid, serial, None, None, oid=oid))
            conflicts.extend(self._call(native.wait_stores))
            if conflicts:
                raise _GCRetry('%s modified meanwhile' % conflicts[0][0].hex())
            if self._call(native.vote, b'', _PACK_DESCRIPTION, b''):
                raise _GCRetry('conflicts at vote')
            # Our deletions are locked now: did a commit since our snapshot
            # write or reference again one of these objects?
            self.sync()
            now = self._call(self._client.last_tid)
            for tid, info in self._written_between(p64(u64(last) + 1), now):
                for oid in info[4]:
                    if oid in garbage:
                        raise _GCRetry('%s written meanwhile' % oid.hex())
                    record = self._record(oid, at=tid)
                    if record is None or record[2] is None:
                        continue
                    refs = self._references(referencesf, oid, record[2])
                    if not garbage.isdisjoint(refs):
                        raise _GCRetry('a garbage object was linked again'
                                       ' by %s' % tid.hex())
            tid = self._call(native.finish)
        except BaseException:
            try:
                native.abort()
            except _neo.NeoError as e:
                logger.warning('pack: aborting the deletions: %s', e.args[1])
            raise
        self._deliver()
        logger.info('pack: %d unreachable objects deleted by %s',
                    len(garbage), tid.hex())
        return tid, sorted(garbage)

    # -- undo ---------------------------------------------------------------

    def undo(self, transaction_id, transaction):
        if self._is_read_only:
            raise ReadOnlyError()
        ctx = self._context(transaction)
        info = self._transaction_info(transaction_id)
        if info is None:
            raise UndoError('non-undoable transaction')
        oids = info[4]
        for delay in (0.05, 0.1, 0.2, None):
            try:
                serials = ctx.native.undo_serials(transaction_id, oids)
            except _neo.NeoError as e:
                raise _error(e) from None
            if delay is None or all(s[2] for s in serials.values()):
                break
            # A NEO/py storage may answer before it processed the unlock of
            # a transaction whose tpc_finish already returned (it does not
            # delay AskObjectUndoSerial; ours does): what looks like a later
            # change may be that. Ask again shortly; a real one stays.
            time.sleep(delay)
        ttid = ctx.native.ttid
        undone = []
        for oid, (current, undo_serial, is_current) in serials.items():
            # Stored already by this transaction (undoing several
            # transactions at once): build on what it stored.
            earlier = ctx.stores.get(oid) if current == ttid else None
            base = current
            if is_current:
                if undo_serial is None:
                    data = None  # undo of the creation
                else:
                    # None if that revision has no data (an undone creation)
                    data = self._call(self._client.object, oid, undo_serial,
                                      None, oid=oid)[2]
                try:
                    self._store(ctx, oid, base, data, undo_serial)
                except ConflictError:
                    raise UndoError(
                        'Some data were modified by a later transaction', oid)
            else:
                # Changed since: let the object's class merge the undo.
                if undo_serial is None:
                    raise UndoError(
                        'Some data were modified by a later transaction', oid)
                try:
                    undo_data = self.loadSerial(oid, undo_serial)
                    if earlier is None:
                        current_data = self.loadSerial(oid, current)
                    else:
                        current_data = earlier[1]
                    if current_data is None:
                        raise ConflictError(oid=oid)
                    data = self.tryToResolveConflict(
                        oid, base, transaction_id, undo_data, current_data)
                    self._store(ctx, oid, base, data)
                except (ConflictError, POSKeyError):
                    raise UndoError(
                        'Some data were modified by a later transaction', oid)
            undone.append(oid)
        try:
            self._resolve(ctx, self._call(ctx.native.wait_stores))
        except ConflictError as e:
            raise UndoError(
                'Some data were modified by a later transaction', e.oid)
        return None, undone

    def _txn_description(self, tid, info):
        user, description, extension, packed, oids = info
        d = {
            'id': tid,
            'time': TimeStamp(tid).timeTime(),
            'user_name': user,
            'description': description,
        }
        if extension:
            try:
                d.update(loads(extension))
            except Exception:
                pass
        return d

    def _pack_horizon(self):
        """``(boundary, orders, partial)`` for the undo log, from the pack
        orders: transactions at or before `boundary` (the newest pack time
        of an approved full pack) lost the history an undo needs, as in a
        packed FileStorage; `orders` are the transactions that carry a pack
        order and `partial` the pack times of partial packs, which are the
        deletions of pack's garbage collection: pack's own work, not
        undoable user transactions."""
        boundary = z64
        orders, partial = set(), set()
        for pack_id, approved, is_partial, pack_tid in self._call(
                self._client.pack_orders):
            orders.add(pack_id)
            if approved is False:
                continue
            if is_partial:
                partial.add(pack_tid)
            elif approved and pack_tid > boundary:
                boundary = pack_tid
        return boundary, orders, partial

    def undoLog(self, first=0, last=-20, filter=None):
        if last < 0:
            last = first - last
        if last <= first:
            return []
        boundary, orders, partial = self._pack_horizon()
        # The storages list TIDs newest first by position; entries this log
        # does not show (hidden, filtered out) make it look further back.
        window = last + 10
        while True:
            tids = self._call(self._client.undo_log_tids, 0, window)
            result, skip = [], first
            for tid in tids:
                if tid <= boundary:
                    return result
                if tid in orders:
                    continue
                info = self._transaction_info(tid)
                if info is None:
                    continue
                if tid in partial and info[1] == _PACK_DESCRIPTION:
                    continue
                d = self._txn_description(tid, info)
                if filter is not None and not filter(d):
                    continue
                if skip:
                    skip -= 1
                    continue
                result.append(d)
                if len(result) >= last - first:
                    return result
            if len(tids) < window:
                return result
            window *= 4

    def undoInfo(self, first=0, last=-20, specification=None):
        if specification:
            def filter(d):
                for k, v in specification.items():
                    if k not in d or d[k] != v:
                        return False
                return True
        else:
            filter = None
        return self.undoLog(first, last, filter)

    # -- iteration ----------------------------------------------------------

    def iterator(self, start=None, stop=None):
        return _Iterator(self, start, stop)

    def copyTransactionsFrom(self, other, verbose=False):
        """Copies every transaction of `other` with its TID."""
        for txn in other.iterator():
            if verbose:
                logger.info('copying transaction %s', txn.tid.hex())
            self.tpc_begin(txn, txn.tid, txn.status)
            try:
                for record in txn:
                    self.restore(record.oid, record.tid, record.data, '',
                                 record.data_txn, txn)
                self.tpc_vote(txn)
                self.tpc_finish(txn)
            except BaseException:
                self.tpc_abort(txn)
                raise


class _Iterator:
    """``iterator(start, stop)``: transactions in TID order, in chunks."""

    def __init__(self, storage, start, stop):
        self._storage = storage
        self._next = start or z64
        # What is committed later is not seen by this iterator.
        last = storage.lastTransaction()
        self._stop = last if stop is None else min(stop, last)
        self._chunk = []
        self._done = False

    def __iter__(self):
        return self

    def close(self):
        self._done = True
        self._chunk = []

    def __next__(self):
        storage = self._storage
        while not self._chunk:
            if self._done:
                raise StopIteration
            tids = storage._call(storage._client.iterate_tids,
                                 self._next, self._stop, 100)
            if not tids:
                self._done = True
                raise StopIteration
            self._chunk = list(tids)
            self._next = p64(u64(tids[-1]) + 1)
        tid = self._chunk.pop(0)
        info = storage._transaction_info(tid)
        if info is None:
            return next(self)
        user, description, extension, packed, oids = info
        ext = {}
        if extension:
            try:
                ext = loads(extension)
            except Exception:
                ext = {}
        txn = _TransactionRecord(tid, 'p' if packed else ' ', user,
                                 description, ext)
        txn._storage = storage
        txn._oids = oids
        return txn


class _TransactionRecord(TransactionRecord):
    """One transaction of the iterator; its records are loaded lazily."""

    _oids = ()
    _storage = None

    def __iter__(self):
        storage = self._storage
        for oid in self._oids:
            try:
                serial, _, data, data_serial = storage._client.object(
                    oid, self.tid, None)
            except _neo.NeoError as e:
                if e.args[0] in ('oid_not_found', 'oid_does_not_exist',
                                 'no_data'):
                    continue  # only checked, or removed by pack
                raise _error(e, oid) from None
            yield DataRecord(oid, serial, data, data_serial)

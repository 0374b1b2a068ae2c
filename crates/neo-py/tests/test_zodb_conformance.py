"""ZODB's own storage conformance suites, against live NEO clusters:
one storage (replicas=0), two storages with replicas=1, and again with
TLS for every node and client.

Each test gets a cluster of its own, since ZODB's tests expect an empty
database (``neosimple`` starts in a fraction of a second)."""

import unittest

from ZODB.tests import (
    BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
    MTStorage, PackableStorage, PersistentStorage, ReadOnlyStorage,
    RecoveryStorage, RevisionStorage, StorageTestBase, Synchronization,
    TransactionalUndoStorage)

from neocluster import Cluster

try:
    from ZODB.tests import racetest  # noqa: F401 (ZODB >= 5.7)
    HAVE_RACETEST = True
except ImportError:
    HAVE_RACETEST = False


def _hide_pack_transactions(storage):
    """Like NEO/py's tests: the transactions carrying pack orders (and the
    deletions of pack's garbage collection) are not in undoLog, as ZODB's
    tests expect of a pack."""
    undo_log = storage.undoLog

    def undoLog(*args, **kw):
        return [d for d in undo_log(*args, **kw)
                if d['description'] != b'IStorage.pack']
    storage.undoLog = undoLog


class NEOTestBase(StorageTestBase.StorageTestBase):
    storages = 1
    replicas = 0
    tls = False

    def setUp(self):
        super().setUp()
        self._cluster = Cluster(self.storages, self.replicas,
                                tls=self.tls).start()
        self._extra = []
        self.open()

    def open(self, read_only=False):
        self._storage = self._cluster.storage(read_only=read_only)
        self._storage.wait_for_pack = True
        _hide_pack_transactions(self._storage)

    def _new_storage_client(self):
        storage = self._cluster.storage()
        self._extra.append(storage)
        return storage

    def tearDown(self):
        try:
            super().tearDown()
            for storage in self._extra:
                storage.close()
        finally:
            self._cluster.stop()


class GeneralSuites(
        BasicStorage.BasicStorage,
        RevisionStorage.RevisionStorage,
        HistoryStorage.HistoryStorage,
        IteratorStorage.IteratorStorage,
        IteratorStorage.ExtendedIteratorStorage,
        TransactionalUndoStorage.TransactionalUndoStorage,
        Synchronization.SynchronizedStorage,
        ConflictResolution.ConflictResolvingStorage,
        ConflictResolution.ConflictResolvingTransUndoStorage,
        MTStorage.MTStorage,
        ReadOnlyStorage.ReadOnlyStorage,
        PersistentStorage.PersistentStorage):
    pass


class PackSuites(PackableStorage.PackableStorageWithOptionalGC,
                 PackableStorage.PackableUndoStorage):
    pass


class RecoverySuites(RecoveryStorage.RecoveryStorage):

    def setUp(self):
        super().setUp()
        self._dst_cluster = Cluster(self.storages, self.replicas).start()
        self._dst = self._dst_cluster.storage()
        self._dst.wait_for_pack = True

    def tearDown(self):
        try:
            self._dst.close()
        finally:
            self._dst_cluster.stop()
            super().tearDown()

    def new_dest(self):
        return self._dst_cluster.storage()


def _expect_failures(cls):
    """ZODB tests that need what NEO does not do (NEO/py marks them as
    expected failures too)."""
    for name, reason in (
            ('testPackUndoLog', 'the pack order is a transaction of its own,'
                                ' listed by undoLog (as NEO/py)'),
            ('testTransactionalUndoAfterPack',
             'NEO refuses to undo a transaction whose previous revision was'
             ' packed (UNDO_PACK_ERROR), as NEO/py'),
    ):
        if hasattr(cls, name):
            setattr(cls, name, unittest.expectedFailure(getattr(cls, name)))
    return cls


def _alias_check_methods(cls):
    """ZODB 5 before 5.8 names its tests check*: run them too."""
    for name in dir(cls):
        if name.startswith('check') and callable(getattr(cls, name)):
            alias = 'test_' + name[len('check'):]
            if not hasattr(cls, alias):
                setattr(cls, alias, getattr(cls, name))
    return cls


@_expect_failures
@_alias_check_methods
class TestOneStorage(NEOTestBase, GeneralSuites):
    """replicas=0, one storage node."""


@_expect_failures
@_alias_check_methods
class TestTwoStoragesReplicated(NEOTestBase, GeneralSuites):
    """replicas=1, two storage nodes."""
    storages = 2
    replicas = 1


# Every suite again with TLS for every node and client: the general ones
# on one storage and on two replicated storages (storage to storage over
# TLS too), pack and recovery on two.
@_expect_failures
@_alias_check_methods
class TestOneStorageTLS(NEOTestBase, GeneralSuites):
    """replicas=0, one storage node; every node and client with TLS."""
    tls = True


@_expect_failures
@_alias_check_methods
class TestTwoStoragesReplicatedTLS(NEOTestBase, GeneralSuites):
    """replicas=1, two storage nodes; every node and client with TLS."""
    storages = 2
    replicas = 1
    tls = True


@_expect_failures
@_alias_check_methods
class TestPackOneStorage(NEOTestBase, PackSuites):
    pass


@_expect_failures
@_alias_check_methods
class TestPackTwoStoragesReplicated(NEOTestBase, PackSuites):
    storages = 2
    replicas = 1


@_expect_failures
@_alias_check_methods
class TestRecoveryOneStorage(RecoverySuites, NEOTestBase):
    pass


@_expect_failures
@_alias_check_methods
class TestRecoveryTwoStoragesReplicated(RecoverySuites, NEOTestBase):
    storages = 2
    replicas = 1


@_expect_failures
@_alias_check_methods
class TestPackTwoStoragesReplicatedTLS(NEOTestBase, PackSuites):
    storages = 2
    replicas = 1
    tls = True


@_expect_failures
@_alias_check_methods
class TestRecoveryTwoStoragesReplicatedTLS(RecoverySuites, NEOTestBase):
    storages = 2
    replicas = 1
    tls = True


# ZODB's DB-level tests (export/import, savepoints, failing commits,
# several undos in one transaction...) through ZODB.DB on a NEO storage.
from ZODB.tests import testZODB  # noqa: E402


class _ZODBTestsOnNEO(testZODB.ZODBTests):
    storages = 1
    replicas = 0

    def setUp(self):
        # ZODB's TestCase setUp (a temporary directory), not ZODBTests'
        # (which opens a FileStorage).
        testZODB.ZODB.tests.util.TestCase.setUp(self)
        self._cluster = Cluster(self.storages, self.replicas).start()
        self._storage = self._cluster.storage()
        self._storage.wait_for_pack = True
        self._db = testZODB.ZODB.DB(self._storage)

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            self._cluster.stop()


class TestZODBOneStorage(_ZODBTestsOnNEO):
    """ZODBTests, one storage node."""


class TestZODBTwoStoragesReplicated(_ZODBTestsOnNEO):
    """ZODBTests, two storage nodes with replicas=1."""
    storages = 2
    replicas = 1

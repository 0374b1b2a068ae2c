"""Exceptions of the NEO storage, beyond ZODB's own."""

from ZODB.POSException import ReadConflictError, StorageError


class NEOStorageError(StorageError):
    """The NEO client failed (connection, cluster, protocol...)."""


class NEOStorageClosedError(NEOStorageError):
    """The storage was closed."""


class NEOStorageConnectionError(NEOStorageError):
    """No primary master accepted us in time: wrong address or cluster
    name, or the cluster is not running."""


class NEOPrimaryMasterLost(ReadConflictError, NEOStorageError):
    """The connection to the primary master was lost during the operation;
    retrying the transaction is the right thing to do."""

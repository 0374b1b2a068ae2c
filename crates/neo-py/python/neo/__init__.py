"""NEO: distributed, redundant and transactional storage for ZODB.

This package is the client side of NEO in Rust: ``neo.client.Storage`` is a
ZODB storage, a drop-in for NEO/py's, built on the Rust client library
(``neo._neo``).
"""

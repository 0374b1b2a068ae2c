"""Client metrics: ``Storage.metrics()`` counts the cache's hits and misses
as loads make them, and the ``metrics`` option (Storage keyword, ZConfig
key, ``neo://`` query) serves the same text on ``GET /metrics``."""

import socket
import urllib.error
import urllib.request

import pytest
import ZODB.config
from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

from neocluster import Cluster
from neo.client.zodburi import resolve_uri

CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8'


@pytest.fixture(scope='module')
def cluster():
    c = Cluster(storages=2, replicas=1).start()
    yield c
    c.stop()


def samples(text):
    """{series: value} of an OpenMetrics text, which must end with # EOF."""
    assert text.endswith('# EOF\n'), text
    found = {}
    for line in text.splitlines():
        if line.startswith('#'):
            continue
        series, value = line.rsplit(' ', 1)
        found[series] = float(value)
    return found


def free_address():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return '127.0.0.1:%d' % s.getsockname()[1]


def scrape(address, path='/metrics'):
    with urllib.request.urlopen('http://%s%s' % (address, path),
                                timeout=10) as response:
        assert response.headers['Content-Type'] == CONTENT_TYPE
        return samples(response.read().decode())


def commit(storage, objects):
    """Commits {oid: data} as new objects."""
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    for oid, data in objects.items():
        storage.store(oid, z64, data, '', txn)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)


def test_cache_hits_and_misses_follow_loads(cluster):
    writer = cluster.storage()
    reader = cluster.storage()
    try:
        oids = [writer.new_oid() for _ in range(2)]
        data = {oid: b'metrics %d' % i for i, oid in enumerate(oids)}
        commit(writer, data)
        reader.sync()
        before = samples(reader.metrics())
        reader.load(oids[0])    # miss: asked of a storage
        reader.load(oids[0])    # hit
        reader.load(oids[0])    # hit
        reader.load(oids[1])    # miss
        after = samples(reader.metrics())
        assert after['neo_client_cache_misses_total'] == \
            before['neo_client_cache_misses_total'] + 2
        assert after['neo_client_cache_hits_total'] == \
            before['neo_client_cache_hits_total'] + 2
        assert after['neo_client_cache_entries'] == \
            before['neo_client_cache_entries'] + 2
        assert after['neo_client_cache_size_bytes'] >= \
            before['neo_client_cache_size_bytes'] + sum(map(len, data.values()))
        # Only the misses went to a storage.
        asked = 'neo_client_round_trip_seconds_count{request="AskObject"}'
        assert after[asked] == before.get(asked, 0) + 2
    finally:
        reader.close()
        writer.close()


def test_the_metrics_option_serves_the_endpoint(cluster):
    address = free_address()
    storage = cluster.storage(metrics=address)
    try:
        oid = storage.new_oid()
        commit(storage, {oid: b'served'})
        storage.load(oid)
        served = scrape(address)
        assert served['neo_client_cache_hits_total'] >= 1
        assert served[
            'neo_client_round_trip_seconds_count'
            '{request="AskFinishTransaction"}'] == 1
        with pytest.raises(urllib.error.HTTPError) as error:
            scrape(address, '/other')
        assert error.value.code == 404
    finally:
        storage.close()


def test_zconfig_and_uri_take_the_metrics_option(cluster):
    address = free_address()
    storage = ZODB.config.storageFromString(
        '%%import neo.client\n<NEOStorage>\n  master_nodes %s\n  name %s\n'
        '  metrics %s\n%s</NEOStorage>\n'
        % (cluster.master_nodes, cluster.name, address, cluster.zconfig_tls()))
    try:
        assert 'neo_client_cache_hits_total' in scrape(address)
    finally:
        storage.close()
    address = free_address()
    factory, _ = resolve_uri('neo://%s@%s?metrics=%s%s' % (
        cluster.name, cluster.master_nodes.replace(' ', ','), address,
        cluster.uri_tls()))
    storage = factory()
    try:
        assert 'neo_client_cache_misses_total' in scrape(address)
    finally:
        storage.close()


def test_a_bad_metrics_address_is_refused(cluster):
    with pytest.raises(ValueError, match='metrics'):
        cluster.storage(metrics='127.0.0.1:port')

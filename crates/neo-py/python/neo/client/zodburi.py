"""``neo://name@master[,master...]?option=value`` URIs for zodburi
(entry point ``zodburi.resolvers``)."""

import os
from io import StringIO
from urllib.parse import parse_qsl, unquote, urlsplit

import ZConfig
from ZODB.config import getDbSchema

# Keys of the <NEOStorage> section that a URI may set.
_STORAGE_KEYS = (
    'compress', 'read-only', 'logfile', 'cache-size', 'cache-file',
    'dynamic_master_list', 'ignore-wrong-checksum', 'ca', 'cert', 'key',
    'metrics',
)


def _split(uri):
    parts = urlsplit(uri)
    if parts.scheme not in ('neo', 'neos'):
        raise ValueError('invalid uri: %s : expected neo:// or neos:// scheme'
                         % uri)
    if parts.path:
        raise ValueError('invalid uri: %s : non-empty path' % uri)
    if parts.fragment:
        raise ValueError('invalid uri: %s : non-empty fragment' % uri)
    netloc = parts.netloc
    if '@' not in netloc:
        raise ValueError('invalid uri: %s : cluster name not specified' % uri)
    name, masters = netloc.rsplit('@', 1)
    name = unquote(name)
    masters = [m for m in masters.split(',') if m]
    if not name or not masters:
        raise ValueError('invalid uri: %s : cluster name or masters missing'
                         % uri)
    return parts.scheme, name, masters, parse_qsl(parts.query)


def _storage_options(uri):
    scheme, name, masters, query = _split(uri)
    storage = {}
    dbkw = {}
    for key, value in query:
        if key in ('master_nodes', 'name'):
            raise ValueError('invalid uri: %s : invalid option name %r'
                             % (uri, key))
        zkey = key.replace('_', '-')
        if key == 'dynamic_master_list':
            zkey = key
        if zkey in _STORAGE_KEYS:
            storage[zkey] = value
        else:
            dbkw[key] = value
    if scheme == 'neos':
        for k in ('ca', 'cert', 'key'):
            if k not in storage:
                env = os.environ.get('NEO_' + k.upper())
                if not env:
                    raise ValueError(
                        'invalid uri: %s : option %s not specified and'
                        ' $NEO_%s is also not set' % (uri, k, k.upper()))
                storage[k] = env
    return name, masters, storage, dbkw


def resolve_uri(uri):
    """zodburi resolver: returns (storage factory, database options)."""
    name, masters, storage, dbkw = _storage_options(uri)
    lines = ['%import neo.client', '<NEOStorage>',
             '  master_nodes\t%s' % ' '.join(masters),
             '  name\t%s' % name]
    for key, value in storage.items():
        lines.append('  %s\t%s' % (key, value))
    lines.append('</NEOStorage>')
    text = '\n'.join(lines) + '\n'
    schema = ZConfig.loadSchemaFile(StringIO(
        '<schema>\n  <import package="ZODB"/>\n'
        '  <section type="ZODB.storage" name="*" attribute="storage"/>\n'
        '</schema>\n'))
    config, _ = ZConfig.loadConfigFile(schema, StringIO(text))
    factory = config.storage

    def storage_factory():
        return factory.open()

    return storage_factory, dbkw

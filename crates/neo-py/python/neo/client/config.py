"""ZConfig glue for ``<NEOStorage>`` (component.xml)."""

import re

from ZODB.config import BaseConfig


class NeoStorage(BaseConfig):

    def open(self):
        from .Storage import Storage
        config = self.config
        options = {}
        for key in config.getSectionAttributes():
            value = getattr(config, key)
            if value is not None:
                options[key] = value
        return Storage(**options)


def compress(value):
    """boolean, or ``zlib`` / ``zlib=LEVEL``."""
    from ZConfig.datatypes import asBoolean
    try:
        return asBoolean(value)
    except ValueError:
        pass
    match = re.match(r'zlib(?:=(\d+))?$', value)
    if match is None:
        raise ValueError("not a valid 'compress' option: %r" % (value,))
    level = match.group(1)
    if level is None:
        return True
    level = int(level)
    if not 1 <= level <= 9:
        raise ValueError('invalid compression level: %d' % (level,))
    return (0, level)

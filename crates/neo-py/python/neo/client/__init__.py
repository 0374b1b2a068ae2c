"""ZODB storage for NEO clusters: ``from neo.client.Storage import Storage``.

``%import neo.client`` in a ZODB configuration makes the ``<NEOStorage>``
section available (component.xml); ``neo://`` URIs are resolved by
``neo.client.zodburi``.
"""

"""The client's log file (`logfile=`): the Rust client's records and the
``neo`` Python loggers' in the daemons' line format, reopened by
logrotate's signals, read by neolog."""

import os
import subprocess
import sys
import textwrap

import pytest

from neocluster import Cluster, bin_dir


@pytest.fixture(scope='module')
def cluster():
    c = Cluster().start()
    yield c
    c.stop()


# Run in a process of its own: the NEO log is one per process.
CLIENT = textwrap.dedent('''
    import logging, os, signal, sys
    import transaction, ZODB
    from neo.client.Storage import Storage
    masters, name, path = sys.argv[1:]
    db = ZODB.DB(Storage(master_nodes=masters, name=name, logfile=path))
    with db.transaction() as conn:
        conn.root()['x'] = 1
    logging.getLogger('neo.test').warning('before rotation\\nsecond line')
    os.rename(path, path + '.1')
    signal.raise_signal(signal.SIGRTMIN + 1)
    logging.getLogger('neo.test').info('after rotation')
    try:
        raise ValueError('boom')
    except ValueError:
        logging.getLogger('neo.test').exception('with a traceback')
    db.close()
''')


def neolog(*args):
    out = subprocess.run([os.path.join(bin_dir(), 'neolog'), '-d', '', *args],
                         check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def test_client_log_file(cluster, tmp_path):
    path = str(tmp_path / 'client.log')
    subprocess.run([sys.executable, '-c', CLIENT, cluster.master_nodes,
                    cluster.name, path], check=True, timeout=120)
    rotated = neolog(path + '.1')
    # The Rust client's records, with the NID it was given.
    assert any(line.split()[1:2] == ['C1'] and
               'identified to the primary master' in line
               for line in rotated), rotated
    # The Python loggers', multi-line records line by line.
    warning = [line for line in rotated if line.startswith('WARNING')]
    assert warning == ['WARNING   C1         before rotation',
                       'WARNING   C1         second line logger="neo.test"'], \
        rotated
    after = neolog(path)
    assert after[0] == 'INFO      C1         after rotation logger="neo.test"', \
        after
    errors = neolog('-l', 'error', path)
    assert errors[0] == 'ERROR     C1         with a traceback', errors
    assert any('ValueError: boom' in line for line in errors), errors
    assert not any('after rotation' in line for line in rotated)
    for line in open(path + '.1').read().splitlines() + \
            open(path).read().splitlines():
        assert '\x1b' not in line

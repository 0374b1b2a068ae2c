"""Live NEO clusters for the tests: ``neosimple`` on free 127.0.0.1 ports.

The binaries are taken from ``$NEO_BIN_DIR``, else from the workspace's
``target/release``, else ``target/debug``.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))


def bin_dir():
    env = os.environ.get('NEO_BIN_DIR')
    if env:
        return env
    for profile in ('release', 'debug'):
        path = os.path.join(ROOT, 'target', profile)
        if os.path.exists(os.path.join(path, 'neosimple')):
            return path
    raise RuntimeError('neosimple not built: run cargo build --bin neosimple')


_counter = [0]


def make_pki(directory):
    """Throw-away certificates (``neo-test-pki``, see ``neo_net::test_pki``)
    in `directory`: ``node`` (CA file with a CRL), ``revoked``, ``expired``
    and ``foreign`` (another CA) certificates and keys."""
    os.makedirs(directory, exist_ok=True)
    subprocess.run([os.path.join(bin_dir(), 'neo-test-pki'), directory],
                   check=True)
    return directory


def credentials(pki, name='node'):
    """ca/cert/key of one certificate of `pki`, as Storage keywords."""
    ca = 'ca-without-crl.crt' if name == 'revoked' else (
        'foreign-ca.crt' if name == 'foreign' else 'ca.crt')
    return {'ca': os.path.join(pki, ca),
            'cert': os.path.join(pki, name + '.crt'),
            'key': os.path.join(pki, name + '.key')}


class Cluster:
    """One neosimple process: a master, `storages` storages, an admin."""

    def __init__(self, storages=1, replicas=0, name=None, partitions=4,
                 tls=False, adapter=None, databases=None):
        _counter[0] += 1
        self.name = name or 'pytest%d_%d' % (os.getpid(), _counter[0])
        self.storages = storages
        # Another engine than SQLite, with one database string per storage
        # (e.g. ``adapter='Importer'`` and the paths of importer.conf files).
        self.adapter = adapter
        self.databases = databases
        self.replicas = replicas
        self.partitions = partitions
        self.process = None
        self.master_nodes = None
        self.dir = tempfile.mkdtemp(prefix='neo-pytest-')
        # With TLS: every node and every client of `storage()` use these.
        self.pki = make_pki(os.path.join(self.dir, 'pki')) if tls else None
        self.tls = credentials(self.pki) if tls else {}

    def start(self, timeout=30):
        names = self.databases or ['s%d' % i for i in range(self.storages)]
        adapter = ['--adapter', self.adapter] if self.adapter else []
        self.log = open(os.path.join(self.dir, 'neosimple.log'), 'wb+')
        self.process = subprocess.Popen(
            [os.path.join(bin_dir(), 'neosimple'), *names,
             '--temp_dir', os.path.join(self.dir, 'data'),
             '--name', self.name,
             '--replicas', str(self.replicas),
             '--partitions', str(self.partitions),
             '--master_port', '0', '--admin_port', '0', *adapter,
             *('--%s=%s' % item for item in sorted(self.tls.items()))],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        for line in self.process.stdout:
            line = line.decode()
            if line.startswith('master_nodes = '):
                self.master_nodes = line.split('=', 1)[1].strip()
            elif line.startswith('admin = '):
                self.admin = line.split('=', 1)[1].strip()
                break
            if time.time() > deadline:
                break
        if self.master_nodes is None:
            self.stop()
            raise RuntimeError('neosimple did not start: see %s' % self.dir)
        return self

    def storage(self, **kw):
        from neo.client.Storage import Storage
        return Storage(master_nodes=self.master_nodes, name=self.name,
                       **dict(self.tls, **kw))

    def zconfig_tls(self):
        """The TLS lines of a <NEOStorage> section."""
        return ''.join('  %s %s\n' % item for item in sorted(self.tls.items()))

    def uri_tls(self):
        """The TLS options of a neo:// URI."""
        return ''.join('&%s=%s' % item for item in sorted(self.tls.items()))

    def stop(self, keep=False):
        """Stops neosimple; `keep` keeps the databases for a new start."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout:
            process.stdout.close()
        if getattr(self, 'log', None):
            self.log.close()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def database(self, index=0):
        """The SQLite file of storage `index`."""
        return os.path.join(self.dir, 'data', 's%d.sqlite' % index)

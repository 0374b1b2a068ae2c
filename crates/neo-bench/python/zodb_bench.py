#!/usr/bin/env python3
"""The ZODB side of neobench: one storage, the same workloads for all.

    zodb_bench.py --kind neo --master 127.0.0.1:PORT --name CLUSTER --plan JSON
    zodb_bench.py --kind zeo --address 127.0.0.1:PORT --plan JSON
    zodb_bench.py --kind filestorage --path FILE.fs --plan JSON

The plan (a JSON object, written by neobench so that the three storages of
one run get the same sizes) holds: objects, load_clients, load_window,
serial_commits, committers, commit_window, app_items, app_batch,
app_lookups, app_startup_lookups, app_prefetch_window, phase_limit (seconds any one loop may
take), seed.

`--server-pid PID` (repeatable) names server processes whose CPU time
(/proc) is reported per cold load and per commit.

Figures go to stdout as one JSON object; progress goes to stderr.
Every loop stops at its count or at its time limit, whichever comes first.
"""

import argparse
import json
import multiprocessing
import os
import random
import sys
import threading
import time

from persistent import Persistent

Z64 = b"\0" * 8


def log(message):
    print("zodb_bench:", message, file=sys.stderr, flush=True)


def open_storage(spec, read_only=False, cache_dir=None):
    """`cache_dir`: keep the client cache there across restarts (NEO's
    cache_file, ZEO's persistent client cache); FileStorage has none."""
    kind = spec["kind"]
    if kind == "neo":
        from neo.client.Storage import Storage
        cache_file = cache_dir and os.path.join(cache_dir, "neo.cache")
        return Storage(master_nodes=spec["master"], name=spec["name"],
                       read_only=read_only, cache_file=cache_file)
    if kind == "zeo":
        from ZEO.ClientStorage import ClientStorage
        host, port = spec["address"].rsplit(":", 1)
        persistent = {"client": "bench", "var": cache_dir} if cache_dir else {}
        return ClientStorage((host, int(port)), wait_timeout=30,
                             read_only=read_only, **persistent)
    if kind == "filestorage":
        from ZODB.FileStorage import FileStorage
        return FileStorage(spec["path"], read_only=read_only)
    raise ValueError("unknown storage kind %r" % kind)


def reader_storage(spec):
    # A FileStorage is locked by its one writer: other processes read it
    # read-only. Clients of a server are all equal.
    return open_storage(spec, read_only=spec["kind"] == "filestorage")


def percentiles(samples):
    """Median and 99th percentile of seconds, in µs."""
    if not samples:
        return 0.0, 0.0
    ordered = sorted(samples)

    def at(q):
        return ordered[int(round((len(ordered) - 1) * q))] * 1e6
    return at(0.5), at(0.99)


def cpu_seconds(pids):
    """User + system CPU time of these processes, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def commit_new(storage, datas):
    """One transaction that stores these new objects; returns their oids."""
    from ZODB.Connection import TransactionMetaData
    txn = TransactionMetaData(user="bench", description="")
    storage.tpc_begin(txn)
    oids = []
    for data in datas:
        oid = storage.new_oid()
        storage.store(oid, Z64, data, "", txn)
        oids.append(oid)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)
    return oids


# -- worker processes (parallel loads, concurrent commits) ------------------

def load_worker(spec, oids, window, seed, ready, start, results):
    """Loads each object at most once, in an order of its own, until the
    window closes: every load misses the client's cache. A FileStorage has
    no cache: its readers go round again until the window closes."""
    try:
        storage = reader_storage(spec)
        order = list(oids)
        random.Random(seed).shuffle(order)
        rounds = 1000 if spec["kind"] == "filestorage" else 1
        ready.put(True)
        start.wait(120)
        done = 0
        began = time.perf_counter()
        deadline = began + window
        for oid in (oid for _ in range(rounds) for oid in order):
            if time.perf_counter() >= deadline:
                break
            storage.load(oid)
            done += 1
        results.put((done, time.perf_counter() - began, None))
        storage.close()
    except Exception as e:  # reported by the parent
        ready.put(False)
        results.put((0, 1.0, repr(e)))


def commit_worker(spec, window, seed, ready, start, results, storage=None):
    """Commits 10 new 1 KiB objects per transaction until the window closes
    (in its own process, or as a thread sharing `storage`)."""
    try:
        own = storage is None
        if own:
            storage = open_storage(spec)
        rng = random.Random(seed)
        ready.put(True)
        start.wait(120)
        done = 0
        began = time.perf_counter()
        deadline = began + window
        while time.perf_counter() < deadline:
            commit_new(storage, [rng.randbytes(1024) for _ in range(10)])
            done += 1
        results.put((done, time.perf_counter() - began, None))
        if own:
            storage.close()
    except Exception as e:
        ready.put(False)
        results.put((0, 1.0, repr(e)))


def run_workers(context, target, count, args_of, window):
    """Starts `count` workers, lets them go together, and returns the
    aggregate operations per second."""
    ready, results = context.Queue(), context.Queue()
    start = context.Event()
    workers = [context.Process(target=target,
                               args=args_of(i) + (ready, start, results))
               for i in range(count)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        start.set()
        answers = [results.get(timeout=window + 120) for _ in workers]
    finally:
        start.set()
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
    errors = [error for _, _, error in answers if error]
    if errors:
        raise RuntimeError("worker failed: " + errors[0])
    return sum(done / elapsed for done, elapsed, _ in answers)


# -- the application workload ------------------------------------------------

class Item(Persistent):
    """A small application object: a key, a counter and 100 bytes."""

    def __init__(self, key, payload):
        self.key = key
        self.count = 0
        self.payload = payload


def app_workload(spec, plan, limit):
    import transaction
    import ZODB
    from BTrees.OOBTree import OOBTree
    items, batch, lookups = plan["app_items"], plan["app_batch"], plan["app_lookups"]
    rng = random.Random(plan["seed"] + 7)
    keys = ["key%09d" % i for i in range(items)]
    rng.shuffle(keys)
    figures = {"items": items, "batch": batch}

    # Insert, in random key order, `batch` items per transaction.
    db = ZODB.DB(open_storage(spec))
    manager = transaction.TransactionManager()
    connection = db.open(manager)
    tree = connection.root()["neobench"] = OOBTree()
    manager.commit()
    samples = []
    inserted = 0
    began = time.perf_counter()
    for first in range(0, items, batch):
        if time.perf_counter() - began > limit:
            break
        start = time.perf_counter()
        for key in keys[first:first + batch]:
            tree[key] = Item(key, rng.randbytes(100))
        manager.commit()
        samples.append(time.perf_counter() - start)
        inserted += len(keys[first:first + batch])
    elapsed = time.perf_counter() - began
    median, p99 = percentiles(samples)
    figures.update(inserted=inserted, insert_items_per_s=inserted / elapsed,
                   insert_batch_median_us=median, insert_batch_p99_us=p99)
    connection.close()
    db.close()
    keys = keys[:inserted]

    # Cold random lookups: a new DB (and storage), so nothing is cached.
    db = ZODB.DB(open_storage(spec))
    connection = db.open(transaction.TransactionManager())
    tree = connection.root()["neobench"]
    wanted = rng.sample(keys, min(lookups, len(keys)))
    samples = []
    began = time.perf_counter()
    for key in wanted:
        if time.perf_counter() - began > limit:
            break
        start = time.perf_counter()
        item = tree[key]
        assert item.key == key
        samples.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    median, p99 = percentiles(samples)
    figures.update(lookups=len(samples), lookup_median_us=median,
                   lookup_p99_us=p99, lookups_per_s=len(samples) / elapsed)
    connection.close()
    db.close()

    # Full scan in key order, every item loaded, by another new DB.
    db = ZODB.DB(open_storage(spec))
    connection = db.open(transaction.TransactionManager())
    tree = connection.root()["neobench"]
    scanned = 0
    began = time.perf_counter()
    for key, item in tree.items():
        scanned += item.count + 1
        if scanned % 1000 == 0 and time.perf_counter() - began > limit:
            break
    elapsed = time.perf_counter() - began
    figures.update(scanned=scanned, scan_items_per_s=scanned / elapsed,
                   complete_scan=scanned == len(keys))
    connection.close()
    db.close()

    # The same scan by a new DB that prefetches, as a scan written for
    # IPrefetchStorage does: the buckets of each level of the tree at once,
    # then the items, a window at a time, before reading them.
    db = ZODB.DB(open_storage(spec))
    connection = db.open(transaction.TransactionManager())
    tree = connection.root()["neobench"]
    window = plan["app_prefetch_window"]
    scanned = 0
    began = time.perf_counter()
    level = [tree]
    while level:
        children = []
        for node in level:
            state = node.__getstate__()
            if state and len(state) == 2:  # (children and keys, first bucket)
                children.extend(state[0][::2])
        connection.prefetch(children)
        level = [child for child in children if isinstance(child, OOBTree)]
    batch = []
    for _, item in tree.items():
        batch.append(item)
        if len(batch) == window:
            connection.prefetch(batch)
            scanned += sum(item.count + 1 for item in batch)
            batch = []
            if time.perf_counter() - began > limit:
                break
    else:
        connection.prefetch(batch)
        scanned += sum(item.count + 1 for item in batch)
    elapsed = time.perf_counter() - began
    figures.update(prefetch_scanned=scanned,
                   prefetch_scan_items_per_s=scanned / elapsed,
                   complete_prefetch_scan=scanned == len(keys))
    connection.close()
    db.close()
    if spec["kind"] != "filestorage":
        figures.update(app_startup(spec, plan, keys, limit))
    return figures


def app_startup(spec, plan, keys, limit):
    """The application's start-up: opening the storage and a new DB, then
    the first lookups (the same keys each time), with the client cache cold
    and with a persistent client cache that a previous run (the same
    lookups) left. Nothing is committed in between: the warm start checks
    the cache against the cluster (NEO) or server (ZEO) and finds nothing
    changed."""
    import shutil
    import tempfile
    import transaction
    import ZODB
    rng = random.Random(plan["seed"] + 11)
    wanted = rng.sample(keys, min(plan["app_startup_lookups"], len(keys)))
    cache_dir = tempfile.mkdtemp(prefix="zodb-bench-cache-")

    def start_up(persistent):
        began = time.perf_counter()
        db = ZODB.DB(open_storage(spec, cache_dir=persistent and cache_dir))
        connection = db.open(transaction.TransactionManager())
        tree = connection.root()["neobench"]
        opened = time.perf_counter() - began
        done = 0
        for key in wanted:
            if time.perf_counter() - began > limit:
                break
            assert tree[key].key == key
            done += 1
        elapsed = time.perf_counter() - began
        connection.close()
        db.close()  # NEO and ZEO write their persistent cache
        return opened, elapsed, done

    try:
        start_up(True)  # leaves the persistent cache
        cold_open, cold, cold_done = start_up(False)
        warm_open, warm, warm_done = start_up(True)
        size = sum(os.path.getsize(os.path.join(cache_dir, name))
                   for name in os.listdir(cache_dir))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"startup_lookups": len(wanted),
            "startup_cold_ms": cold * 1e3, "startup_cold_done": cold_done,
            "startup_cold_open_ms": cold_open * 1e3,
            "startup_warm_ms": warm * 1e3, "startup_warm_done": warm_done,
            "startup_warm_open_ms": warm_open * 1e3,
            "startup_cache_file_bytes": size}


# -- the storage-level workloads ---------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", required=True,
                        choices=["neo", "zeo", "filestorage"])
    parser.add_argument("--master")
    parser.add_argument("--name")
    parser.add_argument("--address")
    parser.add_argument("--path")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    args = parser.parse_args()
    plan = json.loads(args.plan)
    spec = {"kind": args.kind, "master": args.master, "name": args.name,
            "address": args.address, "path": args.path}
    missing = {"neo": ["master", "name"], "zeo": ["address"],
               "filestorage": ["path"]}[args.kind]
    if any(spec[key] is None for key in missing):
        parser.error("--kind %s needs --%s" % (args.kind, " --".join(missing)))
    limit = float(plan["phase_limit"])
    servers = args.server_pid
    rng = random.Random(plan["seed"])
    report = {"kind": args.kind, "plan": plan}
    import ZODB
    report["python"] = sys.version.split()[0]
    report["zodb_version"] = getattr(ZODB, "__version__", None) or _version("ZODB")
    if args.kind == "zeo":
        report["zeo_version"] = _version("ZEO")

    # Workers are forked by a server that has the storage modules loaded
    # (but no storage open, so no threads yet): starting 16 is cheap.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([
        "ZODB", "ZODB.FileStorage", "ZEO.ClientStorage", "neo.client.Storage",
        "BTrees.OOBTree"])

    # The objects: 100 B to 1 KiB, 100 per transaction (as the Rust side).
    log("%s: writing %d objects" % (args.kind, plan["objects"]))
    storage = open_storage(spec)
    oids = []
    began = time.perf_counter()
    while len(oids) < plan["objects"] and time.perf_counter() - began < limit:
        count = min(100, plan["objects"] - len(oids))
        oids.extend(commit_new(
            storage, [rng.randbytes(rng.randrange(100, 1024)) for _ in range(count)]))
    report["objects_written"] = len(oids)
    storage.close()

    # Serial cold loads: a fresh storage, each object once, random order.
    log("%s: serial cold loads" % args.kind)
    storage = reader_storage(spec)
    order = list(oids)
    rng.shuffle(order)
    samples = []
    cpu = cpu_seconds(servers)
    began = time.perf_counter()
    for oid in order:
        if time.perf_counter() - began > limit:
            break
        start = time.perf_counter()
        storage.load(oid)
        samples.append(time.perf_counter() - start)
    cpu = cpu_seconds(servers) - cpu
    storage.close()
    median, p99 = percentiles(samples)
    report["serial_cold_load_us"] = {"median": median, "p99": p99,
                                     "count": len(samples)}
    if servers:
        report["serial_cold_load_us"]["server_cpu_per_load_us"] = \
            cpu * 1e6 / max(1, len(samples))

    # Parallel loads: separate processes, each its own storage.
    parallel = {}
    for clients in plan["load_clients"]:
        log("%s: parallel loads, %d clients" % (args.kind, clients))
        window = plan["load_window"]
        parallel[str(clients)] = run_workers(
            context, load_worker, clients,
            lambda i: (spec, oids, window, plan["seed"] + 100 + i), window)
    report["parallel_loads_per_s"] = parallel

    # Serial commits of 10 new 1 KiB objects.
    log("%s: serial commits" % args.kind)
    storage = open_storage(spec)
    samples = []
    cpu = cpu_seconds(servers)
    began = time.perf_counter()
    for _ in range(plan["serial_commits"]):
        if time.perf_counter() - began > limit:
            break
        datas = [rng.randbytes(1024) for _ in range(10)]
        start = time.perf_counter()
        commit_new(storage, datas)
        samples.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(servers) - cpu
    median, p99 = percentiles(samples)
    report["serial_commits_10x1KiB"] = {
        "median_us": median, "p99_us": p99, "count": len(samples),
        "tx_per_s": len(samples) / elapsed}
    if servers:
        report["serial_commits_10x1KiB"]["server_cpu_per_tx_us"] = \
            cpu * 1e6 / max(1, len(samples))

    # Concurrent committers: processes with their own storage, except for
    # FileStorage (one writer per file), where they are threads sharing it.
    concurrent = {}
    window = plan["commit_window"]
    if args.kind != "filestorage":
        storage.close()
    for committers in plan["committers"]:
        log("%s: %d concurrent committers" % (args.kind, committers))
        if args.kind == "filestorage":
            concurrent[str(committers)] = _threads_sharing(
                storage, spec, committers, window, plan["seed"])
        else:
            concurrent[str(committers)] = run_workers(
                context, commit_worker, committers,
                lambda i: (spec, window, plan["seed"] + 200 + i), window)
    if args.kind == "filestorage":
        storage.close()
    report["concurrent_commits_tx_per_s"] = concurrent
    report["concurrent_committers_are"] = \
        "threads" if args.kind == "filestorage" else "processes"

    log("%s: application workload" % args.kind)
    report["app"] = app_workload(spec, plan, limit)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


def _threads_sharing(storage, spec, committers, window, seed):
    import queue
    ready, results, start = queue.Queue(), queue.Queue(), threading.Event()
    threads = [threading.Thread(
        target=commit_worker,
        args=(spec, window, seed + 200 + i, ready, start, results, storage),
        daemon=True) for i in range(committers)]
    for thread in threads:
        thread.start()
    for _ in threads:
        ready.get(timeout=120)
    start.set()
    answers = [results.get(timeout=window + 120) for _ in threads]
    for thread in threads:
        thread.join(30)
    errors = [error for _, _, error in answers if error]
    if errors:
        raise RuntimeError("worker failed: " + errors[0])
    return sum(done / elapsed for done, elapsed, _ in answers)


def _version(distribution):
    try:
        from importlib.metadata import version
        return version(distribution)
    except Exception:
        return None


if __name__ == "__main__":
    main()

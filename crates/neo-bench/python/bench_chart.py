#!/usr/bin/env python3
"""Draws neobench's bench.json as a PNG of grouped bar charts.

    bench_chart.py bench.json bench.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STORAGES = [
    ("rust", "NEO, Rust client", "#1f5fa8"),
    ("neo", "NEO via ZODB API", "#5fa8e8"),
    ("zeo", "ZEO", "#e07b39"),
    ("filestorage", "FileStorage (in-process)", "#8a8a8a"),
]


def get(tree, *path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def grouped(axis, groups, series, title, unit, log=False):
    """series: [(label, colour, [value or None per group])]."""
    width = 0.8 / max(1, len(series))
    for index, (label, colour, values) in enumerate(series):
        xs = [g + (index - (len(series) - 1) / 2) * width
              for g in range(len(groups))]
        heights = [v if v is not None else 0 for v in values]
        bars = axis.bar(xs, heights, width, label=label, color=colour)
        for bar, value in zip(bars, values):
            if value is not None:
                axis.annotate(short(value), (bar.get_x() + bar.get_width() / 2,
                                             bar.get_height()),
                              ha="center", va="bottom", fontsize=6,
                              rotation=90 if len(series) * len(groups) > 12 else 0)
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels(groups)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(unit)
    if log:
        axis.set_yscale("log")
    axis.grid(axis="y", alpha=0.3)


def short(value):
    if value >= 10000:
        return "%.0fk" % (value / 1000)
    if value >= 100:
        return "%.0f" % value
    return "%.1f" % value


def main():
    source, target = sys.argv[1], sys.argv[2]
    with open(source) as f:
        report = json.load(f)
    zodb = report.get("zodb", {})

    def side(key):
        return report if key == "rust" else zodb.get(key, {})

    present = [s for s in STORAGES if s[0] == "rust" or s[0] in zodb]
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))

    grouped(axes[0][0], ["median", "p99"],
            [(label, colour, [get(side(key), "serial_cold_load_us", q)
                              for q in ("median", "p99")])
             for key, label, colour in present],
            "Serial cold load latency (lower is better)", "µs", log=True)

    clients = sorted({int(c) for key, _, _ in present
                      for c in (get(side(key), "parallel_loads_per_s") or {})})
    grouped(axes[0][1], [str(c) for c in clients],
            [(label, colour, [get(side(key), "parallel_loads_per_s", str(c))
                              for c in clients])
             for key, label, colour in present],
            "Parallel loads by clients (higher is better)", "loads/s",
            log=True)

    committers = sorted({int(c) for key, _, _ in present
                         for c in (get(side(key), "concurrent_commits_tx_per_s")
                                   or {})})
    grouped(axes[1][0], [str(c) for c in committers],
            [(label, colour, [get(side(key), "concurrent_commits_tx_per_s",
                                  str(c)) for c in committers])
             for key, label, colour in present],
            "Commits of 10 × 1 KiB by committers (higher is better)", "tx/s")

    app = [s for s in present if s[0] != "rust"]
    measures = [("insert_items_per_s", "insert"),
                ("lookups_per_s", "cold lookups"),
                ("scan_items_per_s", "full scan")]
    grouped(axes[1][1], [name for _, name in measures],
            [(label, colour, [get(side(key), "app", m) for m, _ in measures])
             for key, label, colour in app],
            "Application: OOBTree of persistent items (higher is better)",
            "items/s", log=True)

    axes[0][0].legend(fontsize=8, loc="upper left")
    rtt = report.get("floor_round_trip_us", {})
    after = report.get("floor_round_trip_after_us", {})
    figure.suptitle(
        "neobench (%s): loopback round trip %.1f µs median (min %.1f, max %.1f;"
        " %.1f µs at the end), 4 KiB fsync %.0f µs"
        % (report.get("size", "?"), rtt.get("median", 0), rtt.get("min", 0),
           rtt.get("max", 0), after.get("median", 0),
           get(report, "floor_fsync_4k_us", "median") or 0), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Paired wall-clock runs of two `parallel_cpu_alone` builds (before and
after a change), with rayon and the sequential loop, on a shared, noisy
machine: each round runs every contender once per cell, in an order that
rotates with the round, and ratios are taken within the round.

    python3 benches/scripts/parallel_paired.py ROUNDS BEFORE AFTER

BEFORE and AFTER are paths to built `parallel_cpu_alone` examples
(`cargo build --release -p torque-benches --example parallel_cpu_alone`,
copied aside between the two builds); rayon and the loop run from BEFORE.
`SIZES` in the environment overrides the cells, a Python list of
(items, nanoseconds per item) pairs; `KINDS` the calls (`collect,reduce`).
Prints per cell the median time of each contender and the medians of the
per-round ratios.
"""
import os
import re
import statistics
import subprocess
import sys

DEFAULT_SIZES = "[(100000, 0), (1000000, 0), (100, 1000), (3000, 100), (30000, 10), (10000, 0)]"


def main():
    rounds, before, after = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    kinds = os.environ.get("KINDS", "collect,reduce").split(",")
    sizes = [tuple(map(int, p)) for p in re.findall(r"\((\d+),\s*(\d+)\)", os.environ.get("SIZES", DEFAULT_SIZES))]
    cells = [(k, n, ns) for k in kinds for (n, ns) in sizes]
    contenders = [("before", before, "ours"), ("after", after, "ours"),
                  ("rayon", before, "rayon"), ("seq", before, "seq")]
    times = {}
    for r in range(rounds):
        order = contenders[r % 4:] + contenders[:r % 4]
        for (k, n, ns) in cells:
            for name, binary, who in order:
                out = subprocess.run([binary, f"{who}-{k}", str(n), str(ns)],
                                     capture_output=True, text=True, check=True).stdout
                t = float(re.search(r": ([\d.]+) µs per call", out).group(1))
                times.setdefault((k, n, ns, name), []).append(t)
    med = statistics.median
    print("| call | items × ns | before µs | after µs | rayon µs | loop µs "
          "| after ÷ before | after ÷ loop | after ÷ rayon | before ÷ loop | before ÷ rayon |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (k, n, ns) in cells:
        t = lambda name: times[(k, n, ns, name)]
        ratio = lambda a, b: med([x / y for x, y in zip(t(a), t(b))])
        print(f"| {k} | {n} × {ns} | {med(t('before')):.1f} | {med(t('after')):.1f} "
              f"| {med(t('rayon')):.1f} | {med(t('seq')):.1f} | {ratio('after', 'before'):.3f} "
              f"| {ratio('after', 'seq'):.3f} | {ratio('after', 'rayon'):.3f} "
              f"| {ratio('before', 'seq'):.3f} | {ratio('before', 'rayon'):.3f} |")


if __name__ == "__main__":
    main()

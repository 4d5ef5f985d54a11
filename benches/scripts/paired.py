#!/usr/bin/env python3
"""Paired wall-clock runs of `cache_callgrind` binaries, for a before/after
ratio on a shared, noisy machine: each round runs every binary once, one
after the other, and the ratio is taken within the round.

    python3 benches/scripts/paired.py ROUNDS REQUESTS ENV BIN...

ENV is `-` or comma-separated `NAME=VALUE` pairs (e.g. `TTL=3600`) added to
`SEED=7`; `THREADS=n` among them is passed as the thread count instead. A BIN is a path to a built `cache_callgrind`, optionally prefixed
with the policy or peer to run (`quick_cache:PATH`; default `adaptive`).
Prints each round's "ns wall per request", then per binary the median and
the median of its per-round throughput ratios against the first binary.
"""
import os
import re
import statistics
import subprocess
import sys


def main():
    rounds, requests, envspec, bins = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
    env = dict(os.environ, SEED="7")
    if envspec != "-":
        env.update(kv.split("=", 1) for kv in envspec.split(","))
    threads = env.pop("THREADS", "1")
    times = {b: [] for b in bins}
    for r in range(rounds):
        for b in bins:
            name, path = b.split(":", 1) if ":" in b else ("adaptive", b)
            out = subprocess.run([path, name, requests, threads], env=env, capture_output=True,
                                 text=True, check=True).stdout
            times[b].append(float(re.search(r"([\d.]+) ns wall", out).group(1)))
        print(r, {b: times[b][-1] for b in bins}, flush=True)
    base = times[bins[0]]
    for b in bins:
        ratios = [x / y for x, y in zip(base, times[b])]
        print(f"{b}: median {statistics.median(times[b]):.1f} ns; throughput vs {bins[0]}: "
              f"median ratio {statistics.median(ratios):.3f} "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()

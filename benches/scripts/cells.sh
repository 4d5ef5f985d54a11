#!/bin/bash
# Twelve hit-ratio cells (the six and six beyond them), each run
# RUNS times with freshly seeded hashers: the mean miss ratio of Adaptive
# and of quick_cache, and in how many runs Adaptive lost to quick_cache.
#
#   cargo build --release -p torque-benches --example cache_hit_ratio_cell
#   benches/scripts/cells.sh target/release/examples/cache_hit_ratio_cell 12
#
# Copy the binary aside to compare two builds of the policy.
set -euo pipefail
binary=$1
runs=${2:-8}
for cell in "zipf0.8 1000" "zipf0.8 10000" "zipf1.0 1000" "zipf1.0 10000" \
    "scan 1000" "scan 10000" "recency 1000" "recency 10000" \
    "shifting 1000" "shifting 10000" "twice 1000" "twice 10000"; do
    # shellcheck disable=SC2086 # the cell is two arguments
    "$binary" $cell "$runs" | CELL="$cell" python3 -c '
import os, re, sys
ours, peer = [], []
for line in sys.stdin:
    m = re.findall(r"([0-9]\.[0-9]{4})", line)
    if len(m) >= 2:
        ours.append(float(m[0]))
        peer.append(float(m[1]))
lost = sum(1 for a, b in zip(ours, peer) if a > b)
print(os.environ["CELL"].ljust(16),
      f"Adaptive {sum(ours) / len(ours):.4f}",
      f"quick_cache {sum(peer) / len(peer):.4f}",
      f"lost {lost}/{len(ours)}")
'
done

#!/usr/bin/env python3
"""Run one benchmark with two builds in turn and compare their figures.

    python3 bench/paired.py --old OLD_BINARY --new NEW_BINARY [--pairs N] \
        [--out DIR] -- SUBCOMMAND [FLAG ...]
    python3 bench/paired.py --report DIR [DIR ...]

Runs `OLD_BINARY SUBCOMMAND FLAGS --json` and `NEW_BINARY SUBCOMMAND FLAGS
--json` N times each, alternating (old, new, then new, old, ...), so both
see the same drift of a shared machine. Each output is kept in DIR. Prints,
for every figure of the JSON's "median" object, the median over the
invocations of each build, the ratio new/old of those medians, and the
median of the per-pair ratios. `--report` prints the same for the outputs
already kept in one or more DIRs (their pairs pooled).

OLD_BINARY is e.g. a `kiln` from before the benchmarks moved (it has the
subcommands `bench`, `bench-projection`, ...) and NEW_BINARY a `kiln-bench`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(binary, args, path):
    env = dict(os.environ, KILN_LOG=os.environ.get("KILN_LOG", "warn"))
    with open(path, "w") as out, open(path + ".stderr", "w") as err:
        subprocess.run([binary, *args], stdout=out, stderr=err, env=env, check=True)
    with open(path) as f:
        return json.load(f)["median"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old")
    parser.add_argument("--new")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", default="paired-runs")
    parser.add_argument("--report", nargs="+", metavar="DIR")
    parser.add_argument("bench", nargs="*", help="subcommand and flags")
    opts = parser.parse_args()
    if opts.report:
        report(*kept(opts.report))
        return
    if not (opts.old and opts.new and opts.bench):
        parser.error("--old, --new and a subcommand are needed (or --report DIR)")
    args = [*opts.bench, "--json"] if "--json" not in opts.bench else opts.bench
    os.makedirs(opts.out, exist_ok=True)
    old, new = [], []
    for i in range(opts.pairs):
        order = [("old", opts.old, old), ("new", opts.new, new)]
        if i % 2 == 1:
            order.reverse()
        for name, binary, results in order:
            print(f"pair {i + 1}/{opts.pairs}: {name}", file=sys.stderr, flush=True)
            results.append(run(binary, args, os.path.join(opts.out, f"{name}-{i + 1}.json")))
    report(old, new)


def kept(dirs):
    """The medians of the outputs kept in `dirs`, old and new in pair order."""
    old, new = [], []
    for d in dirs:
        i = 1
        while os.path.exists(os.path.join(d, f"old-{i}.json")):
            for name, results in (("old", old), ("new", new)):
                with open(os.path.join(d, f"{name}-{i}.json")) as f:
                    results.append(json.load(f)["median"])
            i += 1
    return old, new


def report(old, new):
    print(f"{len(old)} pairs")
    keys = [k for k in old[0] if k in new[0]]
    width = max(len(k) for k in keys)
    print(f"{'figure':{width}}  {'old median':>12}  {'new median':>12}  {'new/old':>8}  {'pair ratios (median)':>20}")
    for key in keys:
        o = [r[key] for r in old if isinstance(r.get(key), (int, float))]
        n = [r[key] for r in new if isinstance(r.get(key), (int, float))]
        if not o or not n:
            continue
        om, nm = statistics.median(o), statistics.median(n)
        pairs = [b / a for a, b in zip(o, n) if a]
        ratio = nm / om if om else float("nan")
        pair = statistics.median(pairs) if pairs else float("nan")
        print(f"{key:{width}}  {om:12.3f}  {nm:12.3f}  {ratio:8.3f}  {pair:20.3f}")


if __name__ == "__main__":
    main()

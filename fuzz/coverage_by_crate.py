#!/usr/bin/env python3
"""Edge coverage of a fuzz target's corpus, summed per crate (candletron per top-level module),
from libFuzzer's `-print_coverage=1` output; with two outputs, what the second covers that the
first does not, per crate and per function, and by source location: a function's edges include
code inlined into it from other crates, so the uncovered instrumentation points counted by the
file and line they come from say where a new edge really is.

A target's total edge count mixes candletron's parsers with the crates under them (serde_json,
zip, miniz_oxide, safetensors, the standard library): whether a run that still finds edges is
still finding anything in candletron's own code shows only when the edges are attributed.
`-print_coverage` needs a sanitizer runtime to name the functions, so use an ASan build:

    cargo +nightly fuzz build -O checkpoint
    B=fuzz/target/x86_64-unknown-linux-gnu/release/checkpoint
    $B -runs=0 -print_coverage=1 OLD_CORPUS > before.txt 2>&1
    $B -runs=0 -print_coverage=1 OLD_CORPUS NEW_FINDS > after.txt 2>&1
    python3 fuzz/coverage_by_crate.py before.txt after.txt
"""
import collections
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src") + "/"

FUNC = re.compile(r"(?:UN)?COVERED_FUNC: hits: \d+ edges: (\d+)/(\d+) (.*) (\S+):\d+$")
PC = re.compile(r"UNCOVERED_PC: (\S+):\d+$")


def load(path):
    """{(function, file): (covered, total)}, and the uncovered points per crate of their source"""
    out, uncovered = {}, collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            m = FUNC.match(line)
            if m:
                out[(m.group(3), m.group(4))] = (int(m.group(1)), int(m.group(2)))
            m = PC.match(line)
            if m:
                uncovered[crate(m.group(1))] += 1
    if not out:
        sys.exit(f"{path}: no COVERED_FUNC lines (run the target with -print_coverage=1, ASan build)")
    return out, uncovered


def crate(file):
    m = re.search(r"registry/src/[^/]+/([A-Za-z0-9_-]+?)-\d", file)
    if m:
        return m.group(1)
    if file.startswith(SRC):
        return "candletron::" + file[len(SRC):].split("/")[0].removesuffix(".rs")
    if file.startswith(("/rustc/", "/rust/")):
        return "std"
    return file


def per_crate(cov):
    covered, total = collections.Counter(), collections.Counter()
    for (_, file), (c, t) in cov.items():
        covered[crate(file)] += c
        total[crate(file)] += t
    return covered, total


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    first, uncovered = load(argv[1])
    covered, total = per_crate(first)
    if len(argv) == 2:
        for name, c in covered.most_common():
            print(f"{name:40s} {c:7d} of {total[name]:7d}")
        return
    second, uncovered2 = load(argv[2])
    covered2, total2 = per_crate(second)
    print("edges in each crate's functions (inlined code included):")
    names = sorted(set(covered) | set(covered2), key=lambda k: covered[k] - covered2[k])
    for name in names:
        if covered2[name] != covered[name]:
            d = covered2[name] - covered[name]
            print(f"{name:40s} {covered[name]:7d} -> {covered2[name]:7d} ({d:+d}) of {total2[name]}")
    print("\npoints newly covered, by the crate of their source line:")
    for name in sorted(set(uncovered) | set(uncovered2)):
        if uncovered[name] != uncovered2[name]:
            print(f"{name:40s} {uncovered[name] - uncovered2[name]:+7d}")
    print("\nper function:")
    for key, (c, t) in sorted(second.items(), key=lambda kv: crate(kv[0][1])):
        before = first.get(key, (0, t))[0]
        if c != before:
            print(f"{crate(key[1]):24s} {before:4d} -> {c:4d} of {t:4d}  {key[0][:100]}")


if __name__ == "__main__":
    main(sys.argv)

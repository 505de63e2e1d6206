#!/usr/bin/env python3
"""Writes systematic seeds of the `config` target into a folder (default /tmp/config_seeds):
every key of the default config, as an override (the input's first line) and as YAML, with
its default value, with every enumerated value when it is a string, and with values of the
wrong kind or range. Random mutation finds each key's merge, check and emit arms only one
at a time; these seeds hand it all of them, so that a fuzzing run measures what is left.
Run from the repository root after `cargo build --release --bin classify`, then merge the
seeds into the corpus with libFuzzer (`-merge=1`), which keeps only those adding coverage."""
import re
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/config_seeds")
out.mkdir(parents=True, exist_ok=True)
yaml = subprocess.run(["target/release/classify", "--print-config"], check=True,
                      capture_output=True, text=True).stdout
stack, leaves, sections = [], [], []
for line in yaml.splitlines():
    m = re.match(r"^( *)([A-Z0-9_]+):(.*)$", line)
    if not m:
        continue
    depth = len(m.group(1)) // 2
    stack = stack[:depth] + [m.group(2)]
    value = m.group(3).strip()
    (leaves if value else sections).append((list(stack), value))
src = Path("src/config/choices.rs").read_text() + Path("src/config/defaults.rs").read_text()
enums = sorted(set(re.findall(r'\("([A-Za-z0-9_]+)", Self::', src))
               | set(re.findall(r'= "([A-Za-z0-9_]+)"', src)))
bad = ["x", "-1", "0", "1", "0.5", "1e30", "-1e30", "nan", "inf", "[]", "[x]", "[[1]]",
       "[0]", "[-1, 2]", "true", '""', "~", "{a: 1}"]


def as_yaml(path, value):
    return "".join("  " * i + k + ":\n" for i, k in enumerate(path[:-1])) + \
        "  " * (len(path) - 1) + f"{path[-1]}: {value}\n"


def as_override(path, value):
    return ".".join(path) + " " + value.replace(", ", ",").replace(" ", "")


n = 0


def put(text):
    global n
    (out / f"seed_{n:05}").write_text(text)
    n += 1


for path, default in leaves:
    values = [default] + bad
    if default.startswith('"'):
        values += enums + [f'"{v}"' for v in enums]
    for v in values:
        put(as_override(path, v) + "\n")
        put("\n" + as_yaml(path, v))
for path, _ in sections:
    for v in ["~", "{}", "[]", "1"]:
        put("\n" + as_yaml(path, v))
print(f"{n} seeds for {len(leaves)} keys in {out}")

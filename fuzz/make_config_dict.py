#!/usr/bin/env python3
"""Writes fuzz/config.dict, the libFuzzer dictionary of the `config` target: every config
key (dotted, and as a YAML leaf), the enumerated values, some YAML tokens. Run from the
repository root after `cargo build --release --bin classify`, whenever keys change:
`python3 fuzz/make_config_dict.py`, then `cargo fuzz run config -- -dict=fuzz/config.dict`."""
import re
import subprocess
from pathlib import Path

yaml = subprocess.run(["target/release/classify", "--print-config"], check=True,
                      capture_output=True, text=True).stdout
stack, keys, leaves = [], set(), set()
for line in yaml.splitlines():
    m = re.match(r"^( *)([A-Z0-9_]+):", line)
    if not m:
        continue
    depth = len(m.group(1)) // 2
    stack = stack[:depth] + [m.group(2)]
    keys.add(".".join(stack))
    leaves.add(m.group(2))
src = Path("src/config/choices.rs").read_text() + Path("src/config/defaults.rs").read_text()
values = set(re.findall(r'\("([A-Za-z0-9_]+)", Self::', src))
values |= set(re.findall(r'= "([A-Za-z0-9_]+)"', src))
values |= {"true", "false", "[]", '""', "_BASE_"}
tokens = [": ", "\n  ", "- ", "[", "]", ", ", "#", "'", "1e-3", "-1", "0.5", "nan", "inf", "~"]


def quote(s):
    # libFuzzer's dictionary syntax: backslash, quote and hex (\\xNN) escapes only.
    out = ""
    for c in s:
        if c in '\\"':
            out += "\\" + c
        elif " " <= c <= "~":
            out += c
        else:
            out += "\\x%02X" % ord(c)
    return '"' + out + '"'


lines = ["# Written by fuzz/make_config_dict.py: config keys, enumerated values, YAML tokens."]
lines += [quote(k) for k in sorted(keys)]
lines += [quote(k + ":") for k in sorted(leaves)]
lines += [quote(v) for v in sorted(values)] + [quote(t) for t in tokens]
Path("fuzz/config.dict").write_text("\n".join(lines) + "\n")
print(f"{len(keys)} keys, {len(leaves)} leaf names, {len(values)} values")

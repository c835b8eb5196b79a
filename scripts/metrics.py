#!/usr/bin/env python3
"""Code-size metrics for the non-test Rust code of the workspace.

Prints: lines of non-test code, the largest source file, the longest
function. Non-test code is every `*.rs` under a crate's `src/` except the
`tests/` crate, `#[cfg(test)] mod` blocks and fuzz targets.
Usage: scripts/metrics.py [--export DIR] [ROOT]
--export DIR writes the non-test code there, for `duplicates --repo DIR`.
"""
import os, re, sys

args = sys.argv[1:]
export = None
if args[:1] == ["--export"]:
    export, args = args[1], args[2:]
root = args[0] if args else os.path.join(os.path.dirname(__file__), "..")
root = os.path.abspath(root)

def rust_files():
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = rel.split(os.sep)
        if parts[0] in ("target", ".git", "tests") or "fuzz" in parts or "tests" in parts[1:] \
                or "examples" in parts or "benches" in parts:
            dirnames[:] = []
            continue
        if "src" not in parts:
            continue
        for f in filenames:
            if f.endswith(".rs"):
                yield os.path.join(dirpath, f)

def item_end(lines, j):
    """Index of the line that closes the item starting at `j`, and whether
    it has a `{ ... }` body (brace-matched; `;` ends a bodiless item)."""
    depth, opened = 0, False
    while j < len(lines):
        depth += lines[j].count("{") - lines[j].count("}")
        if "{" in lines[j]:
            opened = True
        if opened and depth <= 0:
            break
        if not opened and lines[j].rstrip().endswith(";"):
            break
        j += 1
    return j, opened

def strip_tests(lines):
    """Drop `#[cfg(test)]` items (brace-matched)."""
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            i = item_end(lines, i + 1)[0] + 1
            continue
        out.append(lines[i])
        i += 1
    return out

fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")
total, largest, longest = 0, (0, ""), (0, "")
for path in sorted(rust_files()):
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = strip_tests(fh.read().splitlines())
    code = [l for l in lines if l.strip() and not l.strip().startswith("//")]
    n = len(code)
    total += n
    rel = os.path.relpath(path, root)
    if export:
        dest = os.path.join(export, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as out:
            out.write("\n".join(lines) + "\n")
    if n > largest[0]:
        largest = (n, rel)
    i = 0
    while i < len(lines):
        m = fn_re.match(lines[i])
        if m:
            j, opened = item_end(lines, i)
            length = j - i + 1
            if opened and length > longest[0]:
                longest = (length, f"{rel}:{i+1} {m.group(7)}")
        i += 1
print(f"non-test code lines (no blanks/comments): {total}")
print(f"largest file: {largest[1]} ({largest[0]} code lines)")
print(f"longest function: {longest[1]} ({longest[0]} lines)")

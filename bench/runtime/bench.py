#!/usr/bin/env python3
"""Runs inside a private mount namespace (see run.sh). Prints one table of
timings and ratios ours/systemd-sysext. No assertions: this is a benchmark."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

OURS = sys.argv[1]
QUICK = "--quick" in sys.argv
RUNS = 3 if QUICK else 7
COUNTS = [1, 8, 32]


def sh(*args, **kw):
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def timed(*args):
    t0 = time.perf_counter()
    sh(*args)
    return time.perf_counter() - t0


def setup_root():
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")
    root = tempfile.mkdtemp(prefix="bench-root")
    sh("mount", "-t", "tmpfs", "tmpfs", root)
    sh("mount", "--make-shared", root)
    for d in ["usr/lib", "usr/share", "var/lib/extensions", "etc/extensions"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "usr/lib/os-release"), "w") as f:
        f.write("ID=debian\nVERSION_ID=12\n")
    # A host /usr with some content.
    for i in range(200):
        with open(os.path.join(root, f"usr/share/host-{i}.txt"), "w") as f:
            f.write("host\n" * 10)
    return root


def make_images(root, work, n):
    ext = os.path.join(root, "var/lib/extensions")
    for f in os.listdir(ext):
        os.unlink(os.path.join(ext, f))
    for i in range(n):
        name = f"ext{i:03d}"
        src = os.path.join(work, name)
        shutil.rmtree(src, ignore_errors=True)
        rel = os.path.join(src, "usr/lib/extension-release.d")
        os.makedirs(rel)
        with open(os.path.join(rel, f"extension-release.{name}"), "w") as f:
            f.write("ID=debian\nVERSION_ID=12\n")
        d = os.path.join(src, f"usr/share/{name}")
        os.makedirs(d)
        for j in range(50):
            with open(os.path.join(d, f"f{j}"), "w") as f:
                f.write(f"{name} {j}\n" * 20)
        os.makedirs(os.path.join(src, f"opt/{name}"))
        with open(os.path.join(src, f"opt/{name}/bin"), "w") as f:
            f.write("x")
        sh("mksquashfs", src, os.path.join(ext, f"{name}.raw"), "-noappend", "-quiet", "-all-root", "-no-progress")


def ours(root, verb):
    return (OURS, f"--root={root}", "--no-reload", verb)


def theirs(root, verb):
    return ("systemd-sysext", f"--root={root}", verb)


def touch_all(root):
    ext = os.path.join(root, "var/lib/extensions")
    now = time.time()
    for f in os.listdir(ext):
        os.utime(os.path.join(ext, f), (now, now))


def bench_merge_refresh(root, work):
    rows = []
    for n in COUNTS:
        make_images(root, work, n)
        res = {}
        for tool, cmd in (("systemd-sysext", theirs), ("sysext", ours)):
            merges, refreshes, unchanged = [], [], []
            for _ in range(RUNS):
                merges.append(timed(*cmd(root, "merge")))
                # A refresh after a change (systemd 252 always redoes it all).
                touch_all(root)
                refreshes.append(timed(*cmd(root, "refresh")))
                unchanged.append(timed(*cmd(root, "refresh")))
                sh(*cmd(root, "unmerge"))
            res[tool] = (statistics.median(merges), statistics.median(refreshes), statistics.median(unchanged))
        rows.append((n, res))
    return rows


def measure_gap(root, cmd, refreshes):
    """Longest time a reader finds the extension's file missing."""
    target = os.path.join(root, "usr/share/ext000/f0")
    stop = threading.Event()
    gaps = []
    reads = [0]

    def reader():
        missing_since = None
        while not stop.is_set():
            try:
                with open(target, "rb") as f:
                    ok = len(f.read()) > 0
            except OSError:
                ok = False
            now = time.perf_counter()
            reads[0] += 1
            if ok and missing_since is not None:
                gaps.append(now - missing_since)
                missing_since = None
            elif not ok and missing_since is None:
                missing_since = now

    sh(*cmd(root, "merge"))
    t = threading.Thread(target=reader)
    t.start()
    # At least `refreshes` refreshes and at least 2 s of reading.
    t0 = time.perf_counter()
    done = 0
    while done < refreshes or time.perf_counter() - t0 < 2.0:
        touch_all(root)
        sh(*cmd(root, "refresh"))
        done += 1
    stop.set()
    t.join()
    sh(*cmd(root, "unmerge"))
    return (max(gaps) if gaps else 0.0, len(gaps), reads[0], done)


def bench_verify(work):
    size_gib = 0.25 if QUICK else 1.0
    data = os.path.join(work, "verify.raw")
    # Incompressible-ish data; content does not matter for hashing speed.
    block = os.urandom(1 << 20)
    with open(data, "wb") as f:
        for _ in range(int(size_gib * 1024)):
            f.write(block)
    # A squashfs magic so `sysext verify` takes it as a bare image.
    with open(data, "r+b") as f:
        f.write(b"hsqs")
    hashf = os.path.join(work, "verify.verity")
    out = sh("veritysetup", "format", data, hashf).stdout.decode()
    root_hash = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Root hash:")][0]
    with open(os.path.join(work, "verify.roothash"), "w") as f:
        f.write(root_hash + "\n")
    ours_t, ref_t = [], []
    for _ in range(3):
        ours_t.append(timed(OURS, "--policy=verity", "verify", data))
        ref_t.append(timed("veritysetup", "verify", data, hashf, root_hash))
    return size_gib, statistics.median(ours_t), statistics.median(ref_t)


def main():
    root = setup_root()
    work = tempfile.mkdtemp(prefix="bench-work")
    try:
        kernel = os.uname().release
        print(f"# sysext runtime benchmark — kernel {kernel}, {os.cpu_count()} CPUs, median of {RUNS} runs")
        print()
        print("| images | merge: systemd-sysext | merge: sysext | ratio | refresh (changed): systemd-sysext | refresh: sysext | ratio | refresh (unchanged): systemd-sysext | sysext | ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, res in bench_merge_refresh(root, work):
            (tm, tr, tu), (om, orf, ou) = res["systemd-sysext"], res["sysext"]
            print(f"| {n} | {tm*1000:.1f} ms | {om*1000:.1f} ms | {om/tm:.2f} | {tr*1000:.1f} ms | {orf*1000:.1f} ms | {orf/tr:.2f} | {tu*1000:.1f} ms | {ou*1000:.1f} ms | {ou/tu:.2f} |")
        print()
        make_images(root, work, 8)
        n_ref = 10 if QUICK else 100
        print(f"Gap during refreshes (8 images, at least {n_ref} refreshes and 2 s; a reader loops on one extension file):")
        for tool, cmd in (("systemd-sysext", theirs), ("sysext", ours)):
            gap, count, reads, done = measure_gap(root, cmd, n_ref)
            print(f"- {tool}: {done} refreshes, longest gap {gap*1000:.2f} ms, {count} gaps seen in {reads} reads")
        print()
        size, o, r = bench_verify(work)
        print(f"User-space verification of {size:g} GiB (page cache warm):")
        print(f"- sysext verify: {o:.2f} s = {o/size:.2f} s/GiB ({size*1024/o:.0f} MiB/s)")
        print(f"- veritysetup verify: {r:.2f} s = {r/size:.2f} s/GiB; ratio sysext/veritysetup = {o/r:.2f}")
    finally:
        subprocess.run(["umount", "-R", "-l", root])
        shutil.rmtree(work, ignore_errors=True)


main()

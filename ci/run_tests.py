#!/usr/bin/env python3
"""The cross-backend test matrix: the whole suite once per backend.

Each backend gets its own pytest process with ``XRNN_BACKEND`` and
``XRNN_TEST_BACKENDS`` set to it, so backend-agnostic tests (the CLI, the README
examples) run on that backend too. Prints a per-backend table and a closing line
``total: N passed, N failed, N skipped``; exits non-zero if any run failed or passed
no test (every test skipped, or none collected: such a leg proves nothing).

    python ci/run_tests.py                       # numpy, array_api_strict, torch (+ cupy with a GPU)
    python ci/run_tests.py --backends cupy,numpy  # a subset
    python ci/run_tests.py -- -k parity           # extra pytest arguments after --
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["numpy", "array_api_strict", "torch", "cupy"]


def cupy_usable() -> bool:
    code = "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_backend(name: str, pytest_args: list[str], report: Path) -> dict[str, int]:
    env = dict(os.environ, XRNN_BACKEND=name, XRNN_TEST_BACKENDS=name)
    command = [sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", *pytest_args]
    print(f"\n=== backend {name}: {' '.join(command[1:])}", flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    counts = {"passed": 0, "failed": 0, "skipped": 0, "exit": code}
    if report.exists():
        for suite in ET.parse(report).getroot().iter("testsuite"):
            tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            counts["passed"] += tests - skipped - failed
            counts["failed"] += failed
            counts["skipped"] += skipped
    elif code != 0:
        counts["failed"] += 1  # pytest could not even start
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", help="comma-separated list (default: every usable one)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args()
    if args.backends is not None:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not backends:
            parser.error(f"--backends {args.backends!r} names no backend; expected a "
                         f"comma-separated list from {', '.join(DEFAULT)}")
        unknown = [b for b in backends if b not in DEFAULT]
        if unknown:
            parser.error(f"--backends names unknown backends {unknown}; expected names "
                         f"from {', '.join(DEFAULT)}")
    else:
        backends = [b for b in DEFAULT if b != "cupy" or cupy_usable()]
        if "cupy" not in backends:
            print("cupy: not in the matrix here (no CuPy or no CUDA device)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in backends:
            results[name] = run_backend(name, args.pytest_args, Path(tmp) / f"{name}.xml")
    print(f"\n{'backend':<18}{'passed':>8}{'failed':>8}{'skipped':>9}{'exit':>6}")
    for name, c in results.items():
        print(f"{name:<18}{c['passed']:>8}{c['failed']:>8}{c['skipped']:>9}{c['exit']:>6}")
    total = {k: sum(c[k] for c in results.values()) for k in ("passed", "failed", "skipped")}
    print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    for name, c in results.items():
        if c["passed"] == 0 and c["failed"] == 0:
            print(f"backend {name}: no test passed ({c['skipped']} skipped, pytest exit "
                  f"{c['exit']}): a leg that runs nothing proves nothing")
    bad = [n for n, c in results.items() if c["exit"] != 0 or c["passed"] == 0]
    if bad:
        print(f"failing backends: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

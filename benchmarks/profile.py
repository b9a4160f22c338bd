"""Where xrnn's time goes in a grid row, by thread and by line of xrnn, sampled by py-spy.

The process warms the row up (compiling, allocating), then starts ``py-spy record`` on
itself (``--threads --idle``, Python frames only: a compiled loop or a BLAS call is
charged to the line of xrnn that called it, which is the phase to name) and calls
xrnn's contender of :func:`benchmarks.common.contenders` back to back while it samples.
Each sample is charged to its innermost frame in the ``xrnn`` package (or, with none,
to its innermost frame) and turned into milliseconds per call, on the time base of the
main thread's samples inside the calls (other threads: their samples in xrnn only; the
rest of their time they wait). The sampler takes a share of the cores itself: each row
also gives a call's time unsampled. Needs py-spy (``pip install py-spy``); never run in
CI as a timed test.

    python -m benchmarks.profile --cell lstm --mode forward --shapes 100,32,64,128,2,2
"""

from __future__ import annotations

import argparse
import collections
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/profile.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xrnn  # noqa: E402
from benchmarks.common import CELLS, CPU_GRID, MODES, contenders, write_results  # noqa: E402
from benchmarks.run import pick_shape  # noqa: E402

XRNN = Path(xrnn.__file__).resolve().parent
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=list(CELLS), required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--shapes", nargs="+", metavar="ROW", required=True,
                        help="grid rows by index, or shapes as T,B,I,H,L,D")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="sampling time per row (calls go on until it has passed)")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=8, help="lines shown per thread")
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    try:
        args.shapes = [pick_shape(CPU_GRID, text) for text in args.shapes]
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
    if shutil.which("py-spy") is None:
        parser.error("py-spy is not installed: pip install py-spy")
    return args


def _in_xrnn(frame: str) -> bool:
    """Whether a frame's file is in the xrnn package (py-spy gives paths relative to the
    working directory, or absolute)."""
    match = _FRAME.match(frame)
    return bool(match) and Path(match["file"]).resolve().is_relative_to(XRNN)


def charge(frames: list[str]) -> str:
    """The frame a sample is charged to: its innermost in the xrnn package, else its
    innermost, as ``function (path:line)``."""
    for frame in reversed(frames):
        if _in_xrnn(frame):
            return frame
    return frames[-1] if frames else "?"


def source(frame: str) -> str:
    """The text of a frame's line, when it is one of xrnn's."""
    match = _FRAME.match(frame)
    if not match:
        return ""
    return linecache.getline(str(Path(match["file"]).resolve()), int(match["line"])).strip()


def _sampled_call(run) -> None:
    """One call while sampled (the mark of the samples that count, :func:`tally`)."""
    run()


def tally(raw: str) -> tuple[dict[str, collections.Counter], int]:
    """Samples by thread, then by :func:`charge`, from py-spy's ``raw`` output (one line
    per stack: ``thread (id): name;frame;frame... count``), with the number of the main
    thread's samples inside :func:`_sampled_call`: the time base, the other threads'
    samples taken outside it being idle. Only those main-thread samples, and the other
    threads' samples in xrnn, are kept."""
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    in_loop = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        thread, *frames = stack.split(";")
        name = re.sub(r"_\d+$", "", thread.split(": ", 1)[-1])
        frame = charge(frames)
        if name == "MainThread":
            if not any(f.startswith("_sampled_call ") for f in frames):
                continue
            in_loop += int(count)
        elif not _in_xrnn(frame):
            continue
        threads[name][frame] += int(count)
    return threads, max(in_loop, 1)


def profile_row(cell: str, mode: str, shape, seconds: float, rate: int) -> dict[str, Any]:
    """Sample xrnn's ``cell``/``mode`` at ``shape`` for ``seconds``; ms per call by
    thread and line, and the time of a call without the sampler (``quiet_ms``: the
    sampler takes a share of the two cores)."""
    run, _ = contenders(shape, cell, mode)["xrnn"]
    for _ in range(3):
        run()
    quiet = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        quiet.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "samples.txt"
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--threads",
                                "--idle", "--rate", str(rate), "--format", "raw", "--output",
                                str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # py-spy attaches
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            _sampled_call(run)
            calls += 1
        wall = time.perf_counter() - start
        spy.send_signal(signal.SIGINT)  # (py-spy writes its samples and exits)
        spy.wait()
        if spy.returncode not in (0, -signal.SIGINT) or not out.exists():
            raise RuntimeError(f"py-spy failed: {spy.stderr.read()}")
        threads, in_loop = tally(out.read_text())
    ms_per_call = 1e3 * wall / calls
    rows = {}
    for name, counts in threads.items():
        rows[name] = [{"frame": frame, "share": n / in_loop, "ms": ms_per_call * n / in_loop,
                       "source": source(frame)} for frame, n in counts.most_common()]
    return {"cell": cell, "mode": mode, "shape": list(shape), "calls": calls,
            "ms_per_call": ms_per_call, "quiet_ms": 1e3 * sorted(quiet)[2], "threads": rows}


def markdown(results: list[dict[str, Any]], top: int) -> str:
    lines = []
    for r in results:
        lines += [f"## {r['cell']} {r['mode']} {tuple(r['shape'])}: "
                  f"{r['ms_per_call']:.3g} ms a call sampled ({r['calls']} calls), "
                  f"{r['quiet_ms']:.3g} ms unsampled\n",
                  "| thread | share | ms a call | charged to | line |", "|---|---|---|---|---|"]
        for name, frames in r["threads"].items():
            for f in frames[:top]:
                text = f["source"].replace("|", "\\|")
                lines.append(f"| {name} | {100 * f['share']:.1f}% | {f['ms']:.3g} | "
                             f"`{f['frame']}` | `{text}` |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    results = [profile_row(args.cell, args.mode, shape, args.seconds, args.rate)
               for shape in args.shapes]
    text = markdown(results, args.top)
    print(text)
    if args.output:
        write_results(args.output, text, results)
    return results


if __name__ == "__main__":
    main()

"""ci/run_tests.py fails a backend leg that passed no test, and an empty backend list.

Each case runs the runner in a subprocess on a throwaway test file outside the
repository (so the inner pytest loads neither xrnn nor its conftest and takes about a
second): one passing test (exit 0, the control), only skipped tests, no test at all.
The runner picks its own backends, so these tests are the same in every leg.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "ci" / "run_tests.py"
BODIES = {
    "passes": "def test_passes():\n    pass\n",
    "skips": ("import pytest\n\n\n@pytest.mark.skip(reason='absent')\ndef test_one():\n    pass\n"
              "\n\ndef test_two():\n    pytest.skip('absent')\n"),
    "empty": "def helper():\n    pass\n",
}


def run_runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("body, code, last_lines", [
    ("passes", 0, ["total: 1 passed, 0 failed, 0 skipped"]),
    ("skips", 1, ["total: 0 passed, 0 failed, 2 skipped",
                  "backend numpy: no test passed (2 skipped, pytest exit 0): a leg that runs "
                  "nothing proves nothing", "failing backends: numpy"]),
    ("empty", 1, ["total: 0 passed, 0 failed, 0 skipped",
                  "backend numpy: no test passed (0 skipped, pytest exit 5): a leg that runs "
                  "nothing proves nothing", "failing backends: numpy"]),
])
def test_a_leg_that_passes_no_test_fails(tmp_path, body, code, last_lines):
    test_file = tmp_path / f"test_{body}.py"
    test_file.write_text(BODIES[body])
    result = run_runner("--backends", "numpy", "--", "-p", "no:cacheprovider", str(test_file))
    lines = result.stdout.strip().splitlines()
    assert lines[-len(last_lines):] == last_lines, result.stdout + result.stderr
    assert result.returncode == code, result.stdout + result.stderr


@pytest.mark.parametrize("backends, message", [
    (",", "--backends ',' names no backend; expected a comma-separated list from numpy"),
    ("", "--backends '' names no backend"),
    ("numpy,tpu", "--backends names unknown backends ['tpu']; expected names from numpy"),
])
def test_no_or_unknown_backends_are_usage_errors(tmp_path, backends, message):
    test_file = tmp_path / "test_passes.py"  # what a runner that went on would run
    test_file.write_text(BODIES["passes"])
    result = run_runner("--backends", backends, "--", "-p", "no:cacheprovider", str(test_file))
    assert result.returncode == 2
    assert message in result.stderr
    assert "=== backend" not in result.stdout  # nothing ran

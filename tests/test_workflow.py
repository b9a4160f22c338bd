"""The GitHub Actions workflow is linted here, so a broken one fails before the first push."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"


def _actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("actionlint is not installed; it comes with the [test] extra")
    return found


def test_workflow_passes_actionlint():
    result = subprocess.run([_actionlint(), str(WORKFLOW)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "tests.yml"
    broken.parent.mkdir(parents=True)
    shutil.copy(ROOT / ".github" / "actionlint.yaml", broken.parent.parent / "actionlint.yaml")
    broken.write_text(WORKFLOW.read_text().replace("${{ matrix.backend }}\"",
                                                   "${{ matrix.backends }}\""))
    result = subprocess.run([_actionlint(), str(broken)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "backends" in result.stdout


def test_workflow_runs_the_same_matrix_script_as_ci():
    text = WORKFLOW.read_text()
    assert "ci/run_tests.py" in text
    assert "ci/run_tests.py" in (ROOT / ".ci" / "run").read_text()
    for backend in ("numpy", "array_api_strict", "torch", "cupy"):
        assert backend in text
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f'"{version}"' in text

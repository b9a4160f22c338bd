"""Every Python example in the README runs as written, on the selected backend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


#: Packages of the optional extras (fast, dask, onnx, keras, plotting): an example that
#: needs one that is not installed is skipped, naming it; any other ImportError fails.
OPTIONAL = {"numba", "dask", "distributed", "onnx", "onnxruntime", "keras", "matplotlib"}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    try:
        exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), {})
    except ImportError as error:
        missing = error.name or getattr(error.__cause__, "name", None) or ""
        if missing.split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"README example {index} needs the optional package {missing}: {error}")
    printed = capsys.readouterr().out
    assert "False" not in printed.split()  # examples print True for the facts they show


def test_readme_quickstart_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python ci/run_tests.py" in text and "python ci/run_tests.py" in ci
    assert "XRNN_BACKEND" in text

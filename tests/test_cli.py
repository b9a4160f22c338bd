"""The command line: ``xrnn info``, ``xrnn shapes ...``, ``--help`` and ``--version``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xrnn.__main__

REPO_ROOT = Path(__file__).resolve().parent.parent
ALL_BACKENDS = ("numpy", "cupy", "torch", "array_api_strict")
SHAPE = re.compile(r"\((\d+(?:, \d+)*),?\)")


def run_cli(*args: str, backend: str | None = "numpy") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if backend is not None:
        env["XRNN_BACKEND"] = backend
    return subprocess.run([sys.executable, "-m", "xrnn", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def parameter_shapes(stdout: str) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` from the ``parameters`` section of ``shapes``' output."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"\s+((?:weight|bias)_\w+)\s+(\(.*\))", line)
        if match:
            found[match.group(1)] = tuple(int(n) for n in SHAPE.fullmatch(match.group(2))
                                          .group(1).split(", "))
    return found


def array_shape(stdout: str, label: str) -> tuple[int, ...]:
    """The concrete shape on the ``arrays`` line that starts with ``label``."""
    lines = [line for line in stdout.splitlines() if line.split()[:1] == [label]]
    assert len(lines) == 1, f"expected one line for {label!r} in:\n{stdout}"
    shapes = SHAPE.findall(lines[0])
    assert shapes, lines[0]
    return tuple(int(n) for n in shapes[-1].split(", "))


# -- info --------------------------------------------------------------------------------

def test_info_lists_backends_and_selection():
    result = run_cli("info", backend="numpy")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^selected backend: numpy \S+ on cpu", out, re.MULTILINE), out
    backend_lines = out.split("backends:", 1)[1].splitlines()
    listed = {line.split()[0] for line in backend_lines if line.strip()}
    assert listed == set(ALL_BACKENDS)
    for line in backend_lines:
        if line.split()[:1] in (["numpy"], ["torch"], ["array_api_strict"]):
            assert line.split()[1] == "available", line


def test_info_with_unknown_backend_fails_naming_valid_ones():
    result = run_cli("info", backend="bogus")
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert error, result.stderr
    assert "bogus" in error[0]
    for name in ALL_BACKENDS:
        assert name in error[0], error[0]
    assert "Traceback" not in result.stderr


# -- shapes ------------------------------------------------------------------------------

SHAPES_ARGS = ("shapes", "--input-size", "8", "--hidden-size", "16", "--num-layers", "2",
               "--bidirectional", "--seq-len", "50", "--batch", "1")


def test_shapes_parameters_match_torch():
    torch = pytest.importorskip("torch")
    result = run_cli(*SHAPES_ARGS)
    assert result.returncode == 0, result.stderr
    reference = torch.nn.RNN(8, 16, 2, bidirectional=True)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    found = parameter_shapes(result.stdout)
    assert found == expected
    assert list(found) == list(expected)  # same (flat) order
    total = sum(t.numel() for t in reference.state_dict().values())
    assert f"total: {total:,} numbers" in result.stdout


def test_shapes_arrays_time_major():
    result = run_cli(*SHAPES_ARGS)
    assert result.returncode == 0, result.stderr
    assert array_shape(result.stdout, "input") == (50, 1, 8)
    assert array_shape(result.stdout, "h0") == (4, 1, 16)
    assert array_shape(result.stdout, "output") == (50, 1, 32)
    assert array_shape(result.stdout, "h_n") == (4, 1, 16)


def test_shapes_arrays_batch_first():
    result = run_cli(*SHAPES_ARGS, "--batch-first")
    assert result.returncode == 0, result.stderr
    assert array_shape(result.stdout, "input") == (1, 50, 8)
    assert array_shape(result.stdout, "output") == (1, 50, 32)
    assert array_shape(result.stdout, "h0") == (4, 1, 16)  # never batch-first
    assert array_shape(result.stdout, "h_n") == (4, 1, 16)


@pytest.mark.parametrize("option, value", [("--hidden-size", "0"), ("--input-size", "-3"),
                                           ("--num-layers", "0"), ("--seq-len", "0"),
                                           ("--batch", "-1")])
def test_shapes_non_positive_size_exits_2(option, value):
    sizes = {"--input-size": "8", "--hidden-size": "16", "--num-layers": "2",
             "--seq-len": "50", "--batch": "1", option: value}
    argv = ["shapes", "--bidirectional"] + [item for pair in sizes.items() for item in pair]
    result = run_cli(*argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{option} must be a positive integer, got {value}" in result.stderr
    assert "Traceback" not in result.stderr


# -- in process --------------------------------------------------------------------------

def test_main_in_process(capsys):
    status = xrnn.__main__.main(["shapes", "--input-size", "3", "--hidden-size", "4",
                                 "--no-bias", "--batch-first", "--seq-len", "6", "--batch", "2"])
    assert status == 0
    out = capsys.readouterr().out
    assert parameter_shapes(out) == {"weight_ih_l0": (4, 3), "weight_hh_l0": (4, 4)}
    assert "total: 28 numbers" in out
    assert array_shape(out, "input") == (2, 6, 3)
    assert array_shape(out, "h0") == (1, 2, 4)
    assert array_shape(out, "output") == (2, 6, 4)


def test_main_in_process_rejects_non_positive(capsys):
    with pytest.raises(SystemExit) as info:
        xrnn.__main__.main(["shapes", "--input-size", "3", "--hidden-size", "0"])
    assert info.value.code == 2
    assert "--hidden-size must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("mode, extra, torch_kwargs", [
    ("lstm", ["--proj-size", "4"], dict(proj_size=4)),
    ("lstm", [], {}),
    ("gru", [], {}),
])
def test_shapes_for_lstm_and_gru_match_torch(mode, extra, torch_kwargs, capsys):
    torch = pytest.importorskip("torch")
    args = ["shapes", "--mode", mode, "--input-size", "8", "--hidden-size", "16",
            "--num-layers", "2", "--bidirectional", "--seq-len", "50", "--batch", "3", *extra]
    assert xrnn.__main__.main(args) == 0
    printed = capsys.readouterr().out
    reference = getattr(torch.nn, mode.upper())(8, 16, 2, bidirectional=True, **torch_kwargs)
    for name, tensor in reference.state_dict().items():
        assert re.search(rf"^\s+{name}\s+{re.escape(str(tuple(tensor.shape)))}\s*$", printed,
                         flags=re.M), name
    with torch.no_grad():
        output, finals = reference(torch.zeros(50, 3, 8))
    h_n = finals[0] if mode == "lstm" else finals
    assert re.search(rf"output .*{re.escape(str(tuple(output.shape)))}", printed)
    assert re.search(rf"h_n .*{re.escape(str(tuple(h_n.shape)))}", printed)
    if mode == "lstm":
        assert re.search(rf"c_n .*{re.escape(str(tuple(finals[1].shape)))}", printed)
    else:
        assert "c_n" not in printed


def test_proj_size_needs_lstm():
    result = run_cli("shapes", "--mode", "gru", "--input-size", "2", "--hidden-size", "4",
                     "--proj-size", "2")
    assert result.returncode == 2
    assert "--proj-size" in result.stderr


# -- program name, help, version ---------------------------------------------------------

def test_help_names_the_console_script_and_has_no_markup(capsys):
    for argv in (["--help"], ["info", "--help"], ["shapes", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as info:
            xrnn.__main__.main(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: xrnn {argv[0] if len(argv) == 2 else ''}".rstrip()), out
        assert "``" not in out and "python -m" not in out, out


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        xrnn.__main__.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"xrnn {xrnn.__version__}\n"


def test_module_names_itself_python_m_xrnn():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m xrnn "), result.stdout
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"xrnn {xrnn.__version__}\n"), result.stderr


def test_console_script_version():
    script = shutil.which("xrnn", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip(f"no xrnn console script beside {sys.executable} (package not installed)")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, f"xrnn {xrnn.__version__}\n"), result.stderr


def test_version_is_single_sourced():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library "
                                  "from Python 3.11")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "xrnn.__version__"}
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["project"]["license-files"] == ["LICENSE"]

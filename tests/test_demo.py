"""The demo task and its learning, at a small size, on every backend."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import numpy as np
import pytest

import xrnn
import xrnn.__main__
import xrnn.demo
from xrnn.demo import repeat_task, train

SMALL = dict(steps=300, seq_len=6, vocab=4, hidden=16, lr=0.01, progress=False)


def test_repeat_task_labels_by_brute_force():
    x, labels = repeat_task(50, 7, 3, np.random.default_rng(0))
    symbols = x.argmax(axis=-1)
    assert x.shape == (7, 50, 3) and labels.shape == (7, 50)
    for t, b in itertools.product(range(7), range(50)):
        assert labels[t, b] == int(symbols[t, b] in symbols[t + 1:, b])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bidirectional_model_learns_and_unidirectional_falls_short(xp, cell):
    bidirectional = train(cell=cell, bidirectional=True, **SMALL)
    unidirectional = train(cell=cell, bidirectional=False, **SMALL)
    assert bidirectional.accuracy >= 0.95
    assert unidirectional.accuracy < 0.85  # cannot see whether a symbol comes again
    assert np.mean(bidirectional.losses[-30:]) < 0.3 * np.mean(bidirectional.losses[:30])


def test_demo_command_runs():
    result = subprocess.run([sys.executable, "-m", "xrnn", "demo", "--steps", "10",
                             "--cell", "gru"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"backend {xrnn.get_backend()}" in result.stdout
    assert "held-out accuracy" in result.stdout and "GRU" in result.stdout
    assert "training" in result.stderr  # tqdm's bar, or plain lines without tqdm


def demo(*args: str) -> int:
    """``xrnn demo ARGS`` in this process, on tiny settings."""
    return xrnn.__main__.main(["demo", "--steps", "5", *args])


def test_demo_without_tqdm_prints_plain_progress(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` fails: not installed
    assert xrnn.__main__.main(["demo", "--steps", "10"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("training: step ")]
    assert [line.split()[2] for line in lines] == [f"{n}/10," for n in range(1, 11)], err
    assert re.search(r"loss \d+\.\d{4}, \d+\.\d s$", lines[-1]), lines[-1]
    assert "Traceback" not in err and "held-out accuracy" in out


def test_demo_compare_unidirectional(capsys):
    assert demo("--compare-unidirectional", "--cell", "lstm") == 0
    out = capsys.readouterr().out
    assert "bidirectional 2-layer LSTM" in out and "unidirectional 2-layer LSTM" in out
    assert out.count("held-out accuracy") == 2


def no_training(**kwargs):
    raise AssertionError("training started before the --plot check")


def test_demo_plot_without_matplotlib_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    monkeypatch.setattr(xrnn.demo, "train", no_training)
    with pytest.raises(SystemExit) as info:
        demo("--plot", str(tmp_path / "loss.png"))
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == ["xrnn demo: error: --plot needs matplotlib, which is not "
                                "installed: pip install matplotlib"]
    assert out == ""


def test_demo_plot_into_a_missing_folder_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(xrnn.demo, "_pyplot", lambda: None)  # as if matplotlib were here
    monkeypatch.setattr(xrnn.demo, "train", no_training)
    with pytest.raises(SystemExit) as info:
        demo("--plot", str(tmp_path / "missing" / "loss.png"))
    assert info.value.code == 1
    assert "missing does not exist" in capsys.readouterr().err


def test_demo_plot_writes_a_png(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib, which xrnn does not "
                        "depend on")
    path = tmp_path / "loss.png"
    assert demo("--plot", str(path)) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"loss curve written to {path}" in capsys.readouterr().out

"""The demo task and its learning, at a small size, on every backend."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

import xrnn
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


def test_demo_command_runs(tmp_path):
    pytest.importorskip("tqdm", reason="the demo's progress bar comes with xrnn[demo]")
    result = subprocess.run([sys.executable, "-m", "xrnn", "demo", "--steps", "20",
                             "--cell", "gru"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"backend {xrnn.get_backend()}" in result.stdout
    assert "held-out accuracy" in result.stdout and "GRU" in result.stdout
    assert "training" in result.stderr  # the tqdm bar

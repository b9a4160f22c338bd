"""The scripts in examples/ run, learn, and save / load / resume, on small settings.

Each runs in-process through its ``main(argv)`` on the selected backend (the matrix
runner sets it), so a broken example fails CI on every backend. Training long enough to
assert that it learns takes 20-50 s per example on the generic path, so the learning
thresholds are asserted on NumPy (the fast path) and the other backends run a few steps
and check saving and resuming.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

import xrnn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


LEARN = xrnn.get_backend() == "numpy"


def _example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=name)


def test_sequence_classification_learns_and_resumes(tmp_path, capsys):
    example = _example("sequence_classification")
    path = str(tmp_path / "classifier.npz")
    first = example["main"](["--steps", "100" if LEARN else "3", "--save", path])
    resumed = example["main"](["--steps", "20" if LEARN else "1", "--resume", path])
    if LEARN:
        assert first > 0.9 and resumed > 0.9  # chance is 0.5; 300 steps reach over 0.99
    printed = capsys.readouterr().out
    before_resume = [line for line in printed.splitlines() if "before training" in line][1]
    assert f"{first:.1%}" in before_resume  # resumed from exactly the saved model


def test_sequence_classification_data():
    """Labels count tokens over each whole sequence (never a tie); lengths vary."""
    example = _example("sequence_classification")
    tokens, lengths, labels = example["make_batch"](np.random.default_rng(0), 200)
    ones, twos = (tokens == 1).sum(axis=0), (tokens == 2).sum(axis=0)
    assert (ones != twos).all()
    np.testing.assert_array_equal(labels, (ones > twos).astype(labels.dtype))
    assert 0.35 < labels.mean() < 0.65 and len(set(lengths)) > 5
    assert (tokens[np.arange(tokens.shape[0])[:, None] >= lengths] == 0).all()


def test_char_language_model_learns_samples_and_resumes(tmp_path, capsys):
    example = _example("char_language_model")
    path = str(tmp_path / "lm.npz")
    first, last = example["main"](["--steps", "120" if LEARN else "2", "--save", path])
    if LEARN:
        assert last < 0.6 * first  # from about ln(V) = 3.4 nats per character
    model = xrnn.load(path, custom_modules={"CharLM": example["CharLM"]})
    assert [n for n, _ in model.named_parameters()][:2] == ["embed.weight",
                                                             "lstm.weight_ih_l0"]
    _, resumed_last = example["main"](["--steps", "20" if LEARN else "1", "--resume", path])
    if LEARN:
        assert resumed_last < 0.8 * first
    assert "sample: the " in capsys.readouterr().out


def test_loading_a_custom_model_without_its_class_names_the_fix(tmp_path):
    example = _example("char_language_model")
    path = tmp_path / "lm.npz"
    xrnn.save(example["CharLM"](10, 4, 8), path)
    with pytest.raises(ValueError, match=r"CharLM.*custom_modules"):
        xrnn.load(path)

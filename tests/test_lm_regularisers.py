"""``python -m benchmarks.lm_regularisers`` runs on the selected backend with tiny
settings (one short epoch, no plot) and writes a table whose numbers are the losses it
measured; the text split and the streams are what the docstring says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.lm_regularisers import SETTINGS, chunks, main, read_text, streams


def test_lm_regularisers_smoke(tmp_path):
    result = main(["--epochs", "1", "--max-chars", "2000", "--hidden", "8", "--embedding", "4",
                   "--batch", "20", "--chunk", "30", "--no-plot", "--output", str(tmp_path / "lm")])
    assert list(result["runs"]) == list(SETTINGS)
    assert (result["chars"], result["train_chars"], result["held_chars"]) == (2000, 1800, 200)
    for run in result["runs"].values():
        assert len(run["held_out"]) == 2 and len(run["train"]) == 1
        assert all(np.isfinite(run["held_out"])) and run["held_out"][0] > 0
    # the same seed: every setting starts from the same untrained model, which weight
    # dropout leaves alone in eval mode (zoneout's expectation changes its output)
    runs = result["runs"]
    assert runs["plain"]["held_out"][0] == pytest.approx(runs["weight_dropout=0.3"]["held_out"][0])
    assert runs["plain"]["held_out"][0] != pytest.approx(runs["zoneout=0.1"]["held_out"][0])
    assert json.loads((tmp_path / "lm.json").read_text()) == result
    text = (tmp_path / "lm.md").read_text()
    first = "| 1 | " + " | ".join(f"{r['held_out'][1]:.3f}" for r in result["runs"].values())
    assert "| epoch | plain | zoneout=0.1 | weight_dropout=0.3 |" in text and first in text
    assert not (tmp_path / "lm.png").exists()


def test_text_streams_and_chunks():
    text, path = read_text()
    assert path.endswith("argparse.py") and len(text) > 50_000 and "class ArgumentParser" in text
    data = streams(np.arange(23), 4)  # 5 steps x 4 streams, the last 3 codes dropped
    np.testing.assert_array_equal(data[:, 1], np.arange(5, 10))
    pairs = list(chunks(data, 3))
    assert [len(x) for x, _ in pairs] == [3, 1]  # targets need one more step
    for x, y in pairs:
        np.testing.assert_array_equal(y, x + 1)
    with pytest.raises(ValueError, match="cannot make 4 streams"):
        streams(np.arange(5), 4)

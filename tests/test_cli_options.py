"""``xrnn shapes`` with issue 14's options: ``--layer-norm`` lists the ``ln_*``
parameters, and the regularisers (which add none) are accepted and shown.

The reference is the parameters of the xrnn module built with the same options (torch
has no LayerNorm LSTM or GRU), in order, and the torch module's for the plain ones.
"""

from __future__ import annotations

import math
import re

import pytest

import xrnn
import xrnn.__main__

ARGS = ["--input-size", "3", "--hidden-size", "4", "--num-layers", "2", "--bidirectional"]


def _parameters(out: str) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` from the ``parameters`` section of ``shapes``' output, in order."""
    found = {}
    for line in out.split("\narrays:")[0].splitlines():
        match = re.fullmatch(r"\s+((?:ln_)?(?:weight|bias)_\w+)\s+\(([\d, ]*)\)", line)
        if match:
            found[match.group(1)] = tuple(int(n) for n in match.group(2).split(",") if n.strip())
    return found


@pytest.mark.parametrize("mode, extra", [("lstm", []), ("lstm", ["--proj-size", "2"]),
                                         ("gru", [])])
def test_shapes_layer_norm_lists_the_module_parameters(capsys, mode, extra):
    assert xrnn.__main__.main(["shapes", "--mode", mode, *ARGS, *extra, "--layer-norm"]) == 0
    out = capsys.readouterr().out
    module = getattr(xrnn, mode.upper())(3, 4, 2, bidirectional=True, layer_norm=True,
                                         **({"proj_size": 2} if extra else {}))
    expected = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert list(_parameters(out).items()) == list(expected.items())
    assert "layer_norm=True" in out.splitlines()[0]
    total = sum(int(math.prod(shape)) for shape in expected.values())
    assert f"total: {total:,} numbers" in out


def test_shapes_regularisers_and_reset(capsys):
    """The regularisers add no parameter: the list is the plain one; the header shows
    them, and the arrays section shows the reset array's shape."""
    argv = ["shapes", "--mode", "gru", *ARGS, "--batch", "5", "--seq-len", "7"]
    assert xrnn.__main__.main(argv) == 0
    plain = capsys.readouterr().out
    assert xrnn.__main__.main([*argv, "--zoneout", "0.1", "--recurrent-dropout", "0.2",
                               "--weight-dropout", "0.3", "--batch-first"]) == 0
    out = capsys.readouterr().out
    assert _parameters(out) == _parameters(plain) != {}
    assert out.splitlines()[0].endswith(
        "recurrent_dropout=0.2, zoneout=0.1, weight_dropout=0.3)")
    assert re.search(r"^  reset +\(T, B\) +\(7, 5\)", plain, re.MULTILINE), plain
    assert re.search(r"^  reset +\(B, T\) +\(5, 7\)", out, re.MULTILINE), out


@pytest.mark.parametrize("argv, message", [
    (["--mode", "rnn", "--layer-norm"], "--layer-norm needs --mode lstm or gru, got --mode rnn"),
    (["--zoneout", "1"], r"--zoneout must be a probability in \[0, 1\), got 1.0"),
    (["--weight-dropout", "-0.5"], r"--weight-dropout must be a probability in \[0, 1\)"),
])
def test_shapes_option_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        xrnn.__main__.main(["shapes", *ARGS, *argv])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)

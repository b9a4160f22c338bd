"""A sequence-labelling task that needs both past and future context, learnt from scratch.

Each sequence holds ``seq_len`` symbols from a vocabulary of ``vocab`` (one-hot
inputs); position t is labelled 1 when its symbol appears again later in the
sequence. A unidirectional network cannot see the future, so it can only guess
from the position; a bidirectional one learns the task.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .losses import CrossEntropyLoss
from .nn import GRU, LSTM, RNN, Linear, Sequential, Tanh
from .optim import Adam, clip_grad_norm_


def repeat_task(n: int, seq_len: int, vocab: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences: one-hot inputs (T, n, vocab) float32 and labels (T, n) int64."""
    symbols = rng.integers(0, vocab, size=(seq_len, n))
    later = symbols[:, None, :] == symbols[None, :, :]  # [t, u, b]: same symbol at t and u
    labels = np.triu(np.ones((seq_len, seq_len), dtype=bool), k=1)[:, :, None] & later
    x = np.eye(vocab, dtype=np.float32)[symbols]
    return x, labels.any(axis=1).astype(np.int64)


@dataclass
class DemoResult:
    accuracy: float  # held-out per-position accuracy
    seconds: float
    losses: list[float] = field(default_factory=list)


CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def build_model(cell: str, vocab: int, hidden: int, bidirectional: bool, seed: int) -> Sequential:
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
    d = 2 if bidirectional else 1
    recurrent = CELLS[cell](vocab, hidden, num_layers=2, bidirectional=bidirectional, seed=seed)
    return Sequential(recurrent, Tanh(), Linear(d * hidden, 2, seed=seed + 1))


def accuracy(model: Sequential, x: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    logits = backend.to_numpy(model(backend.asarray(x)))
    model.train()
    return float((logits.argmax(axis=-1) == labels).mean())


def train(*, cell: str = "rnn", bidirectional: bool = True, steps: int = 3000, batch: int = 64,
          seq_len: int = 10, vocab: int = 8, hidden: int = 32, lr: float = 0.005, seed: int = 0,
          progress: bool = True) -> DemoResult:
    """Train on fresh batches of the repeat task; report held-out accuracy and time."""
    rng = np.random.default_rng(seed)
    model = build_model(cell, vocab, hidden, bidirectional, seed)
    optimizer, loss_fn = Adam(model.parameters(), lr=lr), CrossEntropyLoss()
    test_x, test_y = repeat_task(2000, seq_len, vocab, rng)
    bar = _progress_bar(steps) if progress else None
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        x, y = repeat_task(batch, seq_len, vocab, rng)
        loss = loss_fn(model(backend.asarray(x)), backend.asarray(y))
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(backend.to_numpy(loss)))
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            bar.update()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    return DemoResult(accuracy(model, test_x, test_y), seconds, losses)


class _ProgressLines:
    """Plain progress lines on stderr, ten per run: the stand-in for tqdm's bar (the same
    ``set_postfix`` / ``update`` / ``close`` calls) when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        self.total, self.every, self.done = total, max(1, total // 10), 0
        self.postfix, self.start = "", time.perf_counter()

    def set_postfix(self, refresh: bool = False, **values: str) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            print(f"training: step {self.done}/{self.total}, {self.postfix}, "
                  f"{time.perf_counter() - self.start:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress_bar(total: int):
    """tqdm's bar where tqdm is installed (``xrnn[demo]``), plain lines otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _ProgressLines(total)
    return tqdm(total=total, desc="training", unit="step", mininterval=0.5)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib, which is not installed: "
                          "pip install matplotlib") from None
    return plt


def plot_problem(path: str) -> str | None:
    """Why writing the loss curves to ``path`` would fail after training (matplotlib
    missing, no such folder), or None."""
    try:
        _pyplot()
    except ImportError as exc:
        return str(exc)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--plot {path}: the folder {folder} does not exist"
    return None


def plot_losses(path: str, curves: dict[str, list[float]]) -> None:
    """Write the loss curves (one per label) to ``path``."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    for label, losses in curves.items():
        ax.plot(losses, label=label, linewidth=0.8)
    ax.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="xrnn demo: repeat task")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(cell: str, compare_unidirectional: bool, plot: str | None, seed: int, steps: int) -> int:
    """The ``python -m xrnn demo`` command."""
    if plot:
        _pyplot()  # fail before training, not after (main checks with plot_problem first)
    print(f"backend {backend.get_backend()}: label each symbol 1 if it appears again later "
          "(needs future context)")
    curves = {}
    runs = [("bidirectional", True)] + ([("unidirectional", False)] if compare_unidirectional else [])
    for name, bidirectional in runs:
        print(f"{name} 2-layer {cell.upper()}:")
        result = train(cell=cell, bidirectional=bidirectional, seed=seed, steps=steps)
        curves[name] = result.losses
        print(f"  trained {steps} steps in {result.seconds:.1f} s; "
              f"held-out accuracy {result.accuracy:.1%}")
    if plot:
        plot_losses(plot, curves)
        print(f"loss curve written to {plot}")
    return 0

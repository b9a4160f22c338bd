"""Zoneout and weight dropout on real text: a character-level LSTM language model on
the source of Python's own ``argparse`` module, held-out loss per epoch.

The text is ``inspect.getsourcefile(argparse)`` (``Lib/argparse.py``, about 100 KB on
CPython 3.11: English docstrings and Python code; every CPython install has it). The
first 90% of its characters train, the last 10% are held out. The model is Embedding ->
LSTM -> Linear, trained with truncated BPTT as ``examples/char_language_model.py``:
the training text as ``--batch`` parallel streams, ``--chunk`` steps per update, each
chunk's final state handed to the next as a constant. Each setting starts from the same
seed and sees the same chunks; after each epoch the held-out text is read the same way
(eval mode: no masks, zoneout at its expectation, under ``no_grad``) and its mean
cross-entropy, in nats per character, is recorded.

    python -m benchmarks.lm_regularisers                  # about 2 minutes on 2 cores
    python -m benchmarks.lm_regularisers --hidden 256 --epochs 12   # overfits: 4 minutes
    python -m benchmarks.lm_regularisers --epochs 1 --max-chars 5000 --no-plot

Writes ``benchmarks/results/lm-regularisers.md`` and ``.json`` (``--output``) and, with
matplotlib installed and without ``--no-plot``, ``lm-regularisers.png``.
``XRNN_BACKEND`` picks the backend.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import xrnn

RESULTS = Path(__file__).resolve().parent / "results"
#: Setting name -> the LSTM's regulariser keywords.
SETTINGS: dict[str, dict[str, float]] = {
    "plain": {},
    "zoneout=0.1": {"zoneout": 0.1},
    "weight_dropout=0.3": {"weight_dropout": 0.3},
}


class CharLM(xrnn.Module):
    """Characters (T, B) -> logits (T, B, V); the LSTM state goes in and comes out."""

    def __init__(self, vocab: int, embedding: int, hidden: int, seed: int,
                 **regularisers: float) -> None:
        super().__init__()
        self.embed = xrnn.Embedding(vocab, embedding, seed=seed)
        self.lstm = xrnn.LSTM(embedding, hidden, seed=seed + 1, **regularisers)
        self.head = xrnn.Linear(hidden, vocab, seed=seed + 2)

    def forward(self, chars, state=None):
        output, state = self.lstm(self.embed(chars), state)
        return self.head(output), state

    def backward(self, grad_logits):
        """Truncated BPTT: the state passed in is a constant."""
        self.embed.backward(self.lstm.backward(self.head.backward(grad_logits)))


def read_text(max_chars: int | None = None) -> tuple[str, str]:
    """The text and where it came from (argparse's source file)."""
    path = inspect.getsourcefile(argparse)
    if path is None:
        raise FileNotFoundError("argparse has no source file on this Python (a frozen build?)")
    text = Path(path).read_text(encoding="utf-8")
    return (text[:max_chars] if max_chars else text), path


def streams(codes: np.ndarray, batch: int) -> np.ndarray:
    """The codes as ``batch`` contiguous streams: (L, batch) with L = len // batch."""
    length = len(codes) // batch
    if length < 2:
        raise ValueError(f"{len(codes)} characters cannot make {batch} streams of 2 or more")
    return codes[:length * batch].reshape(batch, length).T


def chunks(data: np.ndarray, chunk: int):
    """(inputs, targets) pairs of up to ``chunk`` steps, covering the streams once."""
    for start in range(0, len(data) - 1, chunk):
        stop = min(start + chunk, len(data) - 1)
        yield data[start:stop], data[start + 1:stop + 1]


def held_out_loss(model: CharLM, data: np.ndarray, chunk: int) -> float:
    """Mean cross-entropy in nats per character over the held-out streams, eval mode."""
    loss_fn, total, count, state = xrnn.CrossEntropyLoss(), 0.0, 0, None
    model.eval()
    with xrnn.no_grad():
        for inputs, targets in chunks(data, chunk):
            logits, state = model(xrnn.asarray(inputs), state)
            total += float(xrnn.to_numpy(loss_fn(logits, xrnn.asarray(targets)))) * targets.size
            count += targets.size
    model.train()
    return total / count


def train(setting: dict[str, float], train_data: np.ndarray, held_data: np.ndarray,
          vocab: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one setting; returns held-out loss before training and after each epoch,
    the mean training loss of each epoch, and the seconds spent."""
    model = CharLM(vocab, args.embedding, args.hidden, args.seed, **setting)
    optimizer = xrnn.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = xrnn.CrossEntropyLoss()
    held, training, start = [held_out_loss(model, held_data, args.chunk)], [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        state, losses = None, []
        for inputs, targets in chunks(train_data, args.chunk):
            optimizer.zero_grad()
            logits, state = model(xrnn.asarray(inputs), state)
            losses.append(float(xrnn.to_numpy(loss_fn(logits, xrnn.asarray(targets)))))
            model.backward(loss_fn.backward())
            xrnn.optim.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
        training.append(float(np.mean(losses)))
        held.append(held_out_loss(model, held_data, args.chunk))
        print(f"  epoch {epoch}: train {training[-1]:.3f}, held-out {held[-1]:.3f} nats/char",
              flush=True)
    return {"held_out": held, "train": training, "seconds": time.perf_counter() - start}


def markdown(result: dict[str, Any]) -> str:
    names = list(result["settings"])
    header = "| epoch | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|\n"
    rows = "".join(
        f"| {epoch} | " + " | ".join(f"{result['runs'][n]['held_out'][epoch]:.3f}"
                                     for n in names) + " |\n"
        for epoch in range(result["epochs"] + 1))
    train_row = ("| train, last epoch | " + " | ".join(
        f"{result['runs'][n]['train'][-1]:.3f}" for n in names) + " |\n"
                 if result["epochs"] else "")
    seconds = " | ".join(f"{result['runs'][n]['seconds']:.0f}" for n in names)
    return (f"# Character LSTM language model with and without regularisers\n\n"
            f"`{result['command']}`\n\n"
            f"Text: `{result['text']}` (Python {result['python']}), {result['chars']} characters, "
            f"{result['vocab']} distinct; first {result['train_chars']} train, last "
            f"{result['held_chars']} held out. Model: Embedding({result['vocab']}, "
            f"{result['config']['embedding']}) -> LSTM({result['config']['embedding']}, "
            f"{result['config']['hidden']}) -> Linear; Adam lr {result['config']['lr']}, "
            f"batch {result['config']['batch']} streams, chunks of {result['config']['chunk']} "
            f"steps (truncated BPTT), gradient norm clipped to 1, seed "
            f"{result['config']['seed']}; backend {result['backend']}.\n\n"
            f"Held-out cross-entropy, nats per character (epoch 0: before training; "
            f"ln V = {np.log(result['vocab']):.3f}):\n\n{header}{rows}{train_row}"
            f"| seconds | {seconds} |\n")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in result["runs"].items():
        ax.plot(range(1, result["epochs"] + 1), run["held_out"][1:], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.set_title(f"char LSTM({result['config']['hidden']}) on argparse.py")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_regularisers",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="parallel streams")
    parser.add_argument("--chunk", type=int, default=64, help="steps per update")
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-chars", type=int, help="use only the text's first N characters")
    parser.add_argument("--setting", choices=list(SETTINGS), action="append",
                        help="repeatable (default: all three)")
    parser.add_argument("--output", type=Path, default=RESULTS / "lm-regularisers",
                        help="write OUTPUT.md, OUTPUT.json and OUTPUT.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    args = parser.parse_args(argv)

    text, path = read_text(args.max_chars)
    alphabet = sorted(set(text))
    codes = np.array([alphabet.index(c) for c in text], dtype=np.int64)
    split = int(0.9 * len(codes))
    train_data = streams(codes[:split], args.batch)
    held_data = streams(codes[split:], args.batch)
    result: dict[str, Any] = {
        "command": "python -m benchmarks.lm_regularisers "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "text": f"{Path(path).parent.name}/{Path(path).name}", "python": platform.python_version(),
        "chars": len(text), "vocab": len(alphabet), "train_chars": split,
        "held_chars": len(codes) - split, "backend": xrnn.get_backend(), "epochs": args.epochs,
        "config": {k: getattr(args, k) for k in ("hidden", "embedding", "batch", "chunk", "lr",
                                                 "seed")},
        "settings": {name: SETTINGS[name] for name in args.setting or SETTINGS}, "runs": {},
    }
    for name, setting in result["settings"].items():
        print(f"{name}:", flush=True)
        result["runs"][name] = train(setting, train_data, held_data, len(alphabet), args)
    stem = args.output.with_suffix("") if args.output.suffix in (".md", ".json") else args.output
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(markdown(result))
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result), end="")
    if not args.no_plot:
        plot(result, Path(f"{stem}.png"))
        print(f"wrote {stem}.png")
    return result


if __name__ == "__main__":
    main()

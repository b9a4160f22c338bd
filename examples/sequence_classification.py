"""Sequence classification of variable-length token sequences.

Task: does token 1 occur more often than token 2? Sequences have 4 to 16 tokens from a
vocabulary of 6 (index 0 pads). The answer depends on every token of each sequence, and
each sequence's summary is read at its own last step, so the model takes the padded
batch with ``lengths``:

    Embedding -> bidirectional LSTM (lengths) -> LastStep -> Linear -> cross-entropy

With the defaults (300 steps of 32 sequences, about 10 s on a 2-core x86-64 CPU) it
reaches over 99% accuracy on 1000 held-out sequences; chance is 50%.

    python examples/sequence_classification.py [--steps N] [--save model.npz]
    python examples/sequence_classification.py --resume model.npz --steps 200

``--save`` writes the model and the optimizer's state (``model.npz`` and
``model.optim.npz``); ``--resume`` loads both and goes on training where it stopped.
``XRNN_BACKEND`` picks the backend.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import xrnn

VOCAB, MIN_LEN, MAX_LEN = 6, 4, 16


def make_batch(rng: np.random.Generator, size: int):
    """Tokens (T, B) int64 padded with 0, lengths (B,), labels (B,): 1 where token 1
    occurs more often than token 2 (never equally often)."""
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=size)
    tokens = rng.integers(1, VOCAB, size=(MAX_LEN, size))
    tokens[np.arange(MAX_LEN)[:, None] >= lengths] = 0
    ones, twos = (tokens == 1).sum(axis=0), (tokens == 2).sum(axis=0)
    for b in np.flatnonzero(ones == twos):  # break ties at the last token
        last = lengths[b] - 1
        tokens[last, b] = 3 if tokens[last, b] in (1, 2) else 1
    ones = (tokens == 1).sum(axis=0)
    return tokens, lengths, (ones > (tokens == 2).sum(axis=0)).astype(np.int64)


def build_model(seed: int) -> xrnn.Sequential:
    return xrnn.Sequential(
        xrnn.Embedding(VOCAB, 8, padding_idx=0, seed=seed),
        xrnn.LSTM(8, 24, bidirectional=True, seed=seed + 1),
        xrnn.LastStep(),
        xrnn.Linear(48, 2, seed=seed + 2),
    )


def accuracy(model: xrnn.Sequential, tokens, lengths, labels) -> float:
    with xrnn.no_grad():
        logits = model(xrnn.asarray(tokens), lengths=xrnn.asarray(lengths))
    predicted = np.argmax(xrnn.to_numpy(logits), axis=-1)
    return float(np.mean(predicted == labels))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write model and optimizer state here at the end")
    parser.add_argument("--resume", help="load model and optimizer state from here first")
    args = parser.parse_args(argv)

    if args.resume:
        model = xrnn.load(args.resume)
        optimizer = xrnn.optim.Adam(model.parameters(), lr=args.lr)
        optimizer.load_state_dict(xrnn.load(optimizer_path(args.resume)))
    else:
        model = build_model(args.seed)
        optimizer = xrnn.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = xrnn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed + 1000 * bool(args.resume))
    test = make_batch(np.random.default_rng(12345), 1000)  # the same held-out set always
    print(f"held-out accuracy before training: {accuracy(model, *test):.1%}")
    for step in range(1, args.steps + 1):
        tokens, lengths, labels = make_batch(rng, args.batch)
        optimizer.zero_grad()
        logits = model(xrnn.asarray(tokens), lengths=xrnn.asarray(lengths))
        loss = loss_fn(logits, xrnn.asarray(labels))
        model.backward(loss_fn.backward())
        xrnn.optim.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}: loss {float(xrnn.to_numpy(loss)):.4f}")
    result = accuracy(model, *test)
    print(f"held-out accuracy: {result:.1%}")
    if args.save:
        xrnn.save(model, args.save)
        xrnn.save(optimizer.state_dict(), optimizer_path(args.save))
        print(f"saved {args.save} and {optimizer_path(args.save)}")
    return result


def optimizer_path(model_path: str) -> str:
    """Where the optimizer's state goes beside ``model_path``: a.npz -> a.optim.npz."""
    stem = model_path[:-4] if model_path.endswith(".npz") else model_path
    return stem + ".optim.npz"


if __name__ == "__main__":
    main(sys.argv[1:])

"""A character-level language model trained with truncated BPTT, then sampled.

The model is a custom module (Embedding -> LSTM -> Linear over the characters) whose
``forward`` takes and returns the LSTM state, so training reads a long text as
``--batch`` parallel streams in chunks of ``--chunk`` steps, handing each chunk's final
state to the next as a plain array: gradients stop at the chunk boundary (truncated
BPTT). Sampling runs one character at a time with ``LSTM.step`` under ``no_grad``.

With the defaults (200 chunks, about 7 s on a 2-core x86-64 CPU) the loss on the
built-in text falls from ln(V) = 3.4 to about 0.03 nats per character: the text is short
enough to learn by heart, and the sample shows it.

    python examples/char_language_model.py [--steps N] [--save lm.npz]
    python examples/char_language_model.py --resume lm.npz --steps 100

``--save`` writes the model and the optimizer's state and ``--resume`` continues from
them; loading a custom module names its class: ``xrnn.load(path,
custom_modules={"CharLM": CharLM})``. ``XRNN_BACKEND`` picks the backend.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import xrnn

TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a recurrent network reads one character at a time and carries a state. "
    "the state remembers what came before, so the next character is easier to guess. "
    "truncated backpropagation through time cuts the gradient at each chunk. "
) * 4


class CharLM(xrnn.Module):
    """Characters (T, B) -> logits (T, B, V); the LSTM state goes in and comes out."""

    def __init__(self, vocab: int, embedding: int = 16, hidden: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        self.vocab, self.embedding, self.hidden, self.seed = vocab, embedding, hidden, seed
        self.embed = xrnn.Embedding(vocab, embedding, seed=seed)
        self.lstm = xrnn.LSTM(embedding, hidden, seed=seed + 1)
        self.head = xrnn.Linear(hidden, vocab, seed=seed + 2)

    def forward(self, chars, state=None):
        output, state = self.lstm(self.embed(chars), state)
        return self.head(output), state

    def backward(self, grad_logits):
        """The state passed in is a constant (truncated BPTT): only the logits' gradient
        flows back, and the characters have none."""
        self.embed.backward(self.lstm.backward(self.head.backward(grad_logits)))

    def step(self, char, state=None):
        """One character per stream (B,) -> logits (B, V), for sampling."""
        y, state = self.lstm.step(self.embed(char), state)
        return self.head(y), state

    def config(self):
        return dict(vocab=self.vocab, embedding=self.embedding, hidden=self.hidden,
                    seed=self.seed)


def streams(codes: np.ndarray, batch: int) -> np.ndarray:
    """The text as ``batch`` contiguous streams: (L, batch) with L = len // batch."""
    length = len(codes) // batch
    return codes[:length * batch].reshape(batch, length).T


def sample(model: CharLM, alphabet: str, prime: str, count: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(alphabet)}
    out, state = prime, None
    with xrnn.no_grad():
        for c in prime:
            logits, state = model.step(xrnn.asarray(np.array([index[c]])), state)
        for _ in range(count):
            p = np.exp(xrnn.to_numpy(logits)[0].astype(np.float64))
            c = rng.choice(len(alphabet), p=p / p.sum())
            out += alphabet[c]
            logits, state = model.step(xrnn.asarray(np.array([c])), state)
    return out


def main(argv: list[str] | None = None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="chunks to train on")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write model and optimizer state here at the end")
    parser.add_argument("--resume", help="load model and optimizer state from here first")
    args = parser.parse_args(argv)

    alphabet = "".join(sorted(set(TEXT)))
    codes = np.array([alphabet.index(c) for c in TEXT], dtype=np.int64)
    data = streams(codes, args.batch)
    if args.resume:
        model = xrnn.load(args.resume, custom_modules={"CharLM": CharLM})
        optimizer = xrnn.optim.Adam(model.parameters(), lr=args.lr)
        optimizer.load_state_dict(xrnn.load(optimizer_path(args.resume)))
    else:
        model = CharLM(len(alphabet), seed=args.seed)
        optimizer = xrnn.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = xrnn.CrossEntropyLoss()
    state, start, losses = None, 0, []
    for step in range(1, args.steps + 1):
        if start + args.chunk + 1 > len(data):  # back to the beginning: a fresh state
            state, start = None, 0
        chars = xrnn.asarray(data[start:start + args.chunk])
        targets = xrnn.asarray(data[start + 1:start + args.chunk + 1])
        start += args.chunk
        optimizer.zero_grad()
        logits, state = model(chars, state)
        losses.append(float(xrnn.to_numpy(loss_fn(logits, targets))))
        model.backward(loss_fn.backward())
        xrnn.optim.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            print(f"chunk {step}: loss {np.mean(losses[-20:]):.3f} nats/char")
    first, last = losses[0], float(np.mean(losses[-20:]))
    print(f"loss: first chunk {first:.3f}, last 20 chunks {last:.3f} (ln V = "
          f"{np.log(len(alphabet)):.3f})")
    print("sample:", sample(model, alphabet, "the ", 60, args.seed))
    if args.save:
        xrnn.save(model, args.save)
        xrnn.save(optimizer.state_dict(), optimizer_path(args.save))
        print(f"saved {args.save} and {optimizer_path(args.save)}")
    return first, last


def optimizer_path(model_path: str) -> str:
    """Where the optimizer's state goes beside ``model_path``: a.npz -> a.optim.npz."""
    stem = model_path[:-4] if model_path.endswith(".npz") else model_path
    return stem + ".optim.npz"


if __name__ == "__main__":
    main(sys.argv[1:])

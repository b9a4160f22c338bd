"""Pure functions, no state: cells, the recurrence driver, dropout."""

from .cells import Cell, elman_cell
from .dropout import dropout
from .rnn import rnn, rnn_vjp

__all__ = ["Cell", "dropout", "elman_cell", "rnn", "rnn_vjp"]

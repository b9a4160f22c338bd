"""Pure functions, no state: cells, the recurrence driver, dropout."""

from .cells import GRU_CELL, LSTM_CELL, Cell, elman_cell
from .dropout import dropout
from .rnn import gru, gru_vjp, lstm, lstm_vjp, rnn, rnn_vjp

__all__ = ["Cell", "GRU_CELL", "LSTM_CELL", "dropout", "elman_cell", "gru", "gru_vjp", "lstm",
           "lstm_vjp", "rnn", "rnn_vjp"]

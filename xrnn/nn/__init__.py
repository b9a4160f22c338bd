"""Stateful modules: parameters, layers, containers."""

from .activations import Identity, ReLU, Sigmoid, Tanh
from .dropout import Dropout
from .embedding import Embedding
from .linear import Linear
from .module import Module, Parameter, is_grad_enabled, no_grad
from .pooling import LastStep, MaxOverTime, MeanOverTime
from .recurrent import GRU, LSTM, RNN, RecurrentBase
from .sequential import Sequential

__all__ = ["Dropout", "Embedding", "GRU", "LSTM", "Identity", "LastStep", "Linear", "MaxOverTime",
           "MeanOverTime", "Module", "Parameter", "RNN", "ReLU", "RecurrentBase", "Sequential",
           "Sigmoid", "Tanh", "is_grad_enabled", "no_grad"]

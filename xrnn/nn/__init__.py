"""Stateful modules: parameters, layers, containers."""

from .activations import Identity, ReLU, Sigmoid, Tanh
from .linear import Linear
from .module import Module, Parameter, is_grad_enabled, no_grad
from .recurrent import GRU, LSTM, RNN, RecurrentBase
from .sequential import Sequential

__all__ = ["GRU", "LSTM", "Identity", "Linear", "Module", "Parameter", "RNN", "ReLU", "RecurrentBase",
           "Sequential", "Sigmoid", "Tanh", "is_grad_enabled", "no_grad"]

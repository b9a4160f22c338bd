"""xrnn: recurrent neural networks written once against the Python Array API standard.

The same model runs on NumPy (CPU) or CuPy (CUDA); ``XRNN_BACKEND`` or
:func:`xrnn.backend.set_backend` picks the backend. Layers match PyTorch's argument
for argument, so a PyTorch ``state_dict`` loads unchanged.
"""

from . import backend, functional, io, losses, nn, optim, testing
from .backend import asarray, get_backend, get_namespace, set_backend, to_numpy, use_backend
from .io import load, save
from .losses import CrossEntropyLoss, MSELoss
from .nn import (GRU, LSTM, RNN, Dropout, Embedding, Identity, LastStep, Linear, MaxOverTime,
                 MeanOverTime, Module, Parameter, ReLU, Sequential, Sigmoid, Tanh, no_grad)
from .sequences import from_timesteps

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss", "Dropout", "Embedding", "GRU", "LSTM", "LastStep", "MSELoss",
    "MaxOverTime", "MeanOverTime", "RNN", "Identity", "Linear", "Module",
    "Parameter", "ReLU", "Sequential", "Sigmoid", "Tanh", "asarray", "backend",
    "from_timesteps", "functional", "get_backend", "get_namespace", "io", "load", "losses",
    "nn", "no_grad", "optim", "save", "set_backend", "testing", "to_numpy", "use_backend",
]

"""Keras 3 weight conversion: :func:`from_keras` and :func:`to_keras`.

``pip install "xrnn[keras]"`` installs Keras 3 only. Keras needs a backend: set
``KERAS_BACKEND`` before anything imports keras, e.g. ``KERAS_BACKEND=torch`` (with
``xrnn[parity]``'s torch; ``numpy`` also works where SciPy is installed, ``jax`` and
``tensorflow`` where installed). The core never imports this module; ``xrnn.io.from_keras``
and ``xrnn.io.to_keras`` call it.

The mapping, layer by layer (Keras layers are batch-first):

============================================  ==============================================
Keras 3                                       xrnn
============================================  ==============================================
``SimpleRNN(activation="tanh" | "relu" |      ``RNN(nonlinearity="tanh" | "relu" |
"linear")``                                   "identity", batch_first=True)``
``LSTM`` (tanh, sigmoid)                      ``LSTM(batch_first=True)``, ``proj_size=0``
``GRU(reset_after=True)`` (tanh, sigmoid)     ``GRU(batch_first=True)``
``Bidirectional(layer, merge_mode="concat")`` the layer with ``bidirectional=True``
``return_sequences=True``                     the recurrent layer: same output
``return_sequences=False``                    the recurrent layer, then ``LastStep()``
``Dense(units, activation)``                  ``Linear``, then ``ReLU`` / ``Tanh`` / ``Sigmoid``
``Activation``, ``Dropout``, ``Embedding``    ``ReLU`` / ``Tanh`` / ``Sigmoid``, ``Dropout``,
                                              ``Embedding``
``keras.Sequential`` of these                 ``xrnn.Sequential``
============================================  ==============================================

Weights: a Keras kernel is (in, G*H), PyTorch's ``weight_ih`` (G*H, in), so kernels are
transposed; LSTM gates are i, f, c, o in both (PyTorch's i, f, g, o); GRU gates are
z, r, h in Keras and r, z, n in PyTorch. A Keras SimpleRNN or LSTM has one bias:
:func:`from_keras` puts it in ``bias_ih`` and zeros in ``bias_hh``, :func:`to_keras`
writes ``bias_ih + bias_hh``. A GRU with ``reset_after=True`` (PyTorch's cell) has an
input and a recurrent bias, (2, 3H); ``reset_after=False`` is a different cell and is
refused. A bare recurrent layer with ``return_state=True`` converts too: Keras's states
are xrnn's ``h_n[k]`` (and ``c_n[k]``), one per direction.

Refused with ``ValueError`` naming the option: ``go_backwards`` (outside
``Bidirectional``), ``stateful``, activations other than those above,
``recurrent_activation`` other than sigmoid, other merge modes, ``Embedding(mask_zero=
True)`` (xrnn takes ``lengths`` instead of masks), an LSTM with ``proj_size``. Training
options (``dropout``, ``recurrent_dropout``, initializers, regularizers) are not
carried over: they do not change the output in inference. xrnn's ``lengths`` has no
Keras counterpart (Keras uses masks); ``to_keras`` refuses ``zoneout`` and
``layer_norm`` (they change the inference-time cell) and drops ``recurrent_dropout`` and
``weight_dropout`` (training only); and ``to_keras`` gives batch-first Keras layers
whatever the xrnn layer's ``batch_first``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import keras

from .backend import to_numpy
from .nn import (GRU, LSTM, RNN, Dropout, Embedding, Identity, LastStep, Linear, Module,
                 RecurrentBase, ReLU, Sequential, Sigmoid, Tanh)

#: xrnn gate block k is Keras's gate block _GATES[cell][k] (and the reverse permutation).
_GATES = {"SimpleRNN": [0], "LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2]}
_CELLS = {"SimpleRNN": RNN, "LSTM": LSTM, "GRU": GRU}
_KERAS_NAMES = {RNN: "SimpleRNN", LSTM: "LSTM", GRU: "GRU"}
_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}
_NONLINEARITIES = {"tanh": "tanh", "relu": "relu", "linear": "identity"}


def _reorder(weight: np.ndarray, gates: list[int]) -> np.ndarray:
    """Gate blocks along axis 0 in the order ``gates`` (each order here is its own inverse)."""
    blocks = weight.reshape(len(gates), -1, *weight.shape[1:])
    return blocks[gates].reshape(weight.shape)


def _activation(layer: Any, option: str = "activation") -> str:
    value = layer.get_config()[option]
    return value if isinstance(value, str) else str(keras.activations.serialize(value))


def _check_recurrent(layer: Any, in_bidirectional: bool = False) -> str:
    """The Keras class name of a supported recurrent ``layer``, or ``ValueError``."""
    kind = type(layer).__name__
    config = layer.get_config()
    if config.get("go_backwards") and not in_bidirectional:
        raise ValueError(f"{kind} with go_backwards=True has no xrnn counterpart (a reversed "
                         "output); wrap the layer in Bidirectional instead")
    if config.get("stateful"):
        raise ValueError(f"{kind} with stateful=True is not supported: pass h0 to the xrnn "
                         "layer to carry state between calls")
    allowed = _NONLINEARITIES if kind == "SimpleRNN" else {"tanh": "tanh"}
    if _activation(layer) not in allowed:
        raise ValueError(f"{kind} activation must be one of {sorted(allowed)}, got "
                         f"{_activation(layer)!r}")
    if kind != "SimpleRNN" and _activation(layer, "recurrent_activation") != "sigmoid":
        raise ValueError(f"{kind} recurrent_activation must be 'sigmoid', got "
                         f"{_activation(layer, 'recurrent_activation')!r}")
    if kind == "GRU" and not config["reset_after"]:
        raise ValueError("GRU(reset_after=False) applies the reset gate before the recurrent "
                         "product, a different cell from PyTorch's and xrnn's GRU; use "
                         "reset_after=True (Keras's default)")
    return kind


def _keras_weights(layer: Any, kind: str, suffix: str) -> dict[str, np.ndarray]:
    """One direction's xrnn parameters from a built Keras recurrent layer."""
    gates = _GATES[kind]
    weights = [np.asarray(w) for w in layer.get_weights()]
    kernel, recurrent = weights[0], weights[1]
    state = {f"weight_ih_l0{suffix}": _reorder(kernel.T, gates),
             f"weight_hh_l0{suffix}": _reorder(recurrent.T, gates)}
    if layer.get_config()["use_bias"]:
        bias = weights[2]
        if kind == "GRU":  # (2, 3H): input and recurrent biases
            bias_ih, bias_hh = bias[0], bias[1]
        else:
            bias_ih, bias_hh = bias, np.zeros_like(bias)
        state[f"bias_ih_l0{suffix}"] = _reorder(bias_ih, gates)
        state[f"bias_hh_l0{suffix}"] = _reorder(bias_hh, gates)
    return state


def _from_recurrent(layer: Any, input_size: int) -> list[Module]:
    bidirectional = type(layer).__name__ == "Bidirectional"
    if bidirectional:
        merge = layer.get_config()["merge_mode"]
        if merge != "concat":
            raise ValueError(f"Bidirectional merge_mode must be 'concat', got {merge!r}")
        forward, backward = layer.forward_layer, layer.backward_layer
        kind = _check_recurrent(forward)
        if _check_recurrent(backward, in_bidirectional=True) != kind or not (
                backward.get_config()["go_backwards"]):
            raise ValueError("Bidirectional's backward layer must be the same kind of layer "
                             "as its forward layer, with go_backwards=True")
        directions = [forward, backward]
    else:
        kind = _check_recurrent(layer)
        directions = [layer]
    first = directions[0]
    options: dict[str, Any] = dict(bias=first.get_config()["use_bias"], batch_first=True,
                                   bidirectional=bidirectional)
    if kind == "SimpleRNN":
        options["nonlinearity"] = _NONLINEARITIES[_activation(first)]
    units = first.get_config()["units"]
    if any(d.get_config()["units"] != units or d.get_config()["use_bias"] != options["bias"]
           for d in directions):
        raise ValueError("Bidirectional's two layers must have the same units and use_bias")
    dtype = np.asarray(first.get_weights()[0]).dtype.name
    module = _CELLS[kind](input_size, units, dtype=dtype, **options)
    state: dict[str, np.ndarray] = {}
    for direction, suffix in zip(directions, ["", "_reverse"]):
        state |= _keras_weights(direction, kind, suffix)
    module.load_state_dict(state)
    return [module] if first.get_config()["return_sequences"] else [module, LastStep()]


def _built(layer: Any) -> Any:
    if not layer.built or not layer.get_weights():
        raise ValueError(f"Keras layer {layer.name!r} is not built (it has no weights yet): "
                         "call it on data or build the model with an input shape first")
    return layer


def _from_layer(layer: Any, features: int | None) -> tuple[list[Module], int | None]:
    """xrnn modules for one Keras layer, and the number of output features."""
    kind = type(layer).__name__
    if kind in _CELLS or kind == "Bidirectional":
        inner = layer.forward_layer if kind == "Bidirectional" else layer
        kernel = np.asarray(_built(inner).get_weights()[0])
        modules = _from_recurrent(layer, kernel.shape[0])
        return modules, inner.get_config()["units"] * (2 if kind == "Bidirectional" else 1)
    if kind == "Dense":
        weights = [np.asarray(w) for w in _built(layer).get_weights()]
        linear = Linear(weights[0].shape[0], weights[0].shape[1], bias=len(weights) == 2,
                        dtype=weights[0].dtype.name)
        linear.load_state_dict({"weight": weights[0].T} | (
            {"bias": weights[1]} if len(weights) == 2 else {}))
        return [linear, *_activation_modules(layer)], weights[0].shape[1]
    if kind == "Activation":
        return _activation_modules(layer), features
    if kind == "Dropout":
        return [Dropout(float(layer.get_config()["rate"]))], features
    if kind == "Embedding":
        if layer.get_config().get("mask_zero"):
            raise ValueError("Embedding(mask_zero=True) masks padding; xrnn takes lengths "
                             "instead: use mask_zero=False and pass lengths to the model")
        table = np.asarray(_built(layer).get_weights()[0])
        embedding = Embedding(*table.shape, dtype=table.dtype.name)
        embedding.load_state_dict({"weight": table})
        return [embedding], table.shape[1]
    raise TypeError(f"cannot convert Keras layer {kind} ({layer.name!r}): supported are "
                    "SimpleRNN, LSTM, GRU, Bidirectional, Dense, Activation, Dropout, "
                    "Embedding and a keras.Sequential of them")


def _activation_modules(layer: Any) -> list[Module]:
    name = _activation(layer)
    if name == "linear":
        return []
    if name not in _ACTIVATIONS:
        raise ValueError(f"{type(layer).__name__} activation must be one of "
                         f"{sorted(_ACTIVATIONS) + ['linear']}, got {name!r}")
    return [_ACTIVATIONS[name]()]


def from_keras(layer_or_model: Any) -> Module:
    """An xrnn module with the weights of a built Keras 3 layer or ``keras.Sequential``.

    Its output equals Keras's for the same batch-first input (B, T, F) (see the
    module docstring for the mapping). A bare recurrent layer with
    ``return_sequences=True`` becomes the xrnn layer itself; anything else becomes an
    ``xrnn.Sequential``. Parameters are created on the selected backend.
    """
    if isinstance(layer_or_model, keras.Sequential):
        modules: list[Module] = []
        features = None
        for layer in layer_or_model.layers:
            converted, features = _from_layer(layer, features)
            modules += converted
        return Sequential(*modules)
    modules, _ = _from_layer(layer_or_model, None)
    return modules[0] if len(modules) == 1 else Sequential(*modules)


def _recurrent_to_keras(module: RecurrentBase, return_sequences: bool) -> list[Any]:
    if isinstance(module, LSTM) and module.proj_size:
        raise ValueError(f"Keras's LSTM has no projection: cannot convert proj_size="
                         f"{module.proj_size} (expected 0)")
    for option, inert in [("zoneout", 0.0), ("layer_norm", False)]:
        if getattr(module, option, inert) != inert:
            raise ValueError(f"{option}={getattr(module, option)!r} changes the inference-time "
                             f"cell; Keras's layers have no such option (expected {inert!r})")
    kind = _KERAS_NAMES[type(module)]
    gates = _GATES[kind]
    params = {name: to_numpy(value) for name, value in module.state_dict().items()}
    options: dict[str, Any] = dict(units=module.hidden_size, use_bias=module.bias,
                                   dtype=module.dtype)
    if isinstance(module, RNN):
        options["activation"] = {v: k for k, v in _NONLINEARITIES.items()}[module.nonlinearity]
    layers = []
    for k in range(module.num_layers):
        sequences = return_sequences or k < module.num_layers - 1
        inputs = module.input_size if k == 0 else module.num_directions * module.hidden_size

        def make(go_backwards: bool = False) -> Any:
            return getattr(keras.layers, kind)(return_sequences=sequences,
                                               go_backwards=go_backwards, **options)

        def weights(suffix: str) -> list[np.ndarray]:
            found = [_reorder(params[f"weight_ih_l{k}{suffix}"], gates).T,
                     _reorder(params[f"weight_hh_l{k}{suffix}"], gates).T]
            if module.bias:
                b_ih = _reorder(params[f"bias_ih_l{k}{suffix}"], gates)
                b_hh = _reorder(params[f"bias_hh_l{k}{suffix}"], gates)
                found.append(np.stack([b_ih, b_hh]) if kind == "GRU" else b_ih + b_hh)
            return found

        if module.bidirectional:
            layer = keras.layers.Bidirectional(make(), backward_layer=make(go_backwards=True),
                                               merge_mode="concat", dtype=module.dtype)
            layer.build((None, None, inputs))
            layer.forward_layer.set_weights(weights(""))
            layer.backward_layer.set_weights(weights("_reverse"))
        else:
            layer = make()
            layer.build((None, None, inputs))
            layer.set_weights(weights(""))
        layers.append(layer)
    return layers


def to_keras(model: Module) -> Any:
    """A built Keras 3 layer or ``keras.Sequential`` with ``model``'s weights.

    A one-layer RNN, LSTM or GRU becomes one Keras layer (``Bidirectional`` when
    bidirectional) with ``return_sequences=True``; more layers, and an
    ``xrnn.Sequential`` (recurrent layers, ``Linear``, ``ReLU``, ``Tanh``, ``Sigmoid``,
    ``Identity``, ``Dropout``, ``Embedding``, and ``LastStep`` right after a recurrent
    layer, which becomes ``return_sequences=False``), become a ``keras.Sequential``.
    The Keras model takes batch-first input (B, T, F) and gives xrnn's output for it.
    """
    modules = list(model) if isinstance(model, Sequential) else [model]
    layers: list[Any] = []
    for index, module in enumerate(modules):
        following = modules[index + 1] if index + 1 < len(modules) else None
        if isinstance(module, RecurrentBase):
            layers += _recurrent_to_keras(module, not isinstance(following, LastStep))
        elif isinstance(module, LastStep):
            if index == 0 or not isinstance(modules[index - 1], RecurrentBase):
                raise ValueError("LastStep converts only right after a recurrent layer (as "
                                 "Keras's return_sequences=False)")
        elif isinstance(module, Linear):
            dense = keras.layers.Dense(module.out_features, use_bias=module.bias is not None,
                                       dtype=module.dtype)
            dense.build((None, module.in_features))
            dense.set_weights([to_numpy(module.weight.data).T] + (
                [to_numpy(module.bias.data)] if module.bias is not None else []))
            layers.append(dense)
        elif type(module) in _ACTIVATIONS.values():
            name = {v: k for k, v in _ACTIVATIONS.items()}[type(module)]
            layers.append(keras.layers.Activation(name))
        elif isinstance(module, Dropout):
            layers.append(keras.layers.Dropout(module.p))
        elif isinstance(module, Identity):
            layers.append(keras.layers.Identity())
        elif isinstance(module, Embedding):
            embedding = keras.layers.Embedding(module.num_embeddings, module.embedding_dim,
                                               dtype=module.dtype)
            embedding.build((None, None))
            embedding.set_weights([to_numpy(module.weight.data)])
            layers.append(embedding)
        else:
            raise TypeError(f"cannot convert {type(module).__name__} to Keras: supported are "
                            "RNN, LSTM, GRU, Linear, ReLU, Tanh, Sigmoid, Identity, Dropout, "
                            "Embedding, LastStep and a Sequential of them")
    if len(layers) == 1 and not isinstance(model, Sequential):
        return layers[0]
    first = modules[0]  # an Input of the model's dtype, else Keras casts to float32
    if isinstance(first, RecurrentBase):
        layers.insert(0, keras.Input((None, first.input_size), dtype=first.dtype))
    elif isinstance(first, Embedding):
        layers.insert(0, keras.Input((None,), dtype="int64"))
    return keras.Sequential(layers)

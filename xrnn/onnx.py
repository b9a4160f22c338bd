"""Export xrnn models to ONNX, written with the ``onnx`` package alone (no PyTorch).

``pip install "xrnn[onnx]"`` installs ``onnx`` and ``onnxruntime``; the core never
imports this module. Weights are copied to host NumPy arrays, so a model on any backend
exports, and run the exported graph with onnxruntime::

    xrnn.onnx.export(model, "model.onnx", lengths=True)
    session = onnxruntime.InferenceSession("model.onnx")
    (output,) = session.run(None, {"input": x, "lengths": lengths})

Supported modules: ``RNN`` (tanh, relu, identity as ONNX's ``Affine``), ``LSTM``
(``proj_size=0``: ONNX's LSTM has no projection), ``GRU`` (``linear_before_reset=1``,
PyTorch's formulation), each with any ``num_layers``, ``bidirectional``, ``bias``,
``batch_first`` (no ``zoneout`` or ``layer_norm``, which change the inference-time cell;
``recurrent_dropout`` and ``weight_dropout`` act in training only); and a ``Sequential``
of these with ``Linear``, ``ReLU``, ``Tanh``, ``Sigmoid``, ``Identity``, ``Dropout``
(identity: the graph is for inference, as is inter-layer dropout), ``Embedding``,
``LastStep``, ``MeanOverTime``, ``MaxOverTime``.
float32 and float64 models (onnxruntime's CPU kernels for RNN, LSTM and GRU are float32).

Graph inputs (``T`` and ``B`` dynamic):
    input: (T, B, H_in), or (B, T, H_in) when the model's first layout-bearing layer is
        ``batch_first``; int64 ids (T, B) or (B, T) when the model starts with an Embedding.
    lengths: (B,) int64, with ``lengths=True``: as ``model(x, lengths=lengths)``; cast to
        ONNX's int32 ``sequence_lens`` inside the graph. Outputs past a length are zero.
    h0 (L*D, B, H) and, for an LSTM, c0 (L*D, B, H), with ``initial_states=True`` (a bare
        recurrent model only).
Graph outputs: ``output`` in the model's layout, and for a bare recurrent model ``h_n``
(and ``c_n``), (L*D, B, H), layer-major, direction-minor, as xrnn returns them.

ONNX's recurrent operators are single-layer: each layer is one operator over both
directions, its Y (T, D, B, H) transposed and reshaped to (T, B, D*H) for the next.
Gate blocks are reordered from PyTorch's (LSTM i, f, g, o; GRU r, z, n) to ONNX's
(LSTM i, o, f, c; GRU z, r, h).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .backend import to_numpy
from .nn import (GRU, LSTM, RNN, Dropout, Embedding, Identity, LastStep, Linear, MaxOverTime,
                 MeanOverTime, Module, RecurrentBase, ReLU, Sequential, Sigmoid, Tanh)

#: The default opset, and the oldest one the exporter writes (Unsqueeze, ReduceSum and
#: Squeeze take their axes as inputs from opset 13 on).
DEFAULT_OPSET = 17
MIN_OPSET = 13
#: ONNX gate block k is PyTorch's gate block _GATES[cell][k].
_GATES = {RNN: [0], LSTM: [0, 3, 1, 2], GRU: [1, 0, 2]}
_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "identity": "Affine"}
_ELEMENTWISE = {ReLU: "Relu", Tanh: "Tanh", Sigmoid: "Sigmoid"}
_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


class _Graph:
    """Nodes and initializers under unique names; ``op`` returns its outputs' names."""

    def __init__(self, dtype: str, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.np_dtype = np.dtype(dtype)
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, hint: str = "const", dtype: Any = None) -> str:
        """An initializer holding ``value`` (in the model's float dtype unless ``dtype``)."""
        array = np.asarray(value, dtype=self.np_dtype if dtype is None else dtype)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values: list[int], hint: str = "ints") -> str:
        return self.const(values, hint, dtype=np.int64)

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes: Any
           ) -> Any:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attributes))
        return names[0] if outputs == 1 else names


def _host(array: Any) -> np.ndarray:
    return np.asarray(to_numpy(array))


def _reorder(weight: np.ndarray, gates: list[int]) -> np.ndarray:
    """PyTorch's gate blocks (G*H, ...) in ONNX's order."""
    blocks = weight.reshape(len(gates), -1, *weight.shape[1:])
    return blocks[gates].reshape(weight.shape)


def _check_recurrent(layer: RecurrentBase) -> None:
    if isinstance(layer, LSTM) and layer.proj_size:
        raise ValueError(f"ONNX's LSTM has no projection: cannot export an LSTM with proj_size="
                         f"{layer.proj_size} (expected proj_size=0)")
    if type(layer) not in _GATES:
        raise TypeError(f"cannot export {type(layer).__name__}: expected RNN, LSTM or GRU")
    _check_inference_cell(layer, f"ONNX's {type(layer).__name__}")


def _check_inference_cell(layer: RecurrentBase, target: str) -> None:
    """Refuse options that change the inference-time cell (recurrent and weight dropout act
    in training only, so they are dropped, as inter-layer dropout is)."""
    if getattr(layer, "zoneout", 0.0):
        raise ValueError(f"zoneout={layer.zoneout} mixes the previous state into every step at "
                         f"inference too; {target} has no such option (expected zoneout=0)")
    if getattr(layer, "layer_norm", False):
        raise ValueError(f"layer_norm=True normalises the gates; {target} has no such option "
                         "(expected layer_norm=False)")


def _recurrent(g: _Graph, layer: RecurrentBase, x: str, lengths: str | None,
               states: tuple[str, ...] | None) -> tuple[str, list[str]]:
    """``layer`` over ``x`` (its layout): ``(output, [h_n] or [h_n, c_n])``."""
    _check_recurrent(layer)
    gates, hidden, directions = _GATES[type(layer)], layer.hidden_size, layer.num_directions
    params = {name: _host(array) for name, array in layer.state_dict().items()}
    suffixes = ["", "_reverse"][:directions]
    if layer.batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    attributes: dict[str, Any] = dict(hidden_size=hidden, direction="bidirectional"
                                      if directions == 2 else "forward")
    if isinstance(layer, RNN):
        attributes["activations"] = [_ACTIVATIONS[layer.nonlinearity]] * directions
        if layer.nonlinearity == "identity":
            attributes["activation_alpha"] = [1.0] * directions
            attributes["activation_beta"] = [0.0] * directions
    if isinstance(layer, GRU):
        attributes["linear_before_reset"] = 1
    finals: list[list[str]] = []
    for k in range(layer.num_layers):
        def stacked(kind: str) -> str:
            return g.const(np.stack([_reorder(params[f"{kind}_l{k}{s}"], gates)
                                     for s in suffixes]), f"{kind}_l{k}")
        inputs = [x, stacked("weight_ih"), stacked("weight_hh")]
        if layer.bias:
            inputs.append(g.const(np.stack([np.concatenate(
                [_reorder(params[f"bias_ih_l{k}{s}"], gates),
                 _reorder(params[f"bias_hh_l{k}{s}"], gates)]) for s in suffixes]), f"bias_l{k}"))
        else:
            inputs.append("")
        inputs.append(lengths or "")
        if states is not None:
            rows = [g.ints([k * directions]), g.ints([(k + 1) * directions]), g.ints([0])]
            inputs += [g.op("Slice", [state, *rows]) for state in states]
        while inputs[-1] == "":
            inputs.pop()
        outputs = g.op(type(layer).__name__, inputs, outputs=3 if isinstance(layer, LSTM) else 2,
                       **attributes)
        finals.append(outputs[1:])
        y = g.op("Transpose", [outputs[0]], perm=[0, 2, 1, 3])  # (T, B, D, H)
        x = g.op("Reshape", [y, g.ints([0, 0, -1])])                  # (T, B, D*H)
    if layer.batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    stacked_finals = [per_layer[0] if layer.num_layers == 1 else
                      g.op("Concat", list(per_layer), axis=0) for per_layer in zip(*finals)]
    return x, stacked_finals


def _time_major(g: _Graph, layer: Module, x: str) -> str:
    return g.op("Transpose", [x], perm=[1, 0, 2]) if layer.batch_first else x


def _lengths_or_all(g: _Graph, x3: str, lengths: str | None) -> str:
    """The lengths (B,) int64, or T for every sequence; ``x3`` is time-major."""
    if lengths is not None:
        return lengths
    shape = g.op("Shape", [x3])
    return g.op("Expand", [g.op("Gather", [shape, g.ints([0])], axis=0),
                           g.op("Gather", [shape, g.ints([1])], axis=0)])


def _last_step(g: _Graph, layer: LastStep, x: str, lengths: str | None, features: int) -> str:
    """Row ``(lengths[b] - 1) * B + b`` of the time-major (T*B, F) table, and row ``b`` for
    the reverse half after a bidirectional layer, as :class:`xrnn.LastStep`."""
    x3 = _time_major(g, layer, x)
    table = g.op("Flatten", [x3], axis=2)
    batch = g.op("Gather", [g.op("Shape", [x3]), g.ints([1])], axis=0)
    sequence = g.op("Range", [g.ints(0), g.op("Squeeze", [batch, g.ints([0])]), g.ints(1)])
    last = g.op("Sub", [_lengths_or_all(g, x3, lengths), g.ints(1)])
    out = g.op("Gather", [table, g.op("Add", [g.op("Mul", [last, batch]), sequence])], axis=0)
    if not layer.bidirectional:
        return out
    first = g.op("Gather", [table, sequence], axis=0)
    half = features // 2
    return g.op("Concat", [g.op("Slice", [out, g.ints([0]), g.ints([half]), g.ints([1])]),
                           g.op("Slice", [first, g.ints([half]), g.ints([features]),
                                          g.ints([1])])], axis=1)


def _pool(g: _Graph, layer: MeanOverTime | MaxOverTime, x: str, lengths: str | None) -> str:
    """The mean or maximum over each sequence's valid steps (T, B, F) -> (B, F)."""
    x3 = _time_major(g, layer, x)
    counts = _lengths_or_all(g, x3, lengths)
    steps = g.op("Range", [g.ints(0), g.op("Squeeze", [
        g.op("Gather", [g.op("Shape", [x3]), g.ints([0])], axis=0), g.ints([0])]), g.ints(1)])
    valid = g.op("Unsqueeze", [g.op("Less", [g.op("Unsqueeze", [steps, g.ints([1])]), counts]),
                               g.ints([2])])                                      # (T, B, 1)
    if isinstance(layer, MeanOverTime):
        total = g.op("ReduceSum", [g.op("Where", [valid, x3, g.const(0.0)]), g.ints([0])],
                     keepdims=0)
        return g.op("Div", [total, g.op("Unsqueeze", [g.op("Cast", [counts], to=_DTYPES[
            g.np_dtype.name]), g.ints([1])])])
    masked = g.op("Where", [valid, x3, g.const(-np.inf)])
    if g.opset >= 18:  # axes became an input
        return g.op("ReduceMax", [masked, g.ints([0])], keepdims=0)
    return g.op("ReduceMax", [masked], axes=[0], keepdims=0)


def _layers(model: Module) -> list[Module]:
    return list(model) if isinstance(model, Sequential) else [model]


def _input_spec(model: Module) -> tuple[int, list[str | int]]:
    """The graph input's element type and shape from the first layer."""
    layers = _layers(model)
    batch_first = next((bool(layer.batch_first) for layer in layers
                        if getattr(layer, "batch_first", None) is not None), False)
    axes: list[str | int] = ["B", "T"] if batch_first else ["T", "B"]
    first = layers[0]
    if isinstance(first, Embedding):
        return TensorProto.INT64, axes
    if isinstance(first, RecurrentBase):
        return _DTYPES[first.dtype], axes + [first.input_size]
    if isinstance(first, Linear):
        return _DTYPES[first.dtype], axes + [first.in_features]
    raise TypeError(f"cannot export a model that starts with {type(first).__name__}: the "
                    "first layer must be RNN, LSTM, GRU, Linear or Embedding (it gives the "
                    "input's features)")


def _output_shape(model: Module, input_shape: list[str | int]) -> list[str | int]:
    """``model.output_shape`` with the named axes carried through as markers."""
    markers = {"T": 1_000_003, "B": 1_000_033}
    given = tuple(markers.get(axis, axis) for axis in input_shape)
    names = {value: name for name, value in markers.items()}
    return [names.get(size, size) for size in model.output_shape(given)]


def _dtype_of(model: Module) -> str:
    dtypes = {str(_host(p.data).dtype) for p in model.parameters()}
    if len(dtypes) != 1 or not dtypes <= set(_DTYPES):
        raise TypeError(f"ONNX export needs one float32 or float64 dtype for every parameter, "
                        f"got {sorted(dtypes)}")
    return dtypes.pop()


def to_onnx(model: Module, *, opset: int | None = None, lengths: bool = False,
            initial_states: bool = False) -> onnx.ModelProto:
    """The ONNX model of ``model`` (not saved); arguments as :func:`export`."""
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an integer in [{MIN_OPSET}, {newest}] (this onnx "
                         f"package's newest), got {opset!r}")
    recurrent_model = isinstance(model, RecurrentBase)
    if initial_states and not recurrent_model:
        raise ValueError("initial_states=True needs a bare RNN, LSTM or GRU (a Sequential "
                         f"starts from zero states), got {type(model).__name__}")
    g = _Graph(_dtype_of(model), opset)
    element, shape = _input_spec(model)
    inputs = [helper.make_tensor_value_info("input", element, shape)]
    lengths32 = None
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"]))
        lengths32 = g.op("Cast", ["lengths"], to=TensorProto.INT32)
    states = None
    if initial_states:
        _check_recurrent(model)
        names = ["h0", "c0"] if isinstance(model, LSTM) else ["h0"]
        layers = model.num_layers * model.num_directions
        inputs += [helper.make_tensor_value_info(name, _DTYPES[g.np_dtype.name],
                                                 [layers, "B", model.hidden_size])
                   for name in names]
        states = tuple(names)
    x, finals, features = "input", [], 0
    for layer in _layers(model):
        if isinstance(layer, RecurrentBase):
            x, finals = _recurrent(g, layer, x, lengths32, states)
            features = layer.num_directions * layer.hidden_size
        elif isinstance(layer, Linear):
            weight = _host(layer.weight.data).T
            x = g.op("MatMul", [x, g.const(weight, "weight")])
            if layer.bias is not None:
                x = g.op("Add", [x, g.const(_host(layer.bias.data), "bias")])
            features = layer.out_features
        elif isinstance(layer, Embedding):
            x = g.op("Gather", [g.const(_host(layer.weight.data), "embedding"), x], axis=0)
            features = layer.embedding_dim
        elif type(layer) in _ELEMENTWISE:
            x = g.op(_ELEMENTWISE[type(layer)], [x])
        elif isinstance(layer, (Identity, Dropout)):
            x = g.op("Identity", [x])
        elif isinstance(layer, LastStep):
            x = _last_step(g, layer, x, "lengths" if lengths else None, features)
        elif isinstance(layer, (MeanOverTime, MaxOverTime)):
            x = _pool(g, layer, x, "lengths" if lengths else None)
        else:
            raise TypeError(f"cannot export {type(layer).__name__}: supported are RNN, LSTM, "
                            "GRU, Linear, Embedding, ReLU, Tanh, Sigmoid, Identity, Dropout, "
                            "LastStep, MeanOverTime, MaxOverTime and a Sequential of them")
    g.nodes.append(helper.make_node("Identity", [x], ["output"]))
    outputs = [helper.make_tensor_value_info("output", _DTYPES[g.np_dtype.name],
                                             _output_shape(model, shape))]
    if recurrent_model:
        for name, final in zip(["h_n", "c_n"], finals):
            g.nodes.append(helper.make_node("Identity", [final], [name]))
            outputs.append(helper.make_tensor_value_info(
                name, _DTYPES[g.np_dtype.name],
                [model.num_layers * model.num_directions, "B", model.hidden_size]))
    graph = helper.make_graph(g.nodes, f"xrnn_{type(model).__name__}", inputs, outputs,
                              g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="xrnn")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: Module, path: str | os.PathLike, *, opset: int | None = None,
           lengths: bool = False, initial_states: bool = False) -> onnx.ModelProto:
    """Write ``model`` to ``path`` as an ONNX model for inference, and return it.

    Args:
        model: a supported module (see the module docstring), on any backend.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset, in [13, the onnx package's newest]; 17 when None.
        lengths: add the graph input ``lengths`` (B,) int64 for padded batches.
        initial_states: add ``h0`` (and ``c0``) inputs; a bare RNN, LSTM or GRU only.

    Raises ``ValueError`` / ``TypeError`` naming what cannot be exported (an LSTM with
    ``proj_size``, an unsupported layer or dtype). The model passes ``onnx.checker``.
    """
    proto = to_onnx(model, opset=opset, lengths=lengths, initial_states=initial_states)
    onnx.save(proto, os.fspath(path))
    return proto

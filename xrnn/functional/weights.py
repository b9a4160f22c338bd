"""Names, order and shape checks of the recurrent weights, shared by every cell type.

The flat order is PyTorch's ``_flat_weights``: layer-major, direction-minor, and
inside each group ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]``
(``weight_hr`` only for an LSTM with ``proj_size > 0``), then, for a LayerNorm cell,
``ln_weight_{n}, ln_bias_{n}`` for each of its norms n (``ih``, ``hh``, and ``c`` for
the LSTM).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple


class LayerWeights(NamedTuple):
    """The weights of one layer and direction (``None`` where absent)."""

    w_ih: Any  # (G*H, H_in) for layer 0, (G*H, D*H_out) above
    w_hh: Any  # (G*H, H_out)
    b_ih: Any = None  # (G*H,)
    b_hh: Any = None  # (G*H,)
    w_hr: Any = None  # (P, H): LSTM projection; H_out = P when present, else H
    ln: tuple[Any, ...] | None = None  # LayerNorm cells: (weight, bias) per norm, flat

    def flat(self) -> list[Any]:
        """The arrays present, in PyTorch's flat order (then the LayerNorm ones)."""
        return [a for a in (*self[:5], *(self.ln or ())) if a is not None]


def group_names(layer: int, direction: int, bias: bool, proj: bool = False,
                norms: tuple[str, ...] = ()) -> list[str]:
    """PyTorch's parameter names of one layer and direction, in flat order, then those
    of the LayerNorms ``norms``."""
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    kinds = (["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
             + (["weight_hr"] if proj else [])
             + [f"ln_{kind}_{n}" for n in norms for kind in ("weight", "bias")])
    return [kind + suffix for kind in kinds]


def parameter_names(num_layers: int, bidirectional: bool, bias: bool,
                    proj_size: int = 0, norms: tuple[str, ...] = ()) -> list[str]:
    """All parameter names of a recurrent layer, in PyTorch's flat order."""
    return [name for layer in range(num_layers) for direction in range(2 if bidirectional else 1)
            for name in group_names(layer, direction, bias, proj_size > 0, norms)]


def parameter_shapes(input_size: int, hidden_size: int, gates: int, num_layers: int,
                     bidirectional: bool, bias: bool, proj_size: int = 0,
                     norms: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in flat order."""
    return dict(iter_parameter_shapes(input_size, hidden_size, gates, num_layers,
                                      bidirectional, bias, proj_size, norms))


def iter_parameter_shapes(input_size: int, hidden_size: int, gates: int, num_layers: int,
                          bidirectional: bool, bias: bool, proj_size: int = 0,
                          norms: tuple[str, ...] = ()
                          ) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every parameter in flat order, one at a time: a caller
    creating them under a budget (``xrnn.load``) stops at once on a huge ``num_layers``."""
    d = 2 if bidirectional else 1
    out = proj_size or hidden_size
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else d * out
        for direction in range(d):
            kinds = {"weight_ih": (gates * hidden_size, layer_in),
                     "weight_hh": (gates * hidden_size, out),
                     "bias_ih": (gates * hidden_size,), "bias_hh": (gates * hidden_size,),
                     "weight_hr": (proj_size, hidden_size)}
            for n in norms:  # LayerNorm over the gates (ih, hh) or the cell state (c)
                kinds[f"ln_weight_{n}"] = kinds[f"ln_bias_{n}"] = (
                    (hidden_size,) if n == "c" else (gates * hidden_size,))
            for name in group_names(layer, direction, bias, proj_size > 0, norms):
                yield name, kinds[name[:name.index("_l")]]


def _likely_hidden_size(w_ih: Any, w_hh: Any, gates: int, proj: bool) -> int:
    """H as most of layer 0's weight dimensions say it is, so that the error names the
    one weight whose shape is off rather than the ones that agree with each other."""
    votes = [w_hh.shape[0] // gates, w_ih.shape[0] // gates] + ([] if proj else [w_hh.shape[-1]])
    if votes.count(votes[0]) == len(votes):  # (the usual case, without a Counter's cost)
        return votes[0]
    return Counter(votes).most_common(1)[0][0]


# Made once per configuration: every forward groups its weights (NOTES.md, issue 13).
_names = functools.lru_cache(maxsize=64)(
    lambda *config: tuple(parameter_names(*config)))
_shapes = functools.lru_cache(maxsize=64)(  # the shapes in flat order
    lambda *config: tuple(parameter_shapes(*config).values()))


@functools.lru_cache(maxsize=64)
def _layout(names: tuple[str, ...], groups: int) -> tuple[tuple[dict[str, int], tuple[int, ...]],
                                                          ...]:
    """Per layer and direction: {LayerWeights field: flat index} and the flat indices of
    its LayerNorm arrays."""
    per_group = len(names) // groups
    layout = []
    for start in range(0, len(names), per_group):
        members = range(start, start + per_group)
        layout.append(({_FIELDS[names[i][:names[i].index("_l")]]: i for i in members
                        if not names[i].startswith("ln_")},
                       tuple(i for i in members if names[i].startswith("ln_"))))
    return tuple(layout)


def group_weights(weights: Sequence[Any] | Mapping[str, Any], *, gates: int, num_layers: int,
                  bidirectional: bool, bias: bool, proj_size: int = 0,
                  norms: tuple[str, ...] = ()) -> list[LayerWeights]:
    """Split ``weights`` (flat sequence in PyTorch order, or a name -> array mapping)
    into one :class:`LayerWeights` per layer and direction, checking count and shapes."""
    norms = tuple(norms)
    names = _names(num_layers, bidirectional, bias, proj_size, norms)

    def config() -> str:
        return (f"num_layers={num_layers}, bidirectional={bidirectional}, bias={bias}"
                + (f", proj_size={proj_size}" if proj_size else "")
                + (", layer_norm=True" if norms else ""))

    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        unexpected = [k for k in weights if k not in names]
        if missing or unexpected:
            raise ValueError(f"weights mapping does not fit {config()}: missing {missing}, "
                             f"unexpected {unexpected}")
        flat = [weights[n] for n in names]
    else:
        flat = list(weights)
        if len(flat) != len(names):
            raise ValueError(f"expected {len(names)} weight arrays ({', '.join(names)}) for "
                             f"{config()}; got {len(flat)}")
    hidden_size = _likely_hidden_size(flat[0], flat[1], gates, proj_size > 0)
    input_size = flat[0].shape[-1] if len(flat[0].shape) == 2 else -1
    expected = _shapes(input_size, hidden_size, gates, num_layers, bidirectional, bias,
                       proj_size, norms)
    shapes = [tuple(array.shape) for array in flat]
    if shapes != list(expected):
        name, shape, want = next(item for item in zip(names, shapes, expected)
                                 if item[1] != item[2])
        raise ValueError(f"weight {name} has shape {shape}; expected {want} (gates={gates}, "
                         f"hidden_size={hidden_size}, input_size={input_size})")
    layout = _layout(names, num_layers * (2 if bidirectional else 1))
    return [LayerWeights(**{field: flat[i] for field, i in fields.items()},
                         ln=tuple(flat[i] for i in ln) or None) for fields, ln in layout]


_FIELDS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh",
           "weight_hr": "w_hr"}

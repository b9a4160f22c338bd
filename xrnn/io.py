"""Saving and loading models, and moving weights between xrnn and PyTorch."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import nn
from .backend import asarray, to_numpy

FORMAT = "xrnn-npz"
VERSION = 1
_META = "__xrnn__"
_MODULES = {name: getattr(nn, name) for name in nn.__all__
            if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), nn.Module)
            and name not in ("Module", "RecurrentBase")}


def torch_state_dict(module_or_state: Any) -> dict[str, Any]:
    """A ``state_dict`` of torch tensors (CPU copies) that ``torch.nn.Module.load_state_dict``
    accepts, from an xrnn module or a name -> array mapping of any backend."""
    import torch

    state = module_or_state if isinstance(module_or_state, Mapping) else module_or_state.state_dict()
    return {name: torch.from_numpy(to_numpy(value).copy()) for name, value in state.items()}


def _describe(module: nn.Module) -> dict[str, Any]:
    return {"class": type(module).__name__, "config": module.config()}


def _build(description: dict[str, Any]) -> nn.Module:
    name, config = description["class"], dict(description["config"])
    if name not in _MODULES:
        raise ValueError(f"unknown module class {name!r}; expected one of {sorted(_MODULES)}")
    if name == "Sequential":
        return nn.Sequential(*(_build(layer) for layer in config["layers"]))
    return _MODULES[name](**config)


def save(model_or_state: nn.Module | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a model (architecture and weights) or a name -> array mapping to ``path``.

    The file is a NumPy ``.npz`` archive without pickled objects: one array per
    parameter, under PyTorch's names, and a JSON description of the architecture.
    Arrays come to the host exactly, so a file written on any backend loads bit for
    bit on any other. The file is written whole or not at all.
    """
    if isinstance(model_or_state, nn.Module):
        meta = {"format": FORMAT, "version": VERSION, "model": _describe(model_or_state)}
        state = model_or_state.state_dict()
    elif isinstance(model_or_state, Mapping):
        meta = {"format": FORMAT, "version": VERSION, "model": None}
        state = model_or_state
    else:
        raise TypeError(f"save takes an xrnn Module or a mapping of arrays, got "
                        f"{type(model_or_state).__name__}")
    if _META in state:
        raise ValueError(f"{_META!r} is reserved and cannot be a parameter name")
    arrays = {name: np.asarray(to_numpy(value)) for name, value in state.items()}
    arrays[_META] = np.array(json.dumps(meta))
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load(path: str | os.PathLike) -> nn.Module | dict[str, Any]:
    """Read a file written by :func:`save` onto the selected backend.

    Returns the rebuilt model, or the name -> array mapping for a saved mapping.
    A file that is not an xrnn file, is truncated or corrupt, or whose weights do not
    fit its architecture raises ``ValueError``; no half-loaded model is returned.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a readable xrnn file: {exc}") from exc
    try:
        meta = json.loads(str(arrays.pop(_META)))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise ValueError(f"version {meta.get('version')!r}, expected {VERSION}")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not an xrnn file: {exc}") from exc
    if meta["model"] is None:
        return {name: asarray(array) for name, array in arrays.items()}
    try:
        model = _build(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)!r} describes a model xrnn cannot build: {exc}") from exc
    model.load_state_dict(arrays)  # strict: checks names and shapes before writing
    return model

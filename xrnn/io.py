"""Saving and loading models, and moving weights between xrnn and PyTorch.

A model file is untrusted input. :func:`load` reads the archive's directory, every
array's ``.npy`` header (shape and dtype, without the data) and the JSON description of
the architecture, builds the described model as shape-only placeholders
(:func:`xrnn.nn.init.shape_only`) under a budget set by what the headers declare, checks
that names, shapes and dtypes agree exactly, and only then reads the data, into arrays
of exactly the declared sizes, which become the parameters (no random initialisation is
drawn). Every refusal is a ``ValueError`` that names the file.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import reprlib
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from . import nn
from .backend import asarray, to_numpy
from .nn import init

FORMAT = "xrnn-npz"
VERSION = 1
_META = "__xrnn__"
_MODULES = {name: getattr(nn, name) for name in nn.__all__
            if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), nn.Module)
            and name not in ("Module", "RecurrentBase")}
#: The longest architecture description (JSON characters) and its deepest nesting.
MAX_JSON_CHARS = 1 << 20
MAX_JSON_DEPTH = 64
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand a stream by more than this
_CHUNK = 1 << 20  # bytes decompressed at a time
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, zipfile.BadZipFile, zlib.error)
# What a constructor (ours or a custom module's) raises for a configuration it refuses.
_BUILD_ERRORS = (TypeError, ValueError, LookupError, ArithmeticError, AttributeError)


def torch_state_dict(module_or_state: Any) -> dict[str, Any]:
    """A ``state_dict`` of torch tensors (CPU copies) that ``torch.nn.Module.load_state_dict``
    accepts, from an xrnn module or a name -> array mapping of any backend."""
    import torch

    if getattr(module_or_state, "layer_norm", False):
        raise ValueError(f"{type(module_or_state).__name__} with layer_norm=True has LayerNorm "
                         "parameters (ln_*) that no torch.nn recurrent module holds; a torch "
                         "state_dict needs layer_norm=False")
    state = module_or_state if isinstance(module_or_state, Mapping) else module_or_state.state_dict()
    return {name: torch.from_numpy(to_numpy(value).copy()) for name, value in state.items()}


def from_keras(layer_or_model: Any) -> nn.Module:
    """An xrnn module with a built Keras 3 layer's or ``keras.Sequential``'s weights and
    output; see :func:`xrnn.keras.from_keras` (needs ``xrnn[keras]``; set
    ``KERAS_BACKEND`` before keras is imported)."""
    from . import keras as xrnn_keras

    return xrnn_keras.from_keras(layer_or_model)


def to_keras(model: nn.Module) -> Any:
    """A built Keras 3 layer or ``keras.Sequential`` with ``model``'s weights and output;
    see :func:`xrnn.keras.to_keras`."""
    from . import keras as xrnn_keras

    return xrnn_keras.to_keras(model)


def _describe(module: nn.Module) -> dict[str, Any]:
    return {"class": type(module).__name__, "config": module.config()}


def describe(module: nn.Module) -> dict[str, Any]:
    """The architecture as :func:`save` writes it: ``{"class": ..., "config": ...}``."""
    return json.loads(json.dumps(_describe(module), allow_nan=False))


def build(description: Mapping[str, Any], *,
          custom_modules: Mapping[str, type[nn.Module]] | None = None) -> nn.Module:
    """A new module (fresh weights, on the selected backend) from :func:`describe`'s
    output, with :func:`load`'s rules: xrnn's classes or ``custom_modules``, every
    option one the class saves and reads back unchanged; nothing is imported by name."""
    return _build(dict(description), _registry(custom_modules), "model", 1 << 62)


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
    text = json.dumps(meta, allow_nan=False)  # what load accepts, so that it loads back
    _check_json(json.loads(text), "the description")
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"the model's description is {len(text)} JSON characters; load "
                         f"accepts at most {MAX_JSON_CHARS}")
    arrays = {name: np.asarray(to_numpy(value)) for name, value in state.items()}
    arrays[_META] = np.array(text)
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load(path: str | os.PathLike, *,
         custom_modules: Mapping[str, type[nn.Module]] | None = None
         ) -> nn.Module | dict[str, Any]:
    """Read a file written by :func:`save` onto the selected backend.

    Returns the rebuilt model, or the name -> array mapping for a saved mapping.
    Module classes named in the file are xrnn's own or those in ``custom_modules``
    (class name -> ``Module`` subclass, built with ``cls.from_config(config)``); nothing
    is imported by name. The file is checked before anything it sizes is allocated (see
    the module docstring); a file that is not an xrnn file, is truncated or corrupt,
    describes an invalid model, or whose arrays do not fit it raises ``ValueError``
    naming the file, the field and what was expected. No half-loaded model is returned.
    """
    modules = _registry(custom_modules)
    where = repr(os.fspath(path))
    unreadable, foreign = f"{where} is not a readable xrnn file", f"{where} is not an xrnn file"
    with _refusing(unreadable):
        size = os.path.getsize(path)
        archive = zipfile.ZipFile(path)
    with archive:
        with _refusing(unreadable):
            members = _index(archive, size)
        with _refusing(foreign):
            text_member = _meta_member(members)
        with _refusing(unreadable):
            text = str(_read_array(archive, text_member)[()])
        with _refusing(foreign):
            meta = _parse_meta(text)
        if meta["model"] is None:
            with _refusing(unreadable):
                state = {name: _read_array(archive, m) for name, m in members.items()}
            return {name: asarray(array) for name, array in state.items()}
        # Placeholders cost no data, so the budget has room for a model that differs from
        # the file a little (reported below, by name); it stops a huge one at once.
        arrays, elements = len(members), sum(math.prod(m.shape) for m in members.values())
        with _refusing(f"{where} describes a model xrnn cannot build", _BUILD_ERRORS):
            with init.shape_only(2 * arrays + 16, 2 * elements + (1 << 16),
                                 f"set by the file's {arrays} arrays of {elements} elements"):
                model = _build(meta["model"], modules, "model", arrays)
        parameters = dict(model.named_parameters(remove_duplicate=False))  # tied: every name
        _check_fit(parameters, members, where)
        with _refusing(unreadable):
            loaded = {name: _read_array(archive, members[name]) for name in parameters}
    shape_only = [name for name, p in parameters.items() if isinstance(p.data, init.ShapeOnly)]
    for name in shape_only:
        parameters[name].data = asarray(loaded[name])
    # parameters that a custom module created without xrnn.nn.init: cast into their dtype
    model.load_state_dict({k: v for k, v in loaded.items() if k not in shape_only}, strict=False)
    return model


@contextmanager
def _refusing(message: str, errors: tuple[type[BaseException], ...] = _READ_ERRORS
              ) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``ValueError(f"{message}: ...")``."""
    try:
        yield
    except errors as exc:
        raise ValueError(f"{message}: {exc}") from exc


# -- the archive -----------------------------------------------------------------------

class _Member(NamedTuple):
    """One ``.npy`` member, as its zip entry and header declare it."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # where the data starts in the uncompressed member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _index(archive: zipfile.ZipFile, size: int) -> dict[str, _Member]:
    """Every member's header, checked against its zip entry, in archive order; reads no
    data. The entries' compressed sizes must fit in the file without overlapping, and no
    entry may declare more than its compressed bytes can expand to."""
    infos = archive.infolist()
    if sum(info.compress_size for info in infos) > size:
        raise ValueError(f"its entries' compressed sizes add up to more than the file's "
                         f"{size} bytes (overlapping entries)")
    members: dict[str, _Member] = {}
    for info in infos:
        label = repr(info.filename)
        if not info.filename.endswith(".npy"):
            raise ValueError(f"entry {label} is not a .npy array")
        if info.filename[:-4] in members:
            raise ValueError(f"entry {label} appears twice")
        if info.flag_bits & 0x1:
            raise ValueError(f"entry {label} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise ValueError(f"stored entry {label} declares {info.file_size} bytes but "
                                 f"occupies {info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 64:
                raise ValueError(f"deflated entry {label} declares {info.file_size} bytes, "
                                 f"more than its {info.compress_size} compressed bytes can "
                                 "hold")
        else:
            raise ValueError(f"entry {label} uses compression method {info.compress_type}; "
                             "expected stored (0) or deflated (8)")
        members[info.filename[:-4]] = _header(archive, info)
    return members


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    """The member's ``.npy`` header (bounded, decompressing only its first bytes),
    checked against the entry's declared size."""
    label = repr(info.filename)
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        readers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"entry {label} is .npy format {version}; expected 1.0 or 2.0")
        try:
            shape, fortran_order, dtype = readers[version](stream)
        except (zipfile.BadZipFile, zlib.error, OSError):
            raise
        except Exception as exc:  # a parser of untrusted text (ast, tokenize, np.dtype)
            raise ValueError(f"entry {label} has an unreadable .npy header: "
                             f"{type(exc).__name__}: {exc}") from exc
        offset = stream.tell()
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"entry {label} declares shape {shape}")
    if dtype.hasobject:
        raise ValueError(f"entry {label} holds Python objects (dtype {dtype}), which would "
                         "need pickle; xrnn never unpickles")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufcU":
        raise ValueError(f"entry {label} has dtype {dtype}; expected a numeric dtype")
    member = _Member(info, tuple(shape), dtype, bool(fortran_order), offset)
    if info.file_size != offset + member.nbytes:
        raise ValueError(f"entry {label}: its header declares shape {member.shape} of "
                         f"{dtype} ({member.nbytes} bytes of data), but the entry holds "
                         f"{info.file_size - offset}")
    return member


def _read_array(archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """The member's data as a native-byte-order NumPy array of its declared shape,
    decompressed a chunk at a time into an array of exactly the declared size."""
    flat = np.empty(member.nbytes, dtype=np.uint8)
    label = repr(member.info.filename)
    with archive.open(member.info) as stream:
        if len(stream.read(member.data_offset)) != member.data_offset:
            raise ValueError(f"entry {label} ends inside its header")
        position = 0
        while position < member.nbytes:
            chunk = stream.read(min(_CHUNK, member.nbytes - position))
            if not chunk:
                raise ValueError(f"entry {label} ends after {position} of its "
                                 f"{member.nbytes} bytes")
            flat[position:position + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            position += len(chunk)
        if stream.read(1):
            raise ValueError(f"entry {label} holds more bytes than its header declares")
    array = flat.view(member.dtype)
    if member.fortran_order:
        array = array.reshape(member.shape[::-1]).transpose()
    else:
        array = array.reshape(member.shape)
    return array if member.dtype.isnative else array.astype(member.dtype.newbyteorder("="))


# -- the description ---------------------------------------------------------------------

def _meta_member(members: dict[str, _Member]) -> _Member:
    """Remove and return the description's entry: a unicode scalar of bounded length;
    every other entry must hold numbers."""
    member = members.pop(_META, None)
    if member is None:
        raise ValueError(f"it has no {_META!r} entry")
    if member.dtype.kind != "U" or member.shape != ():
        raise ValueError(f"{_META!r} is {member.dtype} of shape {member.shape}; expected "
                         "a unicode scalar")
    if member.dtype.itemsize > 4 * MAX_JSON_CHARS:
        raise ValueError(f"{_META!r} holds {member.dtype.itemsize // 4} characters; "
                         f"expected at most {MAX_JSON_CHARS}")
    for name, other in members.items():
        if other.dtype.kind == "U":
            raise ValueError(f"entry {name!r} holds text ({other.dtype}); expected numbers")
    return member


def _parse_meta(text: str) -> dict[str, Any]:
    """The JSON description: plain JSON values only, nesting bounded, and the format
    and version this code writes."""
    try:
        meta = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError(f"{_META!r} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_json(meta, _META)
    if not isinstance(meta, dict) or set(meta) != {"format", "version", "model"}:
        shown = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{_META!r} has {shown}; expected an object with exactly 'format', "
                         "'version' and 'model'")
    if meta["format"] != FORMAT:
        raise ValueError(f"format is {reprlib.repr(meta['format'])}, expected {FORMAT!r}")
    if meta["version"] != VERSION or type(meta["version"]) is not int:
        raise ValueError(f"version {reprlib.repr(meta['version'])}, expected {VERSION}")
    return meta


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the JSON constant {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError(f"a JSON object repeats a key: {[key for key, _ in pairs]}")
    return result


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """``ValueError`` unless ``value`` is plain JSON (objects with string keys, lists,
    strings, finite numbers, booleans, null) at most ``MAX_JSON_DEPTH`` levels deep."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the non-string key {key!r}")
            _check_json(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; expected a finite number")
    elif not (value is None or isinstance(value, (str, int, float))):
        raise ValueError(f"{where} is a {type(value).__name__}; expected a JSON value")


# -- the model ---------------------------------------------------------------------------

def _registry(custom_modules: Mapping[str, type[nn.Module]] | None) -> dict[str, type[nn.Module]]:
    """xrnn's module classes, then ``custom_modules``, by name."""
    if custom_modules is None:
        return _MODULES
    if not isinstance(custom_modules, Mapping):
        raise TypeError(f"custom_modules must map class names to xrnn Module subclasses, "
                        f"got {type(custom_modules).__name__}")
    for name, cls in custom_modules.items():
        if not (isinstance(name, str) and isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"custom_modules must map class names to xrnn Module subclasses, "
                            f"got {name!r}: {cls!r}")
        if name in _MODULES and cls is not _MODULES[name]:
            raise ValueError(f"custom_modules[{name!r}] names xrnn's own {name}; a custom "
                             "class needs a name of its own")
    return {**custom_modules, **_MODULES}


def _build(description: Any, modules: Mapping[str, type[nn.Module]], where: str,
           max_arrays: int) -> nn.Module:
    """The module ``description`` (``{"class": ..., "config": ...}``) describes, built
    by its class (inside ``init.shape_only``, so its parameters are placeholders); each
    option in the file must be one the class saves, read back as the same value."""
    if not isinstance(description, dict) or set(description) != {"class", "config"}:
        shown = sorted(description) if isinstance(description, dict) else description
        raise ValueError(f"{where} is {reprlib.repr(shown)}; expected an object with "
                         "exactly 'class' and 'config'")
    name, config = description["class"], description["config"]
    if not isinstance(name, str):
        raise ValueError(f"{where}.class is {reprlib.repr(name)}; expected a class name")
    if not isinstance(config, dict):
        raise ValueError(f"{where}.config is {reprlib.repr(config)}; expected an object")
    if name not in modules:
        shown = reprlib.repr(name)
        python = name if name.isidentifier() and len(name) <= 40 else "YourClass"
        raise ValueError(f"unknown module class {shown} at {where}; expected one of "
                         f"{sorted(_MODULES)}, or a class of your own passed as "
                         f"xrnn.load(..., custom_modules={{{shown}: {python}}})")
    cls = modules[name]
    if cls is nn.Sequential:
        layers = config.get("layers")
        if set(config) != {"layers"} or not isinstance(layers, list):
            raise ValueError(f"{where}.config is {reprlib.repr(config)}; expected "
                             "{'layers': [...]}")
        return nn.Sequential(*(_build(layer, modules, f"{where}.config.layers[{index}]",
                                      max_arrays) for index, layer in enumerate(layers)))
    layers = config.get("num_layers")
    if (name in _MODULES and isinstance(layers, int) and layers > max_arrays):
        # RecurrentBase lists every layer's shapes before it creates a parameter
        raise ValueError(f"{where}.config.num_layers is {layers}, but the file holds only "
                         f"{max_arrays} arrays (at least two per layer)")
    try:
        module = cls.from_config(config)
    except _BUILD_ERRORS as exc:
        options = [f"{key}={reprlib.repr(value)}" for key, value in list(config.items())[:16]]
        raise ValueError(f"{where} ({', '.join([name, *options])}): {exc}") from exc
    saved = module.config()
    for key, value in config.items():
        if key not in saved:
            raise ValueError(f"{where}.config.{key} is not an option {name} saves; expected "
                             f"keys from {sorted(saved)}")
        if not _same(value, saved[key]):
            raise ValueError(f"{where}.config.{key} is {reprlib.repr(value)}, which {name} "
                             f"takes as {reprlib.repr(saved[key])}; expected a value of that "
                             "type")
    return module


def _same(given: Any, saved: Any) -> bool:
    """``given`` (from the file) reads back as ``saved`` (from ``config()``): equal, with
    booleans distinct from numbers and objects compared on the keys the file gives."""
    if isinstance(given, bool) or isinstance(saved, bool):
        return type(given) is type(saved) and given == saved
    if isinstance(given, numbers.Real) and isinstance(saved, numbers.Real):
        return given == saved
    if isinstance(given, list):
        return (isinstance(saved, (list, tuple)) and len(given) == len(saved)
                and all(map(_same, given, saved)))
    if isinstance(given, dict):
        return (isinstance(saved, Mapping) and all(key in saved for key in given)
                and all(_same(value, saved[key]) for key, value in given.items()))
    return type(given) is type(saved) and given == saved


def _check_fit(parameters: Mapping[str, nn.Parameter], members: Mapping[str, _Member],
               where: str) -> None:
    """The file's arrays are the model's parameters: same names, shapes and dtypes."""
    missing = [name for name in parameters if name not in members]
    unexpected = [name for name in members if name not in parameters]
    if missing or unexpected:
        raise ValueError(f"{where}: its arrays do not fit the model it describes: missing "
                         f"keys {missing}, unexpected keys {unexpected}")
    for name, parameter in parameters.items():
        member = members[name]
        if member.shape != tuple(parameter.shape):
            raise ValueError(f"{where}: array {name!r} has shape {member.shape}; the model "
                             f"it describes expects {tuple(parameter.shape)}")
        expected = parameter.data.dtype if isinstance(parameter.data, init.ShapeOnly) else None
        if expected is not None and member.dtype.name != expected:
            raise ValueError(f"{where}: array {name!r} is {member.dtype.name}; the model it "
                             f"describes expects {expected}")

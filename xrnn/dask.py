"""Past one machine: sharded inference and data-parallel training on Dask.

Needs the optional extra ``pip install "xrnn[dask]"`` (``dask[array]`` and
``distributed``); ``import xrnn`` never imports this module.

- :func:`predict` runs a model over a Dask array sharded along the batch and returns
  what ``model(x)`` returns, as lazy Dask arrays chunked like ``x``'s batch.
- :class:`DataParallel` splits each training step's batch over the workers and
  combines their gradients into exactly the single-process step's ``.grad``.

The model travels as its architecture (:func:`xrnn.io.describe`, rebuilt on each
worker with :func:`xrnn.io.build`'s rules, so custom classes come only from
``custom_modules``) plus its weights as NumPy arrays: once per :meth:`DataParallel.step`
(``client.scatter(..., broadcast=True)``), or once in :func:`predict`'s graph. Each
worker thread keeps its rebuilt model, keyed by the architecture, and reloads only the
weights. Workers compute on their own ``XRNN_BACKEND`` (host NumPy data in, NumPy
results out), so the driver's model may live on any backend; chunks must hold NumPy
arrays or arrays of the model's backend. With ``XRNN_BACKEND=cupy`` on the workers the
same code runs on their GPUs; that path is untested (no GPU was at hand).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError
from typing import Any

import array_api_compat
import numpy as np

try:
    import dask
    import dask.array as da
    from distributed import KilledWorker
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise ImportError("xrnn.dask needs Dask: pip install 'xrnn[dask]' (installs dask[array] "
                      f"and distributed); {exc}") from exc

from . import io
from .backend import asarray, backend_of, dtype_name, get_backend, get_namespace, to_numpy
from .nn.module import Module, no_grad
from .optim import Optimizer

__all__ = ["DataParallel", "predict"]

#: What a worker lost in the middle of a step raises on the driver.
_LOST = (CancelledError, KilledWorker, OSError)
_local = threading.local()  # each worker thread's rebuilt models: {architecture key: model}


# -- what travels to the workers ---------------------------------------------------------

def _payload(model: Module, custom_modules: Mapping[str, type[Module]] | None) -> dict[str, Any]:
    """The model as plain data: architecture (JSON text and its hash), weights as NumPy
    arrays, a token naming this set of weights, and every module's training flag."""
    text = json.dumps(io.describe(model), sort_keys=True)
    names = sorted(custom_modules or {})
    key = hashlib.sha256(json.dumps([text, names]).encode()).hexdigest()
    return {"architecture": text, "key": key, "token": uuid.uuid4().hex,
            "custom_modules": dict(custom_modules) if custom_modules else None,
            "state": {name: np.asarray(to_numpy(value))
                      for name, value in model.state_dict().items()},
            "training": [m.training for m in model.modules()]}


def _worker_model(payload: Mapping[str, Any]) -> Module:
    """This thread's model for ``payload``: rebuilt once per architecture on the
    worker's selected backend, its weights reloaded when the token changes."""
    models = _local.__dict__.setdefault("models", {})
    key = (payload["key"], get_backend())
    entry = models.get(key)
    if entry is None:
        model = io.build(json.loads(payload["architecture"]),
                         custom_modules=payload["custom_modules"])
        entry = models[key] = [model, None]
    model = entry[0]
    if entry[1] != payload["token"]:
        model.load_state_dict(payload["state"])
        entry[1] = payload["token"]
    for module, training in zip(model.modules(), payload["training"]):
        module.training = training
    model.release()
    for parameter in model.parameters():
        parameter.grad = None
    return model


def _reseed(model: Module, seeds: Sequence[int]) -> None:
    """Give every NumPy generator of every module (dropout masks) a fresh one seeded by
    ``seeds`` + the module's and the attribute's position: the same masks on any worker."""
    for index, module in enumerate(model.modules()):
        names = sorted(k for k, v in vars(module).items() if isinstance(v, np.random.Generator))
        for position, name in enumerate(names):
            object.__setattr__(module, name,
                               np.random.default_rng([*seeds, index, position]))


def _call(model: Module, x: Any, lengths: Any) -> Any:
    return model(x) if lengths is None else model(x, lengths=lengths)


def _shard_step(payload: Mapping[str, Any], shard: tuple[Any, Any, Any], loss_fn: Any,
                seeds: Sequence[int]) -> tuple[float, int, dict[str, np.ndarray | None]]:
    """On a worker: one shard's ``(x, y, lengths)`` loss, the element count it averages
    over, and every parameter's gradient as a NumPy array (``None`` where the loss does
    not reach it)."""
    x, y, lengths = shard
    model = _worker_model(payload)
    _reseed(model, seeds)
    prediction = _call(model, asarray(x), lengths)
    if model.returns_state:
        prediction = prediction[0]
    target = asarray(y)
    loss = loss_fn(prediction, target)
    model.backward(loss_fn.backward())
    grads = {name: None if p.grad is None else np.asarray(to_numpy(p.grad))
             for name, p in model.named_parameters()}
    return float(to_numpy(loss)), math.prod(target.shape), grads


def _predict_block(payload: Mapping[str, Any], x: Any, lengths: Any,
                   seeds: Sequence[int]) -> tuple[np.ndarray, ...]:
    """On a worker: ``model(x)``'s arrays for one batch block, flattened, as NumPy."""
    model = _worker_model(payload)
    _reseed(model, seeds)
    with no_grad():
        result = _call(model, asarray(x), lengths)
    return tuple(np.asarray(to_numpy(leaf)) for leaf in _flatten(result))


# -- checks and layout on the driver ------------------------------------------------------

def _flatten(tree: Any) -> list[Any]:
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _flatten(item)]
    return [tree]


def _unflatten(tree: Any, leaves: Any) -> Any:
    if isinstance(tree, (tuple, list)):
        return tuple(_unflatten(item, leaves) for item in tree)
    return next(leaves)


def _model_backend(model: Module) -> str:
    first = next(model.parameters(), None)
    return get_backend() if first is None else backend_of(first.data)


def _check_backend(model: Module, array: Any, name: str) -> None:
    """``TypeError`` unless ``array`` (or a Dask array's chunks) is NumPy or on the
    model's backend."""
    sample = array._meta if isinstance(array, da.Array) else array
    try:
        found = backend_of(sample)
    except TypeError:
        found = type(sample).__name__
    expected = _model_backend(model)
    if found not in ("numpy", expected):
        what = f"{name}'s chunks are" if isinstance(array, da.Array) else f"{name} is"
        raise TypeError(f"{what} {found} arrays but the model is on {expected}; expected "
                        f"NumPy or {expected} chunks (each worker moves them to its own "
                        "XRNN_BACKEND)")


def _batch_axis(model: Module, ndim: int) -> int:
    """The batch axis of the model's input: 0 with ``batch_first``, else 1 ((T, B, F),
    or (T, B) token ids)."""
    if ndim not in (2, 3):
        raise ValueError(f"expected x of shape (T, B, F), (B, T, F) with batch_first, or "
                         f"(T, B) / (B, T) token ids; got {ndim} dimensions")
    recurrent = next((m for m in model.modules() if m.returns_state), None)
    return 0 if recurrent is not None and recurrent.batch_first else 1


def _probe(model: Module, shape: tuple[int, ...], dtype: Any, axis: int
           ) -> tuple[Any, list[tuple[tuple[int, ...], Any, int]]]:
    """``model(x)``'s structure and, per array, (shape at this batch size, NumPy dtype,
    batch axis), from two tiny forwards (batch 2 and 3) of zeros on the driver, in eval
    mode under ``no_grad`` (the model's modes and generators are left as they were)."""
    flags = [m.training for m in model.modules()]
    first = next(model.parameters(), None)
    xp = get_namespace() if first is None else get_namespace(first.data)
    outs = []
    try:
        model.eval()
        with no_grad():
            for size in (2, 3):
                probe_shape = tuple(size if i == axis else n for i, n in enumerate(shape))
                zeros = np.zeros(probe_shape, dtype=dtype_name(dtype, xp) or dtype)
                outs.append(model(xp.asarray(zeros)))
    finally:
        for module, training in zip(model.modules(), flags):
            module.training = training
    leaves = []
    for two, three in zip(_flatten(outs[0]), _flatten(outs[1])):
        differ = [i for i, (a, b) in enumerate(zip(two.shape, three.shape)) if a != b]
        if len(differ) != 1:
            raise ValueError(f"cannot shard {type(model).__name__}'s output of shape "
                             f"{tuple(two.shape)} (batch 2) along the batch: no single "
                             "batch axis")
        batch_axis = differ[0]
        full = tuple(shape[axis] if i == batch_axis else n for i, n in enumerate(two.shape))
        leaves.append((full, to_numpy(two).dtype, batch_axis))
    return outs[0], leaves


def _host(array: Any) -> Any:
    """A Dask array as it is; any other array as host NumPy."""
    return array if isinstance(array, da.Array) else np.asarray(to_numpy(array))


def _split(array: Any, axis: int, sizes: Sequence[int]) -> list[Any]:
    """``array`` cut along ``axis`` into pieces of ``sizes``: NumPy slices, or one
    Delayed block each for a Dask array (whole along every other axis)."""
    if isinstance(array, da.Array):
        chunks = tuple(tuple(sizes) if i == axis else -1 for i in range(array.ndim))
        return list(array.rechunk(chunks).to_delayed().ravel())
    bounds = np.cumsum([0, *sizes])
    return [np.take(array, np.arange(a, b), axis=axis) for a, b in zip(bounds, bounds[1:])]


def _checked_lengths(model: Module, lengths: Any, batch: int) -> Any:
    if lengths is None:
        return None
    _check_backend(model, lengths, "lengths")
    lengths = _host(lengths) if isinstance(lengths, da.Array) or hasattr(
        lengths, "shape") else np.asarray(lengths)
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"lengths must be aligned with the batch: expected shape "
                         f"({batch},), got {tuple(lengths.shape)}")
    return lengths


# -- sharded inference --------------------------------------------------------------------

def predict(model: Module, x: Any, *, lengths: Any = None,
            custom_modules: Mapping[str, type[Module]] | None = None) -> Any:
    """``model(x)`` over a Dask array, computed block by block along the batch.

    x: a Dask array laid out as the model expects, (T, B, F), (B, T, F) with
    ``batch_first``, or (T, B) / (B, T) token ids; the batch chunks are kept, the other
    axes become one chunk. lengths: (B,) Dask or NumPy array, or None. Returns what
    ``model(x)`` returns (an array, or ``(output, h_n)``, ``(output, (h_n, c_n))``) as
    lazy Dask arrays of NumPy chunks, chunked along their batch axis like ``x``. The
    weights enter the graph once. Runs on whatever scheduler computes it: the local
    default, a ``distributed.Client()``, or a cluster at an address.
    """
    if not isinstance(model, Module):
        raise TypeError(f"predict takes an xrnn Module, got {type(model).__name__}")
    if not isinstance(x, da.Array):
        raise TypeError(f"predict takes a Dask array x, got {type(x).__name__} (wrap it: "
                        "dask.array.from_array(x, chunks=...))")
    axis = _batch_axis(model, x.ndim)
    _check_backend(model, x, "x")
    lengths = _checked_lengths(model, lengths, x.shape[axis])
    structure, leaves = _probe(model, tuple(x.shape), x.dtype, axis)
    sizes = x.chunks[axis]
    payload = _payload(model, custom_modules)
    weights = dask.delayed(payload, name=f"xrnn-weights-{payload['token']}", traverse=False)
    blocks = _split(x, axis, sizes)
    length_blocks = [None] * len(blocks) if lengths is None else _split(lengths, 0, sizes)
    results = [dask.delayed(_predict_block, pure=False, nout=len(leaves))(
        weights, block, length, (0, index))
        for index, (block, length) in enumerate(zip(blocks, length_blocks))]
    arrays = []
    for k, (shape, dtype, batch_axis) in enumerate(leaves):
        pieces = [da.from_delayed(result[k], dtype=dtype,
                                  shape=tuple(n if i == batch_axis else s
                                              for i, s in enumerate(shape)),
                                  meta=np.empty((0,) * len(shape), dtype=dtype))
                  for n, result in zip(sizes, results)]
        arrays.append(da.concatenate(pieces, axis=batch_axis))
    return _unflatten(structure, iter(arrays))


# -- data-parallel training -----------------------------------------------------------

def _default_client() -> Any:
    try:
        from distributed import default_client
    except ImportError as exc:  # pragma: no cover
        raise ImportError("xrnn.dask.DataParallel needs distributed: pip install "
                          "'xrnn[dask]'") from exc
    try:
        return default_client()
    except ValueError:  # no client: Dask's local threaded scheduler
        return None


class DataParallel:
    """Data-parallel training steps over Dask workers.

    ``step(x, y, lengths=None)`` splits the batch into ``shards`` nearly equal pieces
    (one per worker of ``client`` by default; ``client=None`` takes the current
    ``distributed`` client, else Dask's local threaded scheduler with one shard per
    core), sends the weights once, has each worker compute its shard's loss and
    gradients, and sets every parameter's ``.grad`` to the whole batch's gradient (for
    ``reduction="mean"`` each shard weighted by its share of the loss's elements;
    for ``"sum"`` plain sums), then calls ``optimizer.step()``: the single-process step
    to rounding. Dropout masks come from ``seed``, the step number and the shard, so a
    run is reproducible for a given shard count. A worker lost during a step costs a
    retry (up to ``retries`` times: the weights and shards are sent again; the step
    changes nothing until every shard's result is in), never a wrong step.
    ``custom_modules`` names your own Module classes, as for :func:`xrnn.load`;
    workers must be able to import them.
    ``direct=True`` sends weights and shards to the workers and takes the gradients
    back without a hop through the scheduler; pass ``None`` (Dask's choice) where this
    process can reach only the scheduler.
    """

    def __init__(self, model: Module, loss_fn: Any, optimizer: Optimizer, client: Any = None,
                 shards: int | None = None, *, seed: int | None = None,
                 custom_modules: Mapping[str, type[Module]] | None = None,
                 direct: bool | None = True, retries: int = 2) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"DataParallel takes an xrnn Module, got {type(model).__name__}")
        if getattr(loss_fn, "reduction", None) not in ("mean", "sum"):
            raise ValueError(f"DataParallel needs a loss with reduction 'mean' or 'sum' (a "
                             f"scalar to combine), got {loss_fn!r}")
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)
                                   or shards < 1):
            raise ValueError(f"shards must be a positive integer or None, got {shards!r}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.client = client if client is not None else _default_client()
        self.shards, self.custom_modules, self.direct = shards, custom_modules, direct
        self.retries = retries
        self.seed = int(np.random.SeedSequence(seed).entropy)
        self.steps = 0
        self._probes: dict[Any, Any] = {}

    def shard_count(self) -> int:
        """The shards a step uses (before capping at the batch size)."""
        if self.shards is not None:
            return self.shards
        if self.client is None:
            return dask.system.CPU_COUNT
        # (not scheduler_info()["workers"]: the client refreshes that cache every 2 s
        # with no workers listed, and a read racing with the refresh saw 1 worker of 2)
        return max(1, len(self.client.nthreads()))

    def _prepare(self, x: Any, y: Any, lengths: Any) -> tuple[Any, Any, Any, int, int]:
        """Checked inputs on the host, the input's and the target's batch axes."""
        for name, value in (("x", x), ("y", y)):
            if not hasattr(value, "shape"):
                raise TypeError(f"{name} must be an array or a Dask array, got "
                                f"{type(value).__name__}")
            _check_backend(self.model, value, name)
        x, y = _host(x), _host(y)
        axis = _batch_axis(self.model, x.ndim)
        batch = x.shape[axis]
        lengths = _checked_lengths(self.model, lengths, batch)
        key = (tuple(n for i, n in enumerate(x.shape) if i != axis), str(x.dtype))
        if key not in self._probes:
            self._probes[key] = _probe(self.model, tuple(x.shape), x.dtype, axis)[1]
        (shape, _, y_axis), *_ = self._probes[key]
        shape = tuple(batch if i == y_axis else n for i, n in enumerate(shape))
        if tuple(y.shape) not in (shape, shape[:-1]):
            raise ValueError(f"y must have the prediction's shape {shape} (MSELoss) or that "
                             f"shape without the class axis, {shape[:-1]} (CrossEntropyLoss);"
                             f" got {tuple(y.shape)}")
        return x, y, lengths, axis, y_axis

    def step(self, x: Any, y: Any, *, lengths: Any = None) -> float:
        """One training step on the batch ``x`` (as the model takes it, NumPy, model
        backend or Dask) with targets ``y`` (the loss's target for the whole batch):
        returns the whole batch's loss; the parameters' ``.grad`` hold its gradient."""
        x, y, lengths, axis, y_axis = self._prepare(x, y, lengths)
        batch = x.shape[axis]
        count = min(self.shard_count(), batch)
        sizes = [len(part) for part in np.array_split(np.arange(batch), count)]
        xs, ys = _split(x, axis, sizes), _split(y, y_axis, sizes)
        ls = [None] * count if lengths is None else _split(lengths, 0, sizes)
        shards: list[Any] = list(zip(xs, ys, ls))
        payload = _payload(self.model, self.custom_modules)
        if self.client is None:
            results = self._compute(payload, shards, host=False)
        else:  # a lost worker loses what was scattered to it: send it all again
            for attempt in range(self.retries + 1):
                try:
                    results = self._compute(payload, shards, not isinstance(x, da.Array))
                    break
                except _LOST as exc:
                    if attempt == self.retries:
                        raise RuntimeError(f"step {self.steps}: workers were lost in "
                                           f"{self.retries + 1} attempts") from exc
        self.steps += 1
        return self._combine(results)

    def _compute(self, payload: dict[str, Any], shards: list[Any], host: bool) -> list[Any]:
        """Every shard's ``_shard_step`` result, in shard order. ``host``: the shards
        are NumPy data for the client to scatter (else Delayed blocks or nothing)."""
        if self.client is not None:
            scatter = dict(hash=False, direct=self.direct)
            weights = self.client.scatter([payload], broadcast=True, **scatter)[0]
            if host:  # one shard to each worker, round robin
                shards = self.client.scatter(shards, **scatter)
        else:
            weights = dask.delayed(payload, name=f"xrnn-weights-{payload['token']}",
                                   traverse=False)
        tasks = [dask.delayed(_shard_step, pure=False)(
            weights, shard, self.loss_fn, (self.seed, self.steps, i))
            for i, shard in enumerate(shards)]
        if self.client is not None:
            results = self.client.gather(self.client.compute(tasks), direct=self.direct)
        else:
            results = dask.compute(*tasks, scheduler="threads")
        return list(results)

    def _combine(self, results: Sequence[tuple[float, int, dict[str, Any]]]) -> float:
        """Set each parameter's ``.grad`` to the weighted sum of the shards' gradients;
        step the optimizer; the whole batch's loss."""
        total = sum(count for _, count, _ in results)
        weights = [count / total if self.loss_fn.reduction == "mean" else 1.0
                   for _, count, _ in results]
        for name, parameter in self.model.named_parameters():
            parts = [(w, grads[name]) for w, (_, _, grads) in zip(weights, results)
                     if grads[name] is not None]
            if not parts:
                parameter.grad = None
                continue
            grad = sum(np.asarray(w, dtype=g.dtype) * g for w, g in parts)
            xp = get_namespace(parameter.data)
            parameter.grad = xp.asarray(grad, dtype=parameter.data.dtype,
                                        device=array_api_compat.device(parameter.data))
        self.optimizer.step()
        return float(sum(w * loss for w, (loss, _, _) in zip(weights, results)))

    def predict(self, x: Any, *, lengths: Any = None) -> Any:
        """:func:`predict` with this model (lazy; computed by whatever computes it)."""
        return predict(self.model, x, lengths=lengths, custom_modules=self.custom_modules)

"""Testing helpers usable on every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import array_api_compat
import numpy as np

from .backend import backend_of, get_namespace, to_numpy

_DEFAULT_TOLERANCE = {  # dtype name -> (rtol, atol)
    "float16": (1e-3, 1e-3),
    "float32": (1e-5, 1e-5),
    "float64": (1e-10, 1e-12),
}


def _host(array: Any) -> np.ndarray:
    try:
        return np.asarray(to_numpy(array))
    except TypeError:  # plain Python or NumPy-convertible data
        return np.asarray(array)


def assert_close(actual: Any, desired: Any, *, rtol: float | None = None,
                 atol: float | None = None, backend: str | None = None) -> None:
    """Assert ``actual`` (an array of any backend) equals ``desired`` within tolerance.

    Shapes must match exactly (no broadcasting). ``backend``, when given, is the
    backend ``actual`` must belong to. Default tolerances come from ``actual``'s
    dtype: float32 rtol = atol = 1e-5; float64 rtol 1e-10, atol 1e-12.
    """
    if backend is not None and backend_of(actual) != backend:
        raise AssertionError(f"expected a {backend} array, got a {backend_of(actual)} array")
    a, d = _host(actual), _host(desired)
    if a.shape != d.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape}, desired {d.shape}")
    default_rtol, default_atol = _DEFAULT_TOLERANCE.get(a.dtype.name, (0.0, 0.0))
    np.testing.assert_allclose(a, d, rtol=default_rtol if rtol is None else rtol,
                               atol=default_atol if atol is None else atol)


def gradcheck(fn: Callable[..., tuple[Any, Sequence[Any]]], inputs: Sequence[Any], *,
              eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-9,
              max_checks: int | None = 64, seed: int = 0) -> bool:
    """Check analytic gradients against central finite differences, in float64.

    ``fn(*inputs) -> (loss, grads)`` returns a scalar loss (0-d array or float) and
    its claimed gradient with respect to each input: exactly one per input, in order
    (same shapes; ``None`` skips an input deliberately), else ``ValueError`` naming the
    counts and the first input without one. Every input must be a float64 array of one
    backend. Each input's entries are perturbed by ``±eps`` one at a time (at most
    ``max_checks`` entries per input, chosen at random with ``seed``; ``None`` checks
    all). Returns True or raises ``AssertionError`` naming the input and entry that
    disagree.
    """
    for k, array in enumerate(inputs):
        if _host(array).dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 inputs; input {k} is {_host(array).dtype}")
    _, grads = fn(*inputs)
    grads = list(grads)
    if len(grads) != len(inputs):
        missing = (f"input {len(grads)} has none" if len(grads) < len(inputs) else
                   f"gradient {len(inputs)} has no input")
        raise ValueError(f"gradcheck needs one gradient per input (None to skip one): fn "
                         f"returned {len(grads)} gradients for {len(inputs)} inputs; {missing}")
    rng = np.random.default_rng(seed)
    for k, (array, grad) in enumerate(zip(inputs, grads)):
        if grad is None:
            continue
        host, analytic = _host(array).copy(), _host(grad)
        if analytic.shape != host.shape:
            raise AssertionError(f"gradient {k} has shape {analytic.shape}; input is {host.shape}")
        flat = np.arange(host.size)
        if max_checks is not None and host.size > max_checks:
            flat = rng.choice(host.size, size=max_checks, replace=False)
        xp = get_namespace(array)
        for index in (np.unravel_index(i, host.shape) for i in flat):
            values = []
            for step in (eps, -eps):
                moved = host.copy()
                moved[index] += step
                args = list(inputs)
                args[k] = xp.asarray(moved, device=array_api_compat.device(array))
                values.append(float(_host(fn(*args)[0])))
            numeric = (values[0] - values[1]) / (2 * eps)
            if not abs(numeric - analytic[index]) <= atol + rtol * abs(numeric):
                raise AssertionError(f"input {k} entry {tuple(int(i) for i in index)}: "
                                     f"analytic gradient {analytic[index]!r}, finite "
                                     f"difference {numeric!r}")
    return True


def _flatten(outputs: Any) -> list[Any]:
    if isinstance(outputs, (tuple, list)):
        return [leaf for item in outputs for leaf in _flatten(item)]
    return [outputs]


def _like(outputs: Any, leaves: Iterator[Any]) -> Any:
    """``leaves`` arranged in the (nested tuple) structure of ``outputs``."""
    if isinstance(outputs, (tuple, list)):
        return tuple(_like(item, leaves) for item in outputs)
    return next(leaves)


def gradcheck_module(module: Any, *inputs: Any, seed: int = 0, eps: float = 1e-6,
                     rtol: float = 1e-6, atol: float = 1e-9, max_checks: int | None = 16
                     ) -> bool:
    """Check a module's hand-written ``backward`` by finite differences, in float64:
    the gradient it returns for each floating input and every parameter's ``.grad``.

    The loss is ``sum(output * R)`` with a fixed random ``R`` per output array; a tuple
    output (a recurrent layer's ``(output, h_n)``) gets one ``R`` per array, handed to
    ``backward`` in the same structure. ``backward``'s return value is the gradient of
    the one input, or a tuple with one gradient per input; integer inputs (indices) are
    passed through unchecked. Run it in eval mode or without dropout: each forward would
    otherwise draw new masks. Returns True or raises ``AssertionError`` naming the input
    (``input 0``) or parameter (``head.bias``) and the entry that disagree.
    """
    from .nn.module import no_grad

    xp = get_namespace(*inputs)
    with no_grad():
        outputs = module(*inputs)
    rng = np.random.default_rng(seed)
    device = array_api_compat.device(inputs[0])
    projections = [xp.asarray(rng.standard_normal(tuple(y.shape)), dtype=y.dtype,
                              device=device) for y in _flatten(outputs)]
    parameters = dict(module.named_parameters())

    def loss_and_grads(arrays: Sequence[Any], target: str | int) -> tuple[Any, list[Any]]:
        """Run forward and backward with ``arrays`` (inputs, then parameters' data)."""
        saved = {name: (p.data, p.grad) for name, p in parameters.items()}
        try:
            for (name, p), data in zip(parameters.items(), arrays[len(inputs):]):
                p.data, p.grad = data, None
            outputs = module(*arrays[:len(inputs)])
            loss = sum(xp.sum(y * r) for y, r in zip(_flatten(outputs), projections))
            grads = module.backward(*(_like(outputs, iter(projections))
                                      if isinstance(outputs, tuple) else projections))
            if isinstance(target, str):
                return loss, [parameters[target].grad]
            grads = grads if isinstance(grads, tuple) and len(inputs) > 1 else (grads,)
            if len(grads) != len(inputs):
                raise AssertionError(f"backward returned {len(grads)} input gradients for "
                                     f"{len(inputs)} inputs")
            return loss, [grads[target]]
        finally:
            for name, (data, grad) in saved.items():
                parameters[name].data, parameters[name].grad = data, grad

    arrays = [*inputs, *(p.data for p in parameters.values())]
    targets: list[str | int] = [k for k, x in enumerate(inputs)
                                if xp.isdtype(x.dtype, "real floating")]
    for target in targets + list(parameters):
        k = target if isinstance(target, int) else len(inputs) + list(parameters).index(target)

        def one(array: Any, target: str | int = target, k: int = k) -> tuple[Any, list[Any]]:
            return loss_and_grads([*arrays[:k], array, *arrays[k + 1:]], target)

        try:
            gradcheck(one, [arrays[k]], eps=eps, rtol=rtol, atol=atol,
                      max_checks=max_checks, seed=seed)
        except AssertionError as error:
            name = f"input {target}" if isinstance(target, int) else target
            raise AssertionError(f"{name}: {error}".replace("input 0 ", "", 1)) from None
    return True

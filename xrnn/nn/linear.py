"""``Linear``: an affine map on the last axis."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_namespace
from ..functional.checks import check_compatible
from .arguments import check_dtype_name, check_positive_int
from .init import uniform
from .module import Module, check_gradient_shape


class Linear(Module):
    """``y = x W^T + b`` on the last axis of ``x``, as ``torch.nn.Linear``.

    Shapes: x (..., in_features) -> y (..., out_features), e.g. (T, B, F) per timestep.
    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,),
    initialised U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: str = "float32", seed: int | None = None) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.dtype = check_dtype_name(dtype)
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = self.register_parameter(
            "weight", uniform(rng, (out_features, in_features), bound, self.dtype))
        self.bias = self.register_parameter(
            "bias", uniform(rng, (out_features,), bound, self.dtype)) if bias else None

    def forward(self, x: Any) -> Any:
        check_compatible(x, self.weight.data, features=self.in_features, what="in_features")
        xp = get_namespace(x)
        x2 = xp.reshape(x, (-1, self.in_features))
        y = x2 @ xp.matrix_transpose(self.weight.data)
        if self.bias is not None:
            y += self.bias.data  # in place on the fresh product
        self.save_for_backward(x2, tuple(x.shape))
        return xp.reshape(y, tuple(x.shape[:-1]) + (self.out_features,))

    def backward(self, grad_output: Any) -> Any:
        """(..., out_features) -> (..., in_features); adds to ``weight.grad``, ``bias.grad``."""
        x2, shape = self.saved_for_backward()
        check_gradient_shape(self, grad_output, shape[:-1] + (self.out_features,))
        xp = get_namespace(grad_output)
        g2 = xp.reshape(grad_output, (-1, self.out_features))
        self.weight.accumulate(xp.matrix_transpose(g2) @ x2)
        if self.bias is not None:
            self.bias.accumulate(xp.sum(g2, axis=0))
        return xp.reshape(g2 @ self.weight.data, shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 1 or input_shape[-1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} features on the last axis, "
                             f"got input shape {tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.out_features,)

    def config(self) -> dict[str, Any]:
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, dtype=self.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

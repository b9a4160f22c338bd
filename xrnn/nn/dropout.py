"""``Dropout``: inverted dropout as a layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_namespace
from ..functional.dropout import check_probability, dropout_mask
from .module import Module, check_gradient_shape


class Dropout(Module):
    """In training mode, zero each element with probability ``p`` and scale the rest by
    ``1/(1-p)``; in eval mode, the identity. As ``torch.nn.Dropout``.

    Shapes: any floating input -> the same shape. Masks come from a host generator
    seeded by ``seed``, so a seed gives the same masks on every backend; ``backward``
    multiplies by the mask of the forward call it pairs with.
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None) -> None:
        super().__init__()
        self.p = check_probability(p)
        self._rng = np.random.default_rng(seed)

    def forward(self, x: Any) -> Any:
        xp = get_namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"Dropout takes a real floating array, got dtype {x.dtype}")
        mask = dropout_mask(x, self.p, self._rng) if self.training and self.p > 0 else None
        self.save_for_backward(mask, tuple(x.shape))
        return x if mask is None else x * mask

    def backward(self, grad_output: Any) -> Any:
        """The gradient times the same call's mask (unchanged in eval mode or with p=0)."""
        mask, shape = self.saved_for_backward()
        check_gradient_shape(self, grad_output, shape)
        return grad_output if mask is None else grad_output * mask

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def extra_repr(self) -> str:
        return f"p={self.p}"

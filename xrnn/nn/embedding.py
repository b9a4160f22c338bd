"""``Embedding``: a lookup table of vectors, indexed by integer tokens."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import backend_of, get_namespace
from ..functional.embedding import embedding, scatter_add_rows
from .arguments import check_dtype_name, check_positive_int
from .init import create
from .module import Module, check_gradient_shape


class Embedding(Module):
    """Row ``i`` of ``weight`` for each index ``i``, as ``torch.nn.Embedding``.

    Shapes: integer indices of any shape, e.g. (T, B) or (B, T), -> (..., embedding_dim),
    e.g. (T, B, E) or (B, T, E): the layout a recurrent layer takes. Parameter ``weight``
    (num_embeddings, embedding_dim), initialised N(0, 1) from ``seed`` as in PyTorch.
    ``padding_idx`` (negative counts from the end): that row starts at zero and gets no
    gradient, so padding tokens contribute nothing. Indices outside
    ``[0, num_embeddings)`` raise ``ValueError``; ``backward`` adds the gradient of every
    occurrence of an index to its row and returns ``None`` (indices have no gradient).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 *, dtype: str = "float32", seed: int | None = None) -> None:
        super().__init__()
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            if (isinstance(padding_idx, bool) or not isinstance(padding_idx, int)
                    or not -num_embeddings <= padding_idx < num_embeddings):
                raise ValueError(f"padding_idx must be None or an integer in "
                                 f"[-{num_embeddings}, {num_embeddings}) (num_embeddings="
                                 f"{num_embeddings}), got {padding_idx!r}")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        self.dtype = check_dtype_name(dtype)
        rng = np.random.default_rng(seed)

        def draw(shape: tuple[int, ...]) -> np.ndarray:
            values = rng.normal(0.0, 1.0, size=shape)
            if padding_idx is not None:
                values[padding_idx] = 0.0
            return values

        self.weight = self.register_parameter(
            "weight", create((num_embeddings, embedding_dim), self.dtype, draw))

    def forward(self, indices: Any) -> Any:
        weight = self.weight.data
        given, wanted = backend_of(indices), backend_of(weight)
        if given != wanted:
            raise TypeError(f"indices are a {given} array but the embedding table is a {wanted} "
                            f"array: convert the indices with xrnn.asarray, or move the model "
                            f"with model.to({given!r})")
        output = embedding(indices, weight)
        xp = get_namespace(indices)
        self.save_for_backward(xp.reshape(indices, (-1,)), tuple(indices.shape))
        return output

    def backward(self, grad_output: Any) -> None:
        """(..., embedding_dim) -> ``None``; adds each index's gradients to its row of
        ``weight.grad`` (none to ``padding_idx``'s row)."""
        flat, shape = self.saved_for_backward()
        check_gradient_shape(self, grad_output, shape + (self.embedding_dim,))
        xp = get_namespace(grad_output)
        grad = xp.reshape(grad_output, (-1, self.embedding_dim))
        if self.padding_idx is not None:
            padding = xp.reshape(flat == self.padding_idx, (-1, 1))
            grad = xp.where(padding, xp.zeros_like(grad), grad)
        self.weight.accumulate(scatter_add_rows(flat, grad, self.num_embeddings))
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape) + (self.embedding_dim,)

    def config(self) -> dict[str, Any]:
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                    padding_idx=self.padding_idx, dtype=self.dtype)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        return text + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None
                       else "")

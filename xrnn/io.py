"""Moving weights between xrnn and PyTorch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backend import to_numpy


def torch_state_dict(module_or_state: Any) -> dict[str, Any]:
    """A ``state_dict`` of torch tensors (CPU copies) that ``torch.nn.Module.load_state_dict``
    accepts, from an xrnn module or a name -> array mapping of any backend."""
    import torch

    state = module_or_state if isinstance(module_or_state, Mapping) else module_or_state.state_dict()
    return {name: torch.from_numpy(to_numpy(value).copy()) for name, value in state.items()}

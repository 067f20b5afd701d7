"""The streaming protocol every streaming model follows, and batch operations on its state.

Shape key
    B: streams, t: feature frames of a chunk, C: feature channels (mels), t': encoder frames
    of the chunk (ceil(t / S)), M: d_model, S: subsampling (feature frames per encoder frame).

A streaming model turns feature frames into encoder frames chunk by chunk, with its state an
explicit value in and out, so that the same step runs in PyTorch, in an exported graph (ONNX,
Core ML: the state becomes graph inputs and outputs) or in another array library (MLX)::

    state = model.init_state(batch, device, dtype)          # start of B streams
    memory, state = model.forward_chunk(feats, state)       # (B, t, C) -> (B, t', M)

Chained ``forward_chunk`` outputs equal ``forward``'s on the whole sequence (tested for every
streaming model). A chunk holds a multiple of ``subsampling`` frames, except the last one of a
stream. The search on top (``mamba_asr.decode.transducer``) reads ``memory`` through the
joiner and keeps its own state (the predictor's); ``mamba_asr.streaming`` puts both together
behind ``Stream``.

The state is a tree (NamedTuples, tuples, lists, dicts, dataclasses) of tensors, each with
one batch dimension; ``StateOps`` finds each tensor's batch dimension once (by comparing the
states of 1 and 2 streams) and selects, replaces, joins and splits streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["StateOps", "StreamingModel", "map_state"]


@runtime_checkable
class StreamingModel(Protocol):
    """What a streaming encoder side offers; see the module docstring."""

    subsampling: int

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """The start-of-stream state of ``batch`` streams."""
        ...

    def forward_chunk(self, feats: Tensor, state: Any) -> tuple[Tensor, Any]:
        """feats (B, t, C), state -> memory (B, t', M), the state after the chunk."""
        ...


def map_state(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn(leaf, *rest_leaves)`` to the tensors of ``tree``; keep its structure."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return fn(tree, *rest)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # NamedTuple
        return type(tree)(*(map_state(fn, *xs) for xs in zip(tree, *rest, strict=True)))
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_state(fn, *xs) for xs in zip(tree, *rest, strict=True))
    if isinstance(tree, dict):
        return {k: map_state(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        names = [f.name for f in dataclasses.fields(tree)]
        values = {n: map_state(fn, getattr(tree, n), *(getattr(r, n) for r in rest)) for n in names}
        return dataclasses.replace(tree, **values)
    return tree  # non-tensor leaves (ints, flags) are shared by the whole batch


class StateOps:
    """Batch operations on states whose tensors keep the batch in different dims.

    init_state: ``init_state(batch, device=...)`` of the model or module whose state it is.
    """

    def __init__(self, init_state: Callable[..., Any], device: torch.device | None = None) -> None:
        one, two = init_state(1, device=device), init_state(2, device=device)
        self.dims = map_state(self._batch_dim, one, two)

    @staticmethod
    def _batch_dim(a: Tensor, b: Tensor) -> int:
        diff = [d for d, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
        if len(diff) != 1:
            raise ValueError(f"cannot find the batch dim of a state: {a.shape} vs {b.shape}")
        return diff[0]

    def index(self, state: Any, idx: Tensor) -> Any:
        """The states of batch entries ``idx`` (K,), in that order."""
        return map_state(lambda x, d: x.index_select(d, idx), state, self.dims)

    def put(self, state: Any, idx: Tensor, sub: Any) -> Any:
        """``state`` with batch entries ``idx`` (K,) replaced by ``sub`` (a state of K entries)."""
        return map_state(lambda x, d, s: x.index_copy(d, idx, s), state, self.dims, sub)

    def cat(self, states: Sequence[Any]) -> Any:
        """One state of the streams of ``states``, in order."""
        first, rest = states[0], states[1:]
        return map_state(lambda x, d, *xs: torch.cat((x, *xs), dim=d), first, self.dims, *rest)

    def split(self, state: Any, sizes: Sequence[int]) -> list[Any]:
        """``state`` cut into states of ``sizes`` streams each (the inverse of ``cat``)."""
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [
            map_state(lambda x, d, a=a, n=n: x.narrow(d, a, n), state, self.dims)
            for a, n in zip(starts, sizes, strict=True)
        ]

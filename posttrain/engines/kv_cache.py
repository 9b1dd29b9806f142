"""A KV cache for one decode: buffers allocated once, rows that can be dropped, padding that can be cut.

transformers' ``DynamicLayer`` grows with ``torch.cat`` every step, which copies the whole cache
per generated token (about half the decode time of a small model on CPU at batch 512). Here each
layer writes new keys/values into a buffer sized for prompt + ``max_new_tokens`` and hands the
attention a view of the filled part. Layers stay ``DynamicLayer`` subclasses, so the model's mask
and position logic treat them exactly like the stock cache.

Only plain full-attention layers are replaced; a model with sliding-window, linear-attention or
other special layers keeps the stock ``DynamicCache`` (see :func:`decode_cache`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["BufferedLayer", "decode_cache", "drop_leading_columns", "supports_column_drop"]


class BufferedLayer(DynamicLayer):
    """One layer's keys and values in preallocated (B, heads, capacity, head_dim) buffers.

    ``self.keys`` / ``self.values`` are always views ``buffer[:, :, start:end]`` of the filled part,
    so everything that reads a ``DynamicLayer`` (sequence length, mask sizes) works unchanged.
    ``start`` moves forward when leading padding columns are dropped; no data is copied then.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._start = 0
        self._end = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, key_dim = key_states.shape
        self._key_buffer = key_states.new_empty(batch, heads, self.capacity, key_dim)
        self._value_buffer = value_states.new_empty(batch, value_states.shape[1], self.capacity, value_states.shape[-1])
        self._start = self._end = 0
        self.is_initialized = True
        self._refresh_views()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, heads, T_new, head_dim) keys/values; return views of everything cached."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new_end = self._end + key_states.shape[-2]
        if new_end > self._key_buffer.shape[-2]:
            # Only reached when more tokens arrive than the capacity promised; grow geometrically.
            self._reallocate(rows=None, capacity=max(new_end - self._start, 2 * self.capacity))
            new_end = self._end + key_states.shape[-2]
        self._key_buffer[:, :, self._end : new_end] = key_states
        self._value_buffer[:, :, self._end : new_end] = value_states
        self._end = new_end
        self._refresh_views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only rows ``indices`` (repeats allowed), compacting the buffers to them."""
        if self.is_initialized:
            self._reallocate(rows=indices, capacity=self.capacity)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            rows = torch.arange(self._key_buffer.shape[0], device=self._key_buffer.device)
            self._reallocate(rows=rows.repeat_interleave(repeats), capacity=self.capacity)

    def drop_leading_columns(self, count: int) -> None:
        """Forget the first ``count`` cached positions of every row (a view change, no copy)."""
        if not 0 <= count <= self._end - self._start:
            raise ValueError(f"cannot drop {count} columns from a cache holding {self._end - self._start}")
        self._start += count
        self._refresh_views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("BufferedLayer.crop takes a negative count of tokens to remove")
        self._end = max(self._start, self._end + tokens_to_remove)
        self._refresh_views()

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._start = self._end = 0
        super().reset()

    def _reallocate(self, rows: torch.Tensor | None, capacity: int) -> None:
        """Copy the filled part (rows ``rows``, or all) into fresh buffers starting at column 0."""
        keys = self._key_buffer[:, :, self._start : self._end]
        values = self._value_buffer[:, :, self._start : self._end]
        if rows is not None:
            keys, values = keys[rows], values[rows]
        length = self._end - self._start
        self.capacity = max(capacity, length)
        self._key_buffer = keys.new_empty(keys.shape[0], keys.shape[1], self.capacity, keys.shape[-1])
        self._value_buffer = values.new_empty(values.shape[0], values.shape[1], self.capacity, values.shape[-1])
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self._start, self._end = 0, length
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, self._start : self._end]
        self.values = self._value_buffer[:, :, self._start : self._end]


def decode_cache(config: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``config``'s model whose full-attention layers are :class:`BufferedLayer`\\ s.

    Args:
        config: the model's ``PretrainedConfig`` (``None`` gives a stock, lazily built cache).
        capacity: positions each row will need (longest prompt + ``max_new_tokens``).

    Returns:
        A cache whose layers are all ``BufferedLayer`` when every layer the config asks for is a plain
        ``DynamicLayer``; otherwise the stock ``DynamicCache(config=config)`` (sliding-window and
        linear-attention layers keep their own logic).
    """
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [BufferedLayer(capacity) for _ in cache.layers]
    return cache


def supports_column_drop(cache: DynamicCache) -> bool:
    """True when every layer can drop leading columns (all are :class:`BufferedLayer`)."""
    return bool(cache.layers) and all(isinstance(layer, BufferedLayer) for layer in cache.layers)


def drop_leading_columns(attention: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Cut the leading columns that are padding in every row, from the (B, L) mask and the cache.

    Safe because positions are passed to the model explicitly and masked columns contribute
    nothing; it saves attention work once the rows with the longest prompts are gone. Call only
    when :func:`supports_column_drop` is true.

    Returns:
        The (B, L - k) mask without its first k all-padding columns.
    """
    first = int(attention.any(dim=0).to(torch.int8).argmax())  # first column with a real token
    if first == 0:
        return attention
    for layer in cache.layers:
        layer.drop_leading_columns(first)
    return attention[:, first:]

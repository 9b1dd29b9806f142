"""Tests for posttrain.engines.kv_cache: BufferedLayer behaves like transformers' DynamicLayer."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Qwen2Config
from transformers.cache_utils import DynamicLayer

from posttrain.engines.kv_cache import BufferedLayer, decode_cache, drop_leading_columns, supports_column_drop


def _kv(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=g), torch.randn(batch, 2, length, 3, generator=g)


def test_buffered_layer_equals_dynamic_layer_through_updates_and_row_selection():
    ours, stock = BufferedLayer(capacity=4), DynamicLayer()
    for step, (batch, length) in enumerate([(3, 2), (3, 1), (3, 1)]):
        k, v = _kv(batch, length, step)
        k1, v1 = ours.update(k, v)
        k2, v2 = stock.update(k, v)
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    # Keep rows 2 and 0 (reordered), then grow past the original capacity of 4 (now 4 filled + 2).
    rows = torch.tensor([2, 0])
    ours.batch_select_indices(rows)
    stock.batch_select_indices(rows)
    for step in range(2):
        k, v = _kv(2, 1, 10 + step)
        k1, v1 = ours.update(k, v)
        k2, v2 = stock.update(k, v)
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert ours.get_seq_length() == stock.get_seq_length() == 6
    assert ours.get_mask_sizes(1) == stock.get_mask_sizes(1) == (7, 0)


def test_buffered_layer_repeat_interleave_and_crop_match_dynamic_layer():
    ours, stock = BufferedLayer(capacity=8), DynamicLayer()
    k, v = _kv(2, 3, 0)
    ours.update(k, v)
    stock.update(k, v)
    ours.batch_repeat_interleave(3)
    stock.batch_repeat_interleave(3)
    ours.crop(-1)
    stock.crop(-1)
    assert torch.equal(ours.keys, stock.keys) and torch.equal(ours.values, stock.values)
    assert ours.keys.shape == (6, 2, 2, 4)


def test_drop_leading_columns_cuts_shared_padding_from_mask_and_cache():
    cache = DynamicCache()
    cache.layers = [BufferedLayer(capacity=6), BufferedLayer(capacity=6)]
    k, v = _kv(2, 4, 0)
    for idx in range(2):
        cache.update(k, v, idx)
    # Both rows are padding in columns 0 and 1; row 1 is also padding in column 2.
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])
    assert supports_column_drop(cache)
    trimmed = drop_leading_columns(mask, cache)
    assert trimmed.tolist() == [[1, 1], [0, 1]]
    for layer in cache.layers:
        assert torch.equal(layer.keys, k[:, :, 2:]) and torch.equal(layer.values, v[:, :, 2:])
    # Nothing to drop: mask returned unchanged.
    assert drop_leading_columns(trimmed, cache) is trimmed
    with pytest.raises(ValueError, match="cannot drop 5 columns"):
        cache.layers[0].drop_leading_columns(5)


def test_decode_cache_uses_buffered_layers_only_for_plain_full_attention():
    config = Qwen2Config(vocab_size=16, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=16)
    cache = decode_cache(config, capacity=10)
    assert [type(layer) for layer in cache.layers] == [BufferedLayer] * 3
    assert supports_column_drop(cache)
    sliding = Qwen2Config(vocab_size=16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, intermediate_size=16, use_sliding_window=True, sliding_window=4,
                          max_window_layers=0)
    stock = decode_cache(sliding, capacity=10)
    assert not any(isinstance(layer, BufferedLayer) for layer in stock.layers)
    assert not supports_column_drop(stock)
    assert not supports_column_drop(decode_cache(None, capacity=10))

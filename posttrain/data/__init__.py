"""Data: reading rows, validating example shapes, tokenising and padding."""

from posttrain.data.collate import pad_batch, pad_preference_batch, pad_sequences
from posttrain.data.examples import (
    LoadedExamples,
    PreferenceExample,
    PromptExample,
    SFTExample,
    collect,
    load_examples,
    parse_preference,
    parse_prompt,
    parse_sft,
)
from posttrain.data.jsonl import write_jsonl
from posttrain.data.readers import DataError, Record, iter_rows, read_records
from posttrain.data.split import held_out_count, hold_out
from posttrain.data.tokenize import (
    TokenizedExample,
    TokenizedPair,
    encode_text,
    render_chat,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)

__all__ = [
    "DataError", "LoadedExamples", "PreferenceExample", "PromptExample", "Record", "SFTExample",
    "TokenizedExample", "TokenizedPair", "collect", "encode_text", "held_out_count", "hold_out", "iter_rows",
    "load_examples",
    "pad_batch", "pad_preference_batch", "pad_sequences", "parse_preference", "parse_prompt",
    "parse_sft", "read_records", "render_chat", "tokenize_preference", "tokenize_prompt",
    "tokenize_sft", "write_jsonl",
]

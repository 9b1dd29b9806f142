"""Time HFEngine.generate against ``model.generate(do_sample=True)`` on the offline tiny models.

Run by hand (not a test)::

    .venv/bin/python benchmarks/engine_generate.py [--prompts 64] [--samples 8] [--new-tokens 64]
        [--presets tiny small] [--threads N] [--eos-bias 0]

Both sides get the same prompts (random lengths 8..40, left-padded), the same number of samples
per prompt and the same ``max_new_tokens``, at T = 1. A freshly initialised model almost never
emits EOS, so by default every completion runs to the length limit, which is the worst case for
row dropping; ``--eos-bias B`` adds B to the EOS logit (both sides) so completions end at varied
lengths, as they do for a trained policy. ``model.generate`` keeps finished rows in the batch.

Tokens/s counts generated tokens (EOS included) per wall second; the best of ``--repeats`` runs
is reported for each side.

Measured on the 2-core CPU build machine with ``--threads 1`` (shared with other jobs, so rough),
64 x 8 x 64, max_batch_size 256: tiny 11.3k vs 6.4k tok/s (1.76x), small 1.96k vs 1.18k (1.65x);
with ``--eos-bias 3`` (completions end at varied lengths): tiny 2.31x, small 2.08x. With 2 threads
on that loaded machine every small op waits for a core and both sides are several times slower.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.engines import HFEngine, SamplingParams  # noqa: E402
from posttrain.models.tiny import build_tiny_model  # noqa: E402


class _EosBias(nn.Module):
    """Adds a constant to the EOS logit, so a random model finishes completions at varied lengths."""

    def __init__(self, lm: nn.Module, eos_id: int, bias: float) -> None:
        super().__init__()
        self.lm, self.config, self.generation_config = lm, lm.config, lm.generation_config
        self.register_buffer("bias", torch.zeros(lm.config.vocab_size))
        self.bias[eos_id] = bias

    def forward(self, **kwargs):
        out = self.lm(**kwargs)
        out.logits = out.logits + self.bias
        return out

    def generate(self, **kwargs):
        # model.generate needs the real module; the bias goes in as a logits processor.
        from transformers import LogitsProcessorList

        bias = self.bias
        return self.lm.generate(**kwargs, logits_processor=LogitsProcessorList([lambda ids, scores: scores + bias]))


def _prompts(tokenizer, count: int, rng: random.Random) -> list[list[int]]:
    words = "what is the answer to this question let us think step by step".split()
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(40))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(ids[: rng.randint(8, 40)])
    return out


def _time_engine(model, tokenizer, prompts, args) -> tuple[float, int]:
    engine = HFEngine(model, tokenizer, max_batch_size=args.max_batch_size)
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, n=args.samples, seed=0)
    start = time.perf_counter()
    out = engine.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    return seconds, sum(len(c.token_ids) for group in out for c in group)


def _time_hf_generate(model, tokenizer, prompts, args) -> tuple[float, int]:
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=args.new_tokens, min_new_tokens=0, num_return_sequences=args.samples,
            pad_token_id=pad, eos_token_id=eos,
        )
    seconds = time.perf_counter() - start
    generated = out[:, width:]
    tokens = 0
    for row in generated.tolist():  # count through the first EOS, as the engine does
        tokens += row.index(eos) + 1 if eos in row else len(row)
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    parser.add_argument("--eos-bias", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"{args.prompts} prompts x {args.samples} samples x {args.new_tokens} new tokens, T=1, "
          f"torch threads={torch.get_num_threads()}, eos bias={args.eos_bias}")
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_model(Path(tmp) / preset, preset=preset)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path).eval()
        if args.eos_bias:
            model = _EosBias(model, tokenizer.eos_token_id, args.eos_bias).eval()
        prompts = _prompts(tokenizer, args.prompts, random.Random(0))
        # Interleaved, so drifting load from other processes hits both sides alike.
        runs = [(_time_engine(model, tokenizer, prompts, args), _time_hf_generate(model, tokenizer, prompts, args))
                for _ in range(args.repeats)]
        engine, hf = min(r[0] for r in runs), min(r[1] for r in runs)
        engine_rate, hf_rate = engine[1] / engine[0], hf[1] / hf[0]
        print(f"[{preset}] HFEngine.generate: {engine[1]:6d} tokens in {engine[0]:6.2f} s = {engine_rate:8.0f} tok/s")
        print(f"[{preset}] model.generate:    {hf[1]:6d} tokens in {hf[0]:6.2f} s = {hf_rate:8.0f} tok/s")
        print(f"[{preset}] ratio (engine / model.generate): {engine_rate / hf_rate:.2f}x")


if __name__ == "__main__":
    main()

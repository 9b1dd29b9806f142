"""Tests for posttrain.engines.hf.HFEngine on the offline tiny Qwen2 model (and a fixed-logits stand-in)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.data.tokenize import tokenize_prompt
from posttrain.engines import HFEngine, SamplingParams
from posttrain.engines.hf import ends_with_any
from posttrain.models.tiny import EOS_TOKEN, build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model (seed 0) and its tokenizer, built once for this module."""
    path = build_tiny_model(tmp_path_factory.mktemp("engine") / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return SimpleNamespace(path=path, model=model, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def prompts(tiny):
    """Four prompts of different lengths (1 to ~20 tokens), one through the chat template."""
    tok = tiny.tokenizer
    texts = ["Hello", "What is 12+34=", "Question: Tom has 25 apples and gives away 3. How many apples are left?"]
    ids = [tokenize_prompt(text, tok) for text in texts]
    ids.append(tokenize_prompt([{"role": "user", "content": "What is 7*8?"}], tok))
    assert len({len(p) for p in ids}) == 4
    return ids


class EosBiased(nn.Module):
    """The tiny model with a constant added to the EOS logit, so that sampled completions end at
    varied lengths (a random model almost never emits EOS). Bias 5 gives EOS ~13% per step;
    bias -inf bans EOS (probability exactly 0)."""

    def __init__(self, lm: nn.Module, eos_id: int, bias: float = 5.0) -> None:
        super().__init__()
        self.lm, self.config, self.generation_config = lm, lm.config, lm.generation_config
        self.register_buffer("bias", torch.zeros(lm.config.vocab_size))
        self.bias[eos_id] = bias

    def forward(self, **kwargs):
        out = self.lm(**kwargs)
        out.logits = out.logits + self.bias
        return out


class FixedLogits(nn.Module):
    """A stand-in LM whose next-token logits are always `logits` (V,), whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def _recomputed_logprobs(model: nn.Module, prompt: list[int], completion: list[int],
                         temperature: float) -> torch.Tensor:
    """The trainer's view: one forward over prompt + completion, `token_logprobs` on the completion part."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return token_logprobs(logits, ids, temperature)[0, len(prompt) - 1 :]


def _greedy(engine: HFEngine, prompts, max_new_tokens: int = 12) -> list[list[int]]:
    out = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0))
    return [group[0].token_ids for group in out]


# ----------------------------------------------------------------------------- greedy


def test_greedy_matches_model_generate_token_for_token(tiny, prompts):
    tok = tiny.tokenizer
    out = HFEngine(tiny.model, tok).generate(prompts, SamplingParams(max_new_tokens=12, temperature=0))
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    reference = tiny.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    for i, group in enumerate(out):
        expected = reference[i, width:].tolist()
        if tok.eos_token_id in expected:  # generate pads after EOS; the engine stops there
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert group[0].token_ids == expected, f"prompt {i}"
        assert group[0].prompt_index == i


def test_greedy_matches_model_generate_for_llama(tmp_path):
    """Same check on the Llama architecture."""
    path = build_tiny_model(tmp_path / "llama", arch="llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    prompts = [tokenize_prompt("What is 12+34=", tok), tokenize_prompt("Hi", tok)]
    out = HFEngine(model, tok).generate(prompts, SamplingParams(max_new_tokens=8, temperature=0))
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    reference = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert tok.eos_token_id not in reference[:, width:]  # a random model: both run to the limit
    assert [group[0].token_ids for group in out] == reference[:, width:].tolist()


def test_batched_greedy_equals_one_prompt_at_a_time(tiny, prompts):
    engine = HFEngine(tiny.model, tiny.tokenizer)
    params = SamplingParams(max_new_tokens=10, temperature=0)
    batched = engine.generate(prompts, params)
    for i, prompt in enumerate(prompts):
        alone = engine.generate([prompt], params)[0][0]
        assert batched[i][0].token_ids == alone.token_ids
        assert_close(torch.tensor(batched[i][0].logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


def test_a_long_prompt_finishing_first_leaves_the_others_unchanged(tiny, prompts):
    """Stop the longest prompt's row early with a stop token, so the engine drops its row and the
    padding columns only it needed; the short prompt must decode exactly as it does alone."""
    engine = HFEngine(tiny.model, tiny.tokenizer)
    long, short = prompts[2], prompts[0]
    long_alone, short_alone = _greedy(engine, [long])[0], _greedy(engine, [short])[0]
    stop = next(t for t in long_alone if t not in short_alone)
    cut = long_alone.index(stop) + 1
    out = engine.generate([long, short], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[stop]))
    assert out[0][0].token_ids == long_alone[:cut] and out[0][0].finish_reason == "stop"
    assert out[1][0].token_ids == short_alone and out[1][0].finish_reason == "length"
    assert_close(torch.tensor(out[1][0].logprobs), _recomputed_logprobs(tiny.model, short, short_alone, 1.0),
                 atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize(("temperature", "recompute_at"), [(1.0, 1.0), (0.7, 0.7), (0.0, 1.0)])
def test_reported_logprobs_equal_the_trainers_recomputation(tiny, prompts, temperature, recompute_at):
    """Sampler log-probs == token_logprobs over prompt + completion at the same T (greedy: at T=1),
    with top-p on (it must not change what is reported) and rows finishing at varied steps (EOS
    bias 4 T: after dividing by T, ~5% per step, so about half the completions reach the limit)."""
    model = EosBiased(tiny.model, tiny.tokenizer.eos_token_id, bias=4.0 * temperature)
    params = SamplingParams(max_new_tokens=16, temperature=temperature, top_p=0.95, n=4, seed=0)
    out = HFEngine(model, tiny.tokenizer).generate(prompts, params)
    reasons = set()
    for group in out:
        for c in group:
            reasons.add(c.finish_reason)
            expected = _recomputed_logprobs(model, prompts[c.prompt_index], c.token_ids, recompute_at)
            assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)
    if temperature > 0:
        assert reasons == {"stop", "length"}  # both exits (and so row dropping) were exercised


# ----------------------------------------------------------------------------- seeds


def test_same_seed_same_samples_whatever_the_global_rng(tiny, prompts):
    engine = HFEngine(tiny.model, tiny.tokenizer)
    params = SamplingParams(max_new_tokens=8, n=2, seed=123)
    torch.manual_seed(0)
    first = engine.generate(prompts, params)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    second = engine.generate(prompts, params)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call leaves the global RNG alone
    assert first == second
    other = engine.generate(prompts, SamplingParams(max_new_tokens=8, n=2, seed=124))
    assert [c.token_ids for g in other for c in g] != [c.token_ids for g in first for c in g]


def test_seed_none_follows_the_global_rng(tiny, prompts):
    engine = HFEngine(tiny.model, tiny.tokenizer)
    params = SamplingParams(max_new_tokens=6)
    torch.manual_seed(5)
    first = engine.generate(prompts, params)
    torch.manual_seed(5)
    assert engine.generate(prompts, params) == first


# ----------------------------------------------------------------------------- stopping and grouping


def test_finish_reasons_stop_includes_eos_and_length_stops_at_the_limit(tiny, prompts):
    tok = tiny.tokenizer
    model = EosBiased(tiny.model, tok.eos_token_id)
    out = HFEngine(model, tok).generate(prompts, SamplingParams(max_new_tokens=8, n=6, seed=1))
    completions = [c for group in out for c in group]
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    for c in completions:
        assert tok.eos_token_id not in c.token_ids[:-1]
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == tok.eos_token_id and len(c.token_ids) <= 8
            assert c.text == tok.decode(c.token_ids[:-1]) and EOS_TOKEN not in c.text
        else:
            assert len(c.token_ids) == 8 and c.token_ids[-1] != tok.eos_token_id
            assert c.text == tok.decode(c.token_ids)


def test_stop_token_ids_end_a_completion_at_their_first_occurrence(tiny, prompts):
    engine = HFEngine(tiny.model, tiny.tokenizer)
    greedy = _greedy(engine, prompts)
    # A token whose first occurrence is not at position 0, so the cut is visible.
    i, j = next((i, j) for i, seq in enumerate(greedy) for j in range(1, len(seq)) if seq[j] not in seq[:j])
    out = engine.generate([prompts[i]], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[greedy[i][j]]))
    assert out[0][0].token_ids == greedy[i][: j + 1]
    assert out[0][0].finish_reason == "stop"


def test_stop_sequences_end_a_completion_where_its_tokens_end_with_one(tiny, prompts):
    """A two-token sequence (a greedy completion's tokens j-1, j, the pair not seen before j) stops
    it right after token j; the sequence stays in the ids and the text. Batched with a prompt the
    sequence never ends, that one runs to its limit as it would alone."""
    tok = tiny.tokenizer
    engine = HFEngine(tiny.model, tok)
    greedy = _greedy(engine, prompts)
    i, j = next((i, j) for i, seq in enumerate(greedy) for j in range(2, len(seq))
                if (seq[j - 1], seq[j]) not in zip(seq[: j - 1], seq[1:j]))
    other = next(k for k in range(len(prompts)) if k != i and
                 all((greedy[k][m - 1], greedy[k][m]) != (greedy[i][j - 1], greedy[i][j]) for m in range(1, 12)))
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_sequences=[[greedy[i][j - 1], greedy[i][j]]])
    cut, untouched = (group[0] for group in engine.generate([prompts[i], prompts[other]], params))
    assert cut.token_ids == greedy[i][: j + 1] and cut.finish_reason == "stop"
    assert cut.text == tok.decode(greedy[i][: j + 1])
    assert untouched.token_ids == greedy[other]


def test_ends_with_any_matches_suffixes_of_the_recent_tokens():
    recent = torch.tensor([[5, 6, 7], [6, 7, 5], [9, 9, 7]])
    sequences = [torch.tensor([6, 7]), torch.tensor([1, 2, 3, 4])]  # the second is longer than the window
    assert ends_with_any(recent, sequences).tolist() == [True, False, False]


@pytest.mark.parametrize("seed", [3, 8])
def test_n_samples_come_back_grouped_per_prompt_across_batches(tiny, prompts, seed):
    """3 prompts x 4 samples with max_batch_size=5 split into row batches [p0 p0 p0 p0 p1],
    [p1 p1 p1 p2 p2], [p2 p2]; each batch prefills its distinct prompts once, so the prompt tokens
    processed are (L0 + L1) + (L1 + L2) + L2.

    EOS is banned (logit -inf, probability exactly 0), so every completion runs to the 5-token
    limit and 60 tokens are generated whatever the seed: the raw tiny model samples its EOS
    (~1/1000 per token) somewhere in 60 tokens for ~6 % of seeds (seed 8 is one of them)."""
    three = prompts[:3]
    engine = HFEngine(EosBiased(tiny.model, tiny.tokenizer.eos_token_id, bias=float("-inf")), tiny.tokenizer,
                      max_batch_size=5)
    out = engine.generate(three, SamplingParams(max_new_tokens=5, n=4, seed=seed))
    assert [len(group) for group in out] == [4, 4, 4]
    assert [[c.prompt_index for c in group] for group in out] == [[0] * 4, [1] * 4, [2] * 4]
    assert all(len({tuple(c.token_ids) for c in group}) > 1 for group in out)  # samples differ
    lengths = [len(p) for p in three]
    assert engine.last_stats["prompt_tokens"] == lengths[0] + 2 * lengths[1] + 2 * lengths[2]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 5 for g in out for c in g)
    assert engine.last_stats["generated_tokens"] == sum(len(c.token_ids) for g in out for c in g) == 60
    assert engine.last_stats["seconds"] > 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_one_equals_greedy(tiny, prompts, temperature):
    engine = HFEngine(tiny.model, tiny.tokenizer)
    out = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=temperature, top_k=1, seed=4))
    assert [g[0].token_ids for g in out] == _greedy(engine, prompts, 10)


# ----------------------------------------------------------------------------- the sampling distribution


def test_sampling_frequencies_match_the_tempered_softmax_and_its_filters():
    """A model with fixed logits l = [2, 1, 0.5, 0, -1]: 2,000 draws per case (1,000 samples x 2
    steps). Expected frequencies: softmax(l / 0.7); with top_k=2 the same restricted to tokens {0, 1}
    and renormalised. softmax(l / 0.7) = [0.700, 0.168, 0.082, 0.040, 0.010], so with top_p=0.9 the
    nucleus is {0, 1, 2}: the mass before token 2 is 0.868 < 0.9, before token 3 0.950 >= 0.9.
    Standard error <= 0.011, tolerance 0.04. Reported log-probs are
    always log_softmax(l / 0.7) of the drawn token (unfiltered)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    probs = torch.softmax(logits / 0.7, dim=-1)
    engine = HFEngine(FixedLogits(logits), tokenizer=None, max_batch_size=1000)
    cases = {
        "plain": ({}, probs),
        "top_k": ({"top_k": 2}, torch.cat([probs[:2] / probs[:2].sum(), torch.zeros(3)])),
        "top_p": ({"top_p": 0.9}, torch.cat([probs[:3] / probs[:3].sum(), torch.zeros(2)])),
    }
    for name, (extra, expected) in cases.items():
        params = SamplingParams(max_new_tokens=2, temperature=0.7, n=1000, seed=11, **extra)
        completions = engine.generate([[0]], params)[0]
        tokens = torch.tensor([t for c in completions for t in c.token_ids])
        logprobs = torch.tensor([lp for c in completions for lp in c.logprobs])
        assert tokens.numel() == 2000, name
        freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
        assert_close(freq, expected, atol=0.04, rtol=0, msg=name)
        assert_close(logprobs, torch.log(probs)[tokens], msg=name)


# ----------------------------------------------------------------------------- weights and modes


def test_load_weights_copies_foreign_weights_and_is_a_noop_for_the_same_module(tiny, prompts, tmp_path):
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "other", seed=1)).eval()
    engine = HFEngine(copy.deepcopy(tiny.model), tiny.tokenizer)
    before = _greedy(engine, prompts, 6)
    target = _greedy(HFEngine(other, tiny.tokenizer), prompts, 6)
    assert before != target
    engine.load_weights(other)
    assert _greedy(engine, prompts, 6) == target
    engine.load_weights(tiny.model.state_dict())
    assert _greedy(engine, prompts, 6) == before

    # The engine's own module, or a module wrapping it (e.g. a peft model), shares its weights: no-op.
    pointer = engine.model.lm_head.weight.data_ptr()
    engine.load_weights(engine.model)
    engine.load_weights(nn.ModuleDict({"policy": engine.model}))
    assert engine.model.lm_head.weight.data_ptr() == pointer

    with pytest.raises(ValueError, match="do not fit the engine's model"):
        engine.load_weights({"not_a_weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        engine.load_weights([1, 2])


def test_generation_runs_in_eval_and_inference_mode_and_restores_modes(tiny, prompts):
    model = copy.deepcopy(tiny.model).train()
    model.model.layers[0].eval()  # a submodule deliberately left in eval must stay so
    seen = []
    model.register_forward_hook(
        lambda module, args, out: seen.append((module.training, torch.is_inference_mode_enabled()))
    )
    HFEngine(model, tiny.tokenizer).generate(prompts[:2], SamplingParams(max_new_tokens=3, seed=0))
    assert seen and all(mode == (False, True) for mode in seen)
    assert model.training and model.model.training and not model.model.layers[0].training


def test_bad_prompts_and_closed_engine_raise_clear_errors(tiny):
    engine = HFEngine(tiny.model, tiny.tokenizer)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[5, 6], []], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"prompt 0, position 1: token id 5000 is not an int in \[0, 1024\)"):
        engine.generate([[5, 5000]], SamplingParams(max_new_tokens=2))
    with pytest.raises(TypeError, match="SamplingParams"):
        engine.generate([[5]], {"max_new_tokens": 2})
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[5]], SamplingParams(max_new_tokens=2))

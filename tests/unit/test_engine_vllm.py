"""VLLMEngine against a fake `vllm` module: what it asks of vLLM and what it makes of the answers.

vLLM needs CUDA, so here `sys.modules["vllm"]` is a stand-in that records every call and returns
RequestOutput-shaped objects (`.outputs[i].token_ids`, `.logprobs` as per-position dicts
token → Logprob, `.finish_reason`, `.text`), and `torch.cuda.is_available` says True. The policy is
a 2-layer Llama built here; a fake tokenizer decodes token t as "t<t>"."""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.engines.base import Engine, SamplingParams
from posttrain.engines.factory import build_engine
from posttrain.engines.vllm_engine import LOGPROBS_MODE, VLLMEngine, VLLMUnavailable
from posttrain.training.precision import Precision

TOKENIZER_EOS = 5   # the tokenizer's EOS; the Llama config's generation EOS is 2


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    finish_reason: str
    text: str = "vLLM's own text (not used: vLLM runs without a tokenizer)"


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


def logprob_of(token: int, position: int) -> float:
    """The fake's log-prob of `token` at `position`: distinct for every (token, position)."""
    return -0.01 * token - 0.1 * position


def scripted(prompt: list[int], sample: int, max_tokens: int) -> tuple[list[int], str]:
    """Sample 0 ends with the tokenizer's EOS after two tokens; sample 1 runs to max_tokens."""
    if sample == 0:
        return [prompt[-1] + 1, 11, TOKENIZER_EOS], "stop"
    return [prompt[-1] + 2] * max_tokens, "length"


class FakeVLLMModel:
    def __init__(self):
        self.loads: list[list[tuple[str, torch.Tensor]]] = []

    def load_weights(self, weights):
        pairs = list(weights)
        self.loads.append(pairs)
        return {name for name, _ in pairs}


class FakeLLM:
    """Records every call in `calls`; answers `generate` with `script(prompt, sample, max_tokens)`."""

    instances: list["FakeLLM"] = []
    script = staticmethod(scripted)

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.saved_files = sorted(p.name for p in Path(kwargs["model"]).iterdir())
        self.calls: list[tuple] = []
        self.model = FakeVLLMModel()
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params))
        out = []
        for prompt, params in zip(prompts, sampling_params):
            ids = prompt["prompt_token_ids"]
            samples = []
            for s in reversed(range(params.n)):  # out of order: the engine must sort by .index
                tokens, finish = self.script(ids, s, params.max_tokens)
                logprobs = [{t: Logprob(logprob_of(t, i), 1), 0: Logprob(-9.0, 2)} for i, t in enumerate(tokens)]
                samples.append(CompletionOutput(s, tokens, logprobs, finish))
            out.append(RequestOutput(ids, samples))
        return out

    def apply_model(self, func):
        self.calls.append(("apply_model",))
        return [func(self.model)]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up",))


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


class FakeTokenizer:
    eos_token_id = TOKENIZER_EOS

    def decode(self, ids, skip_special_tokens=True):
        assert skip_special_tokens is False
        return " ".join(f"t{i}" for i in ids)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    FakeLLM.instances.clear()
    return module


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


def make(policy, **kwargs) -> tuple[VLLMEngine, FakeLLM]:
    engine = VLLMEngine(policy, FakeTokenizer(), **kwargs)
    return engine, FakeLLM.instances[-1]


# ----------------------------------------------------------------------------- construction

def test_vllm_is_started_on_the_saved_policy_with_the_trainers_log_prob_mode(fake_vllm, policy):
    engine, llm = make(policy)
    assert isinstance(engine, Engine) and not engine.shares_weights(policy)
    assert "config.json" in llm.saved_files and any(f.endswith(".safetensors") for f in llm.saved_files)
    assert llm.kwargs["logprobs_mode"] == LOGPROBS_MODE == "processed_logprobs"
    assert llm.kwargs["skip_tokenizer_init"] is True and llm.kwargs["enable_sleep_mode"] is False
    assert llm.kwargs["dtype"] == "float32"  # the model's own under fp32
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # in-process: weight pushes stay on the GPU
    engine.close()


def test_build_engine_routes_vllm_and_bf16_mixed_runs_it_in_bfloat16(fake_vllm, policy):
    bf16 = Precision(name="bf16-mixed", requested="bf16-mixed", device_type="cuda", reason="test")
    engine = build_engine("vllm", policy, FakeTokenizer(), precision=bf16)
    assert isinstance(engine, VLLMEngine) and FakeLLM.instances[-1].kwargs["dtype"] == "bfloat16"
    engine.close()
    with pytest.raises(ValueError, match="runs one replica"):
        build_engine("vllm", policy, FakeTokenizer(), workers=2)


def test_without_vllm_the_error_says_what_is_needed(monkeypatch, policy):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(VLLMUnavailable, match=r"rollout.engine=vllm needs a CUDA GPU and the `posttrain\[gpu\]` "
                                              r"extra \(vllm\).*import vllm failed"):
        build_engine("vllm", policy, FakeTokenizer())


def test_without_cuda_the_error_says_so(fake_vllm, monkeypatch, policy):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VLLMUnavailable, match=r"needs a CUDA GPU.*torch.cuda.is_available\(\) is False"):
        VLLMEngine(policy, FakeTokenizer())
    assert not FakeLLM.instances


# ----------------------------------------------------------------------------- sampling parameters

def test_sampling_params_map_onto_vllms(fake_vllm, policy):
    """n, temperature, top-p, max_tokens as given; top_k 0 (off) → -1; the stop tokens are ours
    plus the tokenizer's EOS (5) and the model's (2); logprobs=0 asks for the sampled token's only;
    prompts go in as token ids, each with its own seed, the same for the same SamplingParams.seed."""
    engine, llm = make(policy)
    sampling = SamplingParams(max_new_tokens=4, temperature=0.7, top_p=1.0, top_k=0, n=2, seed=3, stop_token_ids=[9])
    engine.generate([[1, 3], [1, 4, 6]], sampling)
    _, prompts, params = llm.calls[-1]
    assert prompts == [{"prompt_token_ids": [1, 3]}, {"prompt_token_ids": [1, 4, 6]}]
    for p in params:
        assert {k: v for k, v in p.kwargs.items() if k != "seed"} == {
            "n": 2, "temperature": 0.7, "top_p": 1.0, "top_k": -1, "max_tokens": 4, "stop_token_ids": [2, 5, 9],
            "logprobs": 0, "detokenize": False}
    seeds = [p.seed for p in params]
    assert len(set(seeds)) == 2 and all(isinstance(s, int) for s in seeds)
    engine.generate([[1, 3], [1, 4, 6]], sampling)
    assert [p.seed for p in llm.calls[-1][2]] == seeds
    engine.generate([[1, 3], [1, 4, 6]], SamplingParams(max_new_tokens=4, seed=4))
    assert [p.seed for p in llm.calls[-1][2]] != seeds


def test_greedy_is_temperature_zero_and_top_k_passes_through(fake_vllm, policy):
    engine, llm = make(policy)
    engine.generate([[1, 3]], SamplingParams(max_new_tokens=2, temperature=0, top_k=4))
    (params,) = llm.calls[-1][2]
    assert params.temperature == 0.0 and params.top_k == 4 and params.n == 1


def test_filtered_sampling_warns_that_the_log_probs_are_the_filtered_ones(fake_vllm, policy):
    engine, _ = make(policy)
    with pytest.warns(RuntimeWarning, match="filtered distribution.*rollout.importance_correction"):
        engine.generate([[1, 3]], SamplingParams(max_new_tokens=2, top_k=4))


# ----------------------------------------------------------------------------- completions

def test_completions_keep_the_stop_token_and_the_sampled_tokens_log_probs(fake_vllm, policy):
    """Prompt [1, 3]: sample 0 = [4, 11, EOS] (stop), sample 1 = [5, 5, 5, 5] (length). The log-prob
    of position i is the sampled token's entry (the decoy token 0 at -9 is not picked); the text
    drops the final EOS only; completions come in sample order whatever vLLM's order."""
    engine, _ = make(policy)
    (group,) = engine.generate([[1, 3]], SamplingParams(max_new_tokens=4, n=2))
    stop, length = group
    assert stop.token_ids == [4, 11, TOKENIZER_EOS] and stop.finish_reason == "stop" and stop.text == "t4 t11"
    assert stop.logprobs == pytest.approx([logprob_of(4, 0), logprob_of(11, 1), logprob_of(TOKENIZER_EOS, 2)])
    assert length.token_ids == [5, 5, 5, 5] and length.finish_reason == "length" and length.text == "t5 t5 t5 t5"
    assert length.logprobs == pytest.approx([logprob_of(5, i) for i in range(4)])
    assert stop.prompt_index == length.prompt_index == 0
    assert engine.last_stats["prompt_tokens"] == 2 and engine.last_stats["generated_tokens"] == 7
    assert engine.last_stats["weight_version"] == 0


def test_prompts_come_back_in_order_with_their_index(fake_vllm, policy):
    engine, _ = make(policy)
    out = engine.generate([[1, 3], [1, 7], [2]], SamplingParams(max_new_tokens=3, n=2))
    assert [[c.prompt_index for c in group] for group in out] == [[0, 0], [1, 1], [2, 2]]
    assert [group[0].token_ids[0] for group in out] == [4, 8, 3]


def test_a_stop_sequence_cuts_the_completion_and_is_kept(fake_vllm, policy, monkeypatch):
    """vLLM cannot stop on [11, 12]: [4, 11, 12, 8, 5] is cut after the sequence (stop), as
    HFEngine would have stopped; the sequence stays in ids and text."""
    monkeypatch.setattr(FakeLLM, "script", staticmethod(lambda prompt, s, m: ([4, 11, 12, 8, TOKENIZER_EOS], "stop")))
    engine, _ = make(policy)
    ((c,),) = engine.generate([[1, 3]], SamplingParams(max_new_tokens=6, stop_sequences=[[12, 13], [11, 12]]))
    assert c.token_ids == [4, 11, 12] and c.finish_reason == "stop" and c.text == "t4 t11 t12"
    assert c.logprobs == pytest.approx([logprob_of(4, 0), logprob_of(11, 1), logprob_of(12, 2)])


def test_an_aborted_request_is_an_error(fake_vllm, policy, monkeypatch):
    monkeypatch.setattr(FakeLLM, "script", staticmethod(lambda prompt, s, m: ([4], "abort")))
    engine, _ = make(policy)
    with pytest.raises(RuntimeError, match="finished a completion with 'abort'"):
        engine.generate([[1, 3]], SamplingParams(max_new_tokens=2))


def test_bad_prompts_are_refused_before_vllm_sees_them(fake_vllm, policy):
    engine, llm = make(policy)
    with pytest.raises(ValueError, match="token id 99 is not an int in \\[0, 32\\)"):
        engine.generate([[1, 99]], SamplingParams(max_new_tokens=2))
    assert not llm.calls


# ----------------------------------------------------------------------------- weights

def test_load_weights_reaches_vllms_model_with_every_parameter_and_bumps_the_version(fake_vllm, policy):
    engine, llm = make(policy)
    engine.load_weights(policy)
    (pairs,) = llm.model.loads
    state = policy.state_dict()
    assert [name for name, _ in pairs] == list(state)
    assert all(tensor is state[name] or torch.equal(tensor, state[name]) for name, tensor in pairs)
    assert llm.calls[-2:] == [("apply_model",), ("reset_prefix_cache",)]  # the cache held old-weight KV
    assert engine.version == 1
    engine.load_weights({name: torch.zeros_like(t) for name, t in state.items()})  # a state dict works too
    assert engine.version == 2 and all(float(t.abs().sum()) == 0 for _, t in llm.model.loads[-1])
    engine.generate([[1, 3]], SamplingParams(max_new_tokens=2))
    assert engine.last_stats["weight_version"] == 2
    with pytest.raises(TypeError, match="expected an nn.Module or a state dict"):
        engine.load_weights([1, 2])


def test_sleeping_between_steps_frees_the_gpu_after_generate_and_wakes_before_the_next_call(fake_vllm, policy):
    engine, llm = make(policy, sleep_between_steps=True)
    assert llm.kwargs["enable_sleep_mode"] is True
    sampling = SamplingParams(max_new_tokens=2)
    engine.generate([[1, 3]], sampling)      # rollouts, then sleep for the update
    engine.load_weights(policy)              # wake, push
    engine.generate([[1, 3]], sampling)      # awake already: generate, sleep
    engine.generate([[1, 3]], sampling)      # e.g. evaluation: wake, generate, sleep
    assert [call[0] if call[0] != "sleep" else call for call in llm.calls] == [
        "generate", ("sleep", 1), "wake_up", "apply_model", "reset_prefix_cache", "generate", ("sleep", 1),
        "wake_up", "generate", ("sleep", 1)]


def test_without_the_option_the_engine_never_sleeps(fake_vllm, policy):
    engine, llm = make(policy)
    engine.generate([[1, 3]], SamplingParams(max_new_tokens=2))
    engine.load_weights(policy)
    assert not {"sleep", "wake_up"} & {call[0] for call in llm.calls}


def test_close_is_idempotent_and_removes_the_saved_policy(fake_vllm, policy):
    engine, llm = make(policy)
    saved = Path(llm.kwargs["model"])
    assert saved.is_dir()
    engine.close()
    engine.close()
    assert not saved.exists()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[1, 3]], SamplingParams(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="closed"):
        engine.load_weights(policy)

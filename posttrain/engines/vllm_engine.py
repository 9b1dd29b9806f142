"""VLLMEngine: `rollout.engine: vllm` — the rollouts sampled by vLLM on the GPU, the trainer's weights pushed in place.

At construction the policy is saved in Hugging Face format (``save_pretrained``) to a temporary
directory, which vLLM loads like any checkpoint; vllm is imported only then (it is the
``posttrain[gpu]`` extra and needs CUDA). One ``generate``:

1. Each prompt goes in as token ids (``{"prompt_token_ids": ids}``, vLLM's ``TokensPrompt``), with
   its own ``vllm.SamplingParams``: ``n``, ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (our 0
   = off is vLLM's -1), ``max_tokens`` = ``max_new_tokens``, the stop tokens (``stop_token_ids``
   plus the tokenizer's and the model's EOS: vLLM is started without a tokenizer, so it knows no
   EOS of its own) and ``logprobs=0``: no top alternatives, only the sampled token's log-prob.
   Prompt ``i`` is seeded with the ``i``-th draw of a generator seeded with ``SamplingParams.seed``
   (or, when it is None, with a draw from torch's global RNG, so ``torch.manual_seed`` still makes
   a run reproducible), so prompts never share a random stream.
2. The outputs become :class:`~posttrain.engines.base.Completion` records: the token ids as
   sampled, the stop token included (vLLM keeps it in ``token_ids``); the sampled token's
   log-prob at each position; the text decoded by our tokenizer without the final stop token;
   ``finish_reason`` ``stop`` or ``length``. vLLM cannot stop on token-id *sequences*, so a
   ``SamplingParams.stop_sequences`` hit is cut afterwards (the sequence kept, ``stop``): the
   result is what stopping would have given, at the cost of the tokens sampled past it.

Log-probs. vLLM's ``logprobs_mode`` engine argument says what the returned log-probs are
(vllm/config/model.py): ``raw_logprobs`` (the default) and ``raw_logits`` are the model's
output before any logits processor — no temperature, no top-k/top-p; ``processed_logprobs`` and
``processed_logits`` are after all of them, "including temperature and top_k/top_p"
(``log_softmax`` of the temperature-scaled logits, filtered tokens at -inf and the kept ones
renormalised). The trainer recomputes ``log_softmax(logits / T)`` over the whole vocabulary
(the Completion contract), so this engine starts vLLM with ``processed_logprobs``: with top-k and
top-p off that is exactly the trainer's quantity at any temperature (``raw_logprobs`` would be it
only at T = 1), and for greedy requests vLLM applies no temperature, which matches the contract's
"greedy log-probs at T = 1". With top-k or top-p ON, no vLLM mode gives temperature-scaled but
unfiltered log-probs: the processed ones are those of the filtered, renormalised distribution
actually sampled from (≥ the unfiltered ones by −log of the kept mass). The engine warns once;
the logged ``train/sampler_logprob_gap`` then includes that mass, and
``rollout.importance_correction`` (truncated importance sampling, ``algorithms/mismatch.py``),
whose ratio π_trainer / π_sampler is exactly the correction for it, should be on.

Weights. ``load_weights(policy)`` pushes the trainer's state dict into the running vLLM model in
place (:func:`push_weights`: ``llm.apply_model(lambda model: model.load_weights(weights=...))``,
each vLLM model's own loader of Hugging Face names, which fuses q/k/v and gate/up itself), then
resets vLLM's prefix cache, whose KV blocks were computed with the old weights. Each push bumps
``version`` (0 = the weights saved at construction), reported in ``last_stats``. vLLM runs in this
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set otherwise), so the push copies tensors
on the GPU without pickling them to another process.

Colocation (``sleep_between_steps``): vLLM holds ``gpu_memory_utilization`` of the GPU (weights
plus KV cache). With the option on, the engine is started with sleep mode enabled, sleeps at
level 1 after every ``generate`` (weights offloaded to CPU memory, KV cache dropped) so the
update has the memory, and wakes up before the next ``generate`` or ``load_weights``.

Bounds. No call leaves this process: ``generate`` is bounded by the work it is given (prompts ×
``n`` × ``max_new_tokens``, and vLLM's ``max_model_len``), so ``rollout.worker_timeout_s`` (a
remote worker's timeout) does not apply. Precision: vLLM runs the weights in ``dtype`` (bf16 under
a bf16-mixed run, else the model's dtype); pure-bf16 kernels are not the trainer's bf16 autocast
over float32 weights, one more reason for the correction. LoRA policies are not supported yet.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from posttrain.engines.base import Completion, SamplingParams, check_generate_call, sampling_seed

__all__ = ["LOGPROBS_MODE", "VLLMEngine", "VLLMUnavailable", "push_weights", "to_vllm_sampling"]

# What vLLM reports as log-probs (module docstring): after temperature, top-k and top-p.
LOGPROBS_MODE = "processed_logprobs"
UNAVAILABLE = ("rollout.engine=vllm needs a CUDA GPU and the `posttrain[gpu]` extra (vllm): "
               "pip install 'posttrain[gpu]' on a machine where torch.cuda.is_available()")


class VLLMUnavailable(RuntimeError):
    """vllm cannot run here: it is not installed, or there is no CUDA GPU."""


def _import_vllm():
    """The vllm module, or a clear error when this machine cannot run it."""
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailable(f"{UNAVAILABLE} (import vllm failed: {err})") from err
    if not torch.cuda.is_available():
        raise VLLMUnavailable(f"{UNAVAILABLE} (torch.cuda.is_available() is False)")
    return vllm


def push_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``(name, tensor)`` pairs (Hugging Face names) into every worker's model, in place."""
    llm.apply_model(lambda model: model.load_weights(weights=weights))


def to_vllm_sampling(vllm: Any, sampling: SamplingParams, stop_ids: Sequence[int], seed: int):
    """Our SamplingParams as ``vllm.SamplingParams`` for one prompt seeded with ``seed``."""
    return vllm.SamplingParams(
        n=sampling.n,
        temperature=float(sampling.temperature),  # 0: greedy (vLLM then ignores top-k / top-p)
        top_p=float(sampling.top_p),
        top_k=sampling.top_k if sampling.top_k > 0 else -1,
        max_tokens=sampling.max_new_tokens,
        seed=seed,
        stop_token_ids=list(stop_ids),
        logprobs=0,         # the sampled token's log-prob only
        detokenize=False,   # we decode with our tokenizer (vLLM is started without one)
    )


class VLLMEngine:
    """Samples with vLLM on the GPU from a copy of the policy kept in sync by ``load_weights``.

    Args:
        model: the policy (a transformers causal LM); saved once at construction for vLLM to load.
        tokenizer: decodes completions and supplies the EOS id (``None``: empty texts, stops on
            ``stop_token_ids`` and the model's ``generation_config.eos_token_id`` only).
        precision: the run's resolved ``Precision``; bf16-mixed runs vLLM in bfloat16.
        dtype: overrides the dtype vLLM runs in (default: as ``precision`` says, else the model's).
        sleep_between_steps: sleep (level 1) after each ``generate``, wake before the next call.
        gpu_memory_utilization: the fraction of GPU memory vLLM may take (weights + KV cache);
            the default leaves most of it to the colocated trainer.
        max_model_len: the longest prompt + completion (default: the model config's).
        **engine_kwargs: any other ``vllm.LLM`` argument (``tensor_parallel_size``, ``enforce_eager``).

    Attributes:
        last_stats: after each ``generate``: ``prompt_tokens`` (each prompt once: vLLM prefills a
            prompt's ``n`` samples once), ``generated_tokens``, ``seconds``, ``weight_version``.
        version: pushes so far (0 = the weights the engine was built with).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, precision=None, dtype: str | torch.dtype | None = None,
                 sleep_between_steps: bool = False, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, **engine_kwargs: Any) -> None:
        vllm = _import_vllm()
        if _is_peft(model):
            raise ValueError("rollout.engine=vllm does not support LoRA policies yet (model.lora): "
                             "train the full model, or use rollout.engine=hf")
        self.tokenizer = tokenizer
        self.sleep_between_steps = bool(sleep_between_steps)
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        self.version = 0
        self.last_stats: dict[str, float] = {"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0,
                                             "weight_version": 0}
        self._vllm = vllm
        self._closed = False
        self._asleep = False
        self._warned_filtered = False
        self._eos_ids = _eos_ids(tokenizer, model)
        self._dir = tempfile.mkdtemp(prefix="posttrain-vllm-")
        try:
            model.save_pretrained(self._dir)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weight pushes copy on the GPU
            self._llm = vllm.LLM(
                model=self._dir, dtype=_dtype_name(dtype, precision, model), logprobs_mode=LOGPROBS_MODE,
                skip_tokenizer_init=True, enable_sleep_mode=self.sleep_between_steps,
                gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, **engine_kwargs)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ protocol

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions per prompt with vLLM; see the module docstring."""
        prompts = check_generate_call("VLLMEngine", self._closed, prompt_ids, sampling, self.vocab_size)
        self._warn_if_filtered(sampling)
        stop_ids = sorted(set(sampling.stop_token_ids or []) | set(self._eos_ids))
        seed = sampling_seed(sampling)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=torch.Generator().manual_seed(seed)).tolist()
        params = [to_vllm_sampling(self._vllm, sampling, stop_ids, s) for s in seeds]
        self._wake()
        start = time.perf_counter()
        try:
            outputs = self._llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        finally:
            if self.sleep_between_steps:
                self._llm.sleep(level=1)
                self._asleep = True
        if len(outputs) != len(prompts):
            raise RuntimeError(f"VLLMEngine: vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        results = []
        for i, output in enumerate(outputs):
            samples = sorted(output.outputs, key=lambda s: getattr(s, "index", 0))
            if len(samples) != sampling.n:
                raise RuntimeError(f"VLLMEngine: prompt {i} got {len(samples)} completions, expected n={sampling.n}")
            results.append([self._completion(i, s, stop_ids, sampling.stop_sequences) for s in samples])
        self.last_stats = {"prompt_tokens": sum(len(p) for p in prompts),
                           "generated_tokens": sum(len(c.token_ids) for group in results for c in group),
                           "seconds": time.perf_counter() - start, "weight_version": self.version}
        return results

    def load_weights(self, source: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Push ``source``'s weights into the vLLM model in place (one version up); see the module docstring."""
        if self._closed:
            raise RuntimeError("VLLMEngine.load_weights: the engine is closed")
        if isinstance(source, nn.Module):
            if _is_peft(source):
                raise ValueError("VLLMEngine.load_weights: LoRA policies are not supported yet")
            state = source.state_dict()
        elif isinstance(source, Mapping):
            state = source
        else:
            raise TypeError(f"VLLMEngine.load_weights: expected an nn.Module or a state dict, "
                            f"got {type(source).__name__}")
        self._wake()
        with torch.no_grad():
            push_weights(self._llm, [(name, tensor.detach()) for name, tensor in state.items()])
        self._llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version += 1

    def shares_weights(self, model: nn.Module) -> bool:
        """Never: vLLM holds its own copy, so the sampler's log-probs are the update's old log-probs
        (or, with ``rollout.importance_correction``, the denominator of its weights)."""
        return False

    def close(self) -> None:
        """Drop vLLM (its GPU memory is freed with the object, as vLLM's own shutdown tests do it)
        and remove the saved checkpoint; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def _wake(self) -> None:
        if self._asleep:
            self._llm.wake_up()
            self._asleep = False

    def _warn_if_filtered(self, sampling: SamplingParams) -> None:
        if self._warned_filtered or sampling.greedy or (sampling.top_k == 0 and sampling.top_p == 1.0):
            return
        self._warned_filtered = True
        warnings.warn(f"VLLMEngine: with top_k={sampling.top_k} / top_p={sampling.top_p} vLLM reports the log-probs "
                      "of the filtered distribution, not the unfiltered ones the trainer computes; the sampler–trainer "
                      "gap includes the filtered-out mass. Set rollout.importance_correction (token or sequence) to "
                      "correct for it", RuntimeWarning, stacklevel=3)

    def _completion(self, prompt_index: int, sample: Any, stop_ids: Sequence[int],
                    stop_sequences: list[list[int]] | None) -> Completion:
        ids = [int(t) for t in sample.token_ids]
        logprobs = _sampled_logprobs(ids, sample.logprobs, prompt_index)
        finish = sample.finish_reason
        cut = _first_stop_sequence_end(ids, stop_sequences)
        if cut is not None:  # what stopping on the sequence would have produced (it is kept)
            ids, logprobs, finish = ids[:cut], logprobs[:cut], "stop"
        elif finish not in ("stop", "length"):
            raise RuntimeError(f"VLLMEngine: prompt {prompt_index}: vLLM finished a completion with "
                               f"{finish!r} (expected 'stop' or 'length')")
        # As HFEngine: the text drops a final stop token, keeps a stop sequence.
        text_ids = ids[:-1] if finish == "stop" and ids and ids[-1] in stop_ids else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False) if self.tokenizer is not None else ""
        return Completion(prompt_index, ids, logprobs, text, finish)


def _sampled_logprobs(ids: list[int], logprobs: Any, prompt_index: int) -> list[float]:
    """The log-prob of ``ids[i]`` from vLLM's per-position ``{token_id: Logprob}`` entries."""
    if logprobs is None or len(logprobs) != len(ids):
        raise RuntimeError(f"VLLMEngine: prompt {prompt_index}: vLLM returned "
                           f"{'no' if logprobs is None else len(logprobs)} log-prob entries for {len(ids)} tokens")
    return [float(logprobs[i][token].logprob) for i, token in enumerate(ids)]


def _first_stop_sequence_end(ids: list[int], sequences: list[list[int]] | None) -> int | None:
    """The shortest prefix length of ``ids`` that ends with one of ``sequences`` (None: no hit)."""
    for end in range(1, len(ids) + 1) if sequences else ():
        if any(end >= len(s) and ids[end - len(s):end] == s for s in sequences):
            return end
    return None


def _eos_ids(tokenizer: Any, model: nn.Module) -> list[int]:
    """The tokenizer's EOS and the model's generation-config EOS id(s), as HFEngine stops on."""
    ids: set[int] = set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (getattr(tokenizer, "eos_token_id", None), generation_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _dtype_name(dtype, precision, model: nn.Module) -> str:
    """vLLM's ``dtype``: the one given, bfloat16 under bf16-mixed, else the model's own."""
    if dtype is None:
        dtype = torch.bfloat16 if getattr(precision, "autocast_dtype", None) == torch.bfloat16 else _model_dtype(model)
    return str(dtype).removeprefix("torch.")


def _model_dtype(model: nn.Module) -> torch.dtype:
    return getattr(model, "dtype", None) or next(model.parameters()).dtype


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)

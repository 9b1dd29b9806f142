"""The DPO recipe's data path: bad preference rows name file/row/field (or are skipped and counted),
KTO's unpaired rows, the batch layout, mismatched pairs, and response log-probs."""

import json
import random

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.config import DataConfig, EvalConfig
from posttrain.data.readers import DataError
from posttrain.data.tokenize import TokenizedExample, TokenizedPair
from posttrain.models import sequence_logprobs as dpo_logps
from posttrain.recipes.preference.dpo_data import PreferenceSplit, load_dpo_data, mismatched_sequences

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["\n", " ", "user", "assistant", "hi", "hello", "fine", "bad", "good", "very", "2+2=", "4", "5"]


@pytest.fixture(scope="module")
def tok():
    vocab = {w: i for i, w in enumerate(["<|pad|>", "<|im_start|>", "<|im_end|>", "<unk>"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", chat_template=CHATML,
                                   eos_token="<|im_end|>", pad_token="<|pad|>",
                                   additional_special_tokens=["<|im_start|>"])


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def load(path, tok, *, unpaired_ok=False, **data):
    cfg = DataConfig(train=path, eval_fraction=0.0, max_length=data.pop("max_length", 32), **data)
    return load_dpo_data(cfg, tok, eval_cfg=EvalConfig(), unpaired_ok=unpaired_ok, seed=0)


GOOD = {"prompt": "hi", "chosen": "good", "rejected": "bad"}
LONG = " ".join(["hello"] * 20)  # 39 tokens (plain text: no chat template)


@pytest.mark.parametrize("row, field, reason", [
    ({"prompt": "hi", "rejected": "bad"}, "chosen", "missing"),
    ({"prompt": "hi", "chosen": "good"}, "rejected", "missing"),
    ({"prompt": "hi", "chosen": "good", "rejected": "good"}, "rejected", "identical to 'chosen'"),
    ({"prompt": "hi", "chosen": "  ", "rejected": "bad"}, "chosen", "empty"),
    ({"prompt": LONG, "chosen": "good", "rejected": "bad"}, "prompt",
     "39 prompt tokens before the response, longer than max_length=32"),
    ({"prompt": "hi", "chosen": "good", "rejected": LONG}, "rejected", "41 tokens, longer than max_length=32"),
])
def test_bad_pairs_name_file_line_and_field(tmp_path, tok, row, field, reason):
    path = write(tmp_path / "prefs.jsonl", [GOOD, GOOD, row])
    with pytest.raises(DataError, match=f"prefs.jsonl, line 3, field '{field}': {reason}"):
        load(path, tok)


def test_bad_pairs_are_skipped_and_counted(tmp_path, tok):
    rows = [GOOD, {"prompt": "hi", "chosen": "good"}, {**GOOD, "rejected": "good"}, {**GOOD, "prompt": LONG},
            {**GOOD, "chosen": "very good"}]
    data = load(write(tmp_path / "prefs.jsonl", rows), tok, on_bad_row="skip")
    assert len(data.train) == 2 and data.skipped == 3


def test_unpaired_rows_for_kto_and_their_errors(tmp_path, tok):
    rows = [{"prompt": "hi", "completion": "good", "label": True},
            {"prompt": "hi", "completion": "bad", "label": False},
            {"prompt": "hello", "completion": "fine", "label": True}]
    data = load(write(tmp_path / "kto.jsonl", rows), tok, unpaired_ok=True)
    assert data.train.units == [(0,), (1,), (2,)] and data.train.desirable == [True, False, True]
    assert not data.train.paired
    # A pairwise loss reads the same file as pairs, and says what is missing.
    with pytest.raises(DataError, match="kto.jsonl, line 1, field 'chosen': missing"):
        load(str(tmp_path / "kto.jsonl"), tok, unpaired_ok=False)
    bad = write(tmp_path / "bad.jsonl", rows[:1] + [{"prompt": "hi", "completion": "bad", "label": "no"}])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'label': expected true .* got 'no'"):
        load(bad, tok, unpaired_ok=True)


def test_unpaired_training_rows_with_held_out_pairs(tmp_path, tok):
    train = write(tmp_path / "kto.jsonl", [{"prompt": "hi", "completion": "good", "label": True},
                                           {"prompt": "hi", "completion": "bad", "label": False}])
    held_out = write(tmp_path / "pairs.jsonl", [GOOD, {"prompt": "hello", "chosen": "fine", "rejected": "bad"}])
    data = load(train, tok, unpaired_ok=True, eval=held_out)
    assert not data.train.paired and data.eval.paired and len(data.eval) == 2


def _seq(ids, prompt_length):
    return TokenizedExample(list(ids), [0] * prompt_length + [1] * (len(ids) - prompt_length))


def test_rows_put_chosen_first_so_pair_i_is_rows_i_and_b_plus_i():
    pairs = [TokenizedPair(_seq([1, 2, 3], 2), _seq([1, 2, 4], 2), 2),
             TokenizedPair(_seq([5, 6], 1), _seq([5, 7], 1), 1)]
    split = PreferenceSplit.from_pairs(pairs)
    assert split.units == [(0, 1), (2, 3)] and split.desirable == [True, False, True, False]
    assert split.rows([1, 0]) == [2, 0, 3, 1]


def test_mismatched_sequences_pair_each_prompt_with_another_units_response():
    pairs = [TokenizedPair(_seq([10 * u, 10 * u + 1], 1), _seq([10 * u, 10 * u + 2], 1), 1) for u in range(1, 6)]
    split = PreferenceSplit.from_pairs(pairs)
    kl = mismatched_sequences(split, seed=3)
    assert kl == mismatched_sequences(split, seed=3)  # fixed for the run: its reference log-probs can be cached
    for index, sequence in enumerate(kl):
        own_prompt = split.sequences[index].input_ids[0]
        response = sequence.input_ids[1]
        assert sequence.input_ids[0] == own_prompt and sequence.loss_mask == [0, 1]
        assert response // 10 != own_prompt // 10  # another unit's response ...
        assert response % 10 == 1 + (index % 2)  # ... from the same slot (chosen with chosen)
    with pytest.raises(ValueError, match="at least 2"):
        mismatched_sequences(PreferenceSplit.from_pairs(pairs[:1]), seed=0)


@pytest.fixture(scope="module")
def small_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("masked_logits", [True, False])
def test_sequence_logps_sum_response_tokens_only(small_lm, monkeypatch, masked_logits):
    monkeypatch.setattr(dpo_logps, "keeps_masked_logits", lambda model: masked_logits)
    sequences = [_seq([3, 4, 5, 6, 7], 3), _seq([8, 9, 10], 1), _seq([11, 12, 13, 14], 2)]
    sums, counts = dpo_logps.sequence_logps(small_lm, sequences, pad_id=0)
    assert counts.tolist() == [2, 2, 2]
    for row, seq in enumerate(sequences):  # each sequence alone, full logits, no padding
        ids = torch.tensor([seq.input_ids])
        logps = token_logprobs(small_lm(input_ids=ids).logits, ids)[0]
        expected = sum(logps[t - 1] for t in range(len(seq)) if seq.loss_mask[t])
        assert sums[row].item() == pytest.approx(expected.item(), abs=1e-5)


def test_pair_logps_run_the_shared_prompt_once_with_the_same_values_and_gradients(small_lm):
    """Prompts of different lengths (left padding), responses of different lengths, an unmasked
    token at the start of one response: the values and the parameter gradients of the summed
    log-probs match two full forwards per pair."""
    rng = random.Random(0)
    pairs, prompt_lengths = 5, []
    sequences = [None] * (2 * pairs)
    for i in range(pairs):
        prompt = [rng.randrange(1, 40) for _ in range(rng.randint(1, 7))]
        prompt_lengths.append(len(prompt))
        for side in range(2):
            response = [rng.randrange(1, 40) for _ in range(rng.randint(1, 5))]
            mask = [0] * len(prompt) + [1] * len(response)
            if side == 1 and len(response) > 1:
                mask[len(prompt)] = 0
            sequences[i + side * pairs] = TokenizedExample(prompt + response, mask)

    def values_and_grads(fn, *args):
        small_lm.zero_grad(set_to_none=True)
        sums, counts = fn(small_lm, *args)
        (sums * torch.linspace(0.5, 1.5, len(sums))).sum().backward()
        return sums.detach(), counts, [p.grad.clone() for p in small_lm.parameters()]

    full = values_and_grads(dpo_logps.sequence_logps, sequences, 0)
    shared = values_and_grads(dpo_logps.pair_logps, sequences, prompt_lengths, 0)
    small_lm.zero_grad(set_to_none=True)
    torch.testing.assert_close(shared[0], full[0], rtol=1e-5, atol=1e-5)
    assert shared[1].tolist() == full[1].tolist()
    for a, b in zip(shared[2], full[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="do not share"):
        dpo_logps.pair_logps(small_lm, sequences, [p + 1 for p in prompt_lengths], 0)

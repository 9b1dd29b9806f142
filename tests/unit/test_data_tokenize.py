"""Tokenisation and loss masks, checked token by token with a word-level tokenizer built here.

The tokenizer maps each word and each single whitespace character to one token, so a rendered
conversation can be written out by hand, token for token.
"""

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from posttrain.data.examples import PreferenceExample, PromptExample, SFTExample
from posttrain.data.readers import DataError
from posttrain.data.tokenize import encode_text, tokenize_preference, tokenize_prompt, tokenize_sft

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<unk>", "<s>"]
WORDS = ["\n", " ", "system", "user", "assistant", "be", "brief", "hi", "hello", "how", "are", "you",
         "fine", "thanks", "2+2=", "4", "5", "User:", "Assistant:", "good", "bad"]


def make_tokenizer(chat_template=CHATML, **special):
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
    special = {"eos_token": "<|im_end|>", "pad_token": "<|pad|>", **special}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", chat_template=chat_template,
                                   additional_special_tokens=["<|im_start|>"], **special)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


SYSTEM = {"role": "system", "content": "be brief"}
HI = {"role": "user", "content": "hi"}
HELLO = {"role": "assistant", "content": "hello"}
HOW = {"role": "user", "content": "how are you"}
FINE = {"role": "assistant", "content": "fine thanks"}


def test_conversation_mask_covers_assistant_turns_through_eos(tok):
    example = SFTExample([SYSTEM, HI], [HELLO, HOW, FINE])
    out = tokenize_sft(example, tok, max_length=64)
    # (token, loss) written out by hand: only assistant content and its <|im_end|> are learned;
    # the newline after <|im_end|> is template glue, not part of the turn.
    expected = [
        ("<|im_start|>", 0), ("system", 0), ("\n", 0), ("be", 0), (" ", 0), ("brief", 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("user", 0), ("\n", 0), ("hi", 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("assistant", 0), ("\n", 0), ("hello", 1), ("<|im_end|>", 1), ("\n", 0),
        ("<|im_start|>", 0), ("user", 0), ("\n", 0), ("how", 0), (" ", 0), ("are", 0), (" ", 0), ("you", 0),
        ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("assistant", 0), ("\n", 0), ("fine", 1), (" ", 1), ("thanks", 1), ("<|im_end|>", 1),
        ("\n", 0),
    ]
    assert list(zip(tokens(tok, out.input_ids), out.loss_mask)) == expected
    # Same ids as transformers' own tokenising path (a BatchEncoding dict in 5.x).
    reference = tok.apply_chat_template([SYSTEM, HI, HELLO, HOW, FINE], tokenize=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert out.input_ids == list(reference)


def test_prompt_side_assistant_turns_are_not_learned(tok):
    # Conversational prompt/completion: the assistant turn inside the prompt is history only.
    out = tokenize_sft(SFTExample([HI, HELLO, HOW], [FINE]), tok, max_length=64)
    learned = [t for t, m in zip(tokens(tok, out.input_ids), out.loss_mask) if m]
    assert learned == ["fine", " ", "thanks", "<|im_end|>"]


def test_other_template_without_eos_masks_whole_turn():
    # "User: hi\nAssistant: hello\n": no EOS inside the turn, so the whole rendered turn
    # (content and its newline) is learned. Shows the span search does not depend on ChatML.
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {% else %}Assistant: {% endif %}"
                "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}")
    tok = make_tokenizer(template)
    out = tokenize_sft(SFTExample([HI], [HELLO]), tok, max_length=64)
    expected = [("User:", 0), (" ", 0), ("hi", 0), ("\n", 0), ("Assistant:", 0), (" ", 0), ("hello", 1), ("\n", 1)]
    assert list(zip(tokens(tok, out.input_ids), out.loss_mask)) == expected


def test_template_breaking_prefix_property_is_a_clear_error():
    # Starts with the number of messages, so a shorter conversation is never a prefix of a longer one.
    tok = make_tokenizer("{{ messages | length }}" + CHATML)
    with pytest.raises(DataError, match=r"row 3: the chat template does not render message 1's history as a prefix"):
        tokenize_sft(SFTExample([HI], [HELLO], source="d.json", row=3), tok, max_length=64)


def test_plain_text_completion_mask(tok):
    out = tokenize_sft(SFTExample("2+2=", "4"), tok, max_length=8)
    # prompt "2+2=" (no loss), completion "4" and the appended EOS (loss).
    assert tokens(tok, out.input_ids) == ["2+2=", "4", "<|im_end|>"]
    assert out.loss_mask == [0, 1, 1]


def test_plain_text_prompt_gets_bos_when_tokenizer_has_one():
    tok = make_tokenizer(bos_token="<s>")
    assert tokens(tok, encode_text(tok, "2+2=")) == ["<s>", "2+2="]
    out = tokenize_sft(SFTExample("2+2=", "4"), tok, max_length=8)
    assert out.loss_mask == [0, 0, 1, 1]


def test_too_long_is_a_data_error_naming_the_row(tok):
    # 17 tokens: 5 + 6 + 6 (see the expected list above, first three turns: system, user, assistant).
    example = SFTExample([SYSTEM, HI], [HELLO], source="data/train.jsonl", row=4)
    assert len(tokenize_sft(example, tok, max_length=20)) == 20
    with pytest.raises(DataError, match=r"data/train\.jsonl, line 4: 20 tokens, longer than max_length=19"):
        tokenize_sft(example, tok, max_length=19)


def test_tokenize_prompt_messages_and_text(tok):
    ids = tokenize_prompt(PromptExample([HI], {"answer": "x"}), tok)
    assert tokens(tok, ids) == ["<|im_start|>", "user", "\n", "hi", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert tokens(tok, tokenize_prompt("how are you", tok)) == ["how", " ", "are", " ", "you"]


def test_preference_pair_shares_prompt_and_masks_responses(tok):
    pair = tokenize_preference(PreferenceExample([HI], "hello", "fine thanks"), tok, max_length=32)
    prompt = ["<|im_start|>", "user", "\n", "hi", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert pair.prompt_length == 9
    assert tokens(tok, pair.chosen.input_ids) == prompt + ["hello", "<|im_end|>", "\n"]
    assert pair.chosen.loss_mask == [0] * 9 + [1, 1, 0]
    assert tokens(tok, pair.rejected.input_ids) == prompt + ["fine", " ", "thanks", "<|im_end|>", "\n"]
    assert pair.rejected.loss_mask == [0] * 9 + [1, 1, 1, 1, 0]


def test_plain_preference_pair_and_length_error(tok):
    pair = tokenize_preference(PreferenceExample("2+2=", "4", "5"), tok, max_length=3)
    assert (pair.chosen.input_ids[0], pair.prompt_length) == (pair.rejected.input_ids[0], 1)
    assert pair.chosen.loss_mask == pair.rejected.loss_mask == [0, 1, 1]
    long = PreferenceExample("2+2=", "4", "fine thanks", source="p.jsonl", row=2)
    with pytest.raises(DataError, match=r"p\.jsonl, line 2, field 'rejected': 5 tokens, longer than max_length=4"):
        tokenize_preference(long, tok, max_length=4)


def test_missing_chat_template_is_explained():
    tok = make_tokenizer(chat_template=None)
    with pytest.raises(ValueError, match="no chat_template"):
        tokenize_prompt([HI], tok)


def test_a_tool_use_conversation_trains_on_the_calls_and_final_answer_not_on_tool_results(tmp_path):
    """The tiny model's template (Qwen-style tools): the system turn lists the tools, assistant
    turns render their tool_calls; the mask covers each assistant turn through its <|im_end|>."""
    from transformers import AutoTokenizer

    from posttrain.data.examples import load_examples
    from posttrain.models.tiny import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find a code.",
                                                "parameters": {"type": "object", "properties": {
                                                    "name": {"type": "string"}}, "required": ["name"]}}}]
    row = {"tools": tools, "messages": [
        {"role": "user", "content": "code of ada?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "lookup", "arguments": {"name": "ada"}}}]},
        {"role": "tool", "name": "lookup", "content": "107"},
        {"role": "assistant", "content": "107"}]}
    path = tmp_path / "sft.jsonl"
    path.write_text(__import__("json").dumps(row) + "\n")
    (example,) = load_examples(str(path), "sft").examples
    assert example.tools == tools
    tokenized = tokenize_sft(example, tokenizer, max_length=1024)
    ids, mask = tokenized.input_ids, tokenized.loss_mask
    text = tokenizer.decode(ids)
    assert '"name": "lookup"' in text.split("<|im_end|>")[0]  # the schemas are in the system turn
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == ('<tool_call>\n{"name": "lookup", "arguments": {"name": "ada"}}\n</tool_call><|im_end|>'
                       "107<|im_end|>")
    with pytest.raises(DataError, match="tools"):
        path.write_text(__import__("json").dumps({**row, "tools": "lookup"}) + "\n")
        load_examples(str(path), "sft")

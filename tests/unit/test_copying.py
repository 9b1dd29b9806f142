"""Copy and look-up drills (posttrain/envs/copying.py): well-formed, answerable, reproducible."""

import pytest

from posttrain.envs.copying import copy_drill_rows, drill_words

WORDS = drill_words(['{"sheet": "Orders", "sql": "SELECT SUM(Price) FROM Products WHERE Date < DATE \'2024-08-14\'"}',
                     "Employees: 10 rows\nP07 Tools 15.5"])


def test_words_are_the_corpus_tokens_without_punctuation_around_them():
    assert {"Orders", "Products", "2024-08-14", "P07", "15.5", "Employees"} <= set(WORDS)
    assert all(c not in w for w in WORDS for c in "\"': ") and WORDS == sorted(set(WORDS))


def test_repeat_drills_ask_for_the_words_and_look_ups_for_the_keys_value():
    kinds = ("repeat", "look_up")
    rows = copy_drill_rows(WORDS, 40, seed=3, min_words=3, max_words=6, kinds=kinds)
    assert rows == copy_drill_rows(WORDS, 40, seed=3, min_words=3, max_words=6, kinds=kinds)
    assert rows != copy_drill_rows(WORDS, 40, seed=4, min_words=3, max_words=6, kinds=kinds)
    for i, row in enumerate(rows):
        user, answer = (m["content"] for m in row["messages"])
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        if i % 2 == 0:
            assert user == "Repeat: " + answer and 3 <= len(answer.split()) <= 6
        else:
            *pairs, question = user.split("\n")
            table = dict(p.split(" = ") for p in pairs)
            assert len(table) == len(pairs)  # distinct keys: one right answer
            key = question.removeprefix("Value of ").removesuffix("?")
            assert table[key] == answer


def test_the_default_is_repeats_only():
    rows = copy_drill_rows(WORDS, 6, seed=0, max_words=10)
    assert all(r["messages"][0]["content"].startswith("Repeat: ") for r in rows)
    assert all(6 <= len(r["messages"][1]["content"].split()) <= 10 for r in rows)


def test_too_few_words_or_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="at least 14 distinct words"):
        copy_drill_rows(["a", "b"], 4)
    with pytest.raises(ValueError, match="kinds"):
        copy_drill_rows(WORDS, 4, max_words=10, kinds=("echo",))
    with pytest.raises(ValueError, match="min_words <= max_words"):
        copy_drill_rows(WORDS, 4, min_words=5, max_words=4)

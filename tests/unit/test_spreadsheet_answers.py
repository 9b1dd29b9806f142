"""answer_matches: numeric tolerance and formats, text normalisation, sets vs ordered lists,
dates, and garbage that must score False without raising."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from posttrain.envs.spreadsheet.answers import answer_matches, parse_date, parse_number


@pytest.mark.parametrize("predicted, expected, result", [
    ("42", 42, True), ("42.0", 42, True), (" 42 ", "42", True), ("-454.51", -454.50999999999993, True),
    # Tolerance: |p - e| <= max(1e-4 * |e|, 1e-6). 589.8728571 * 1e-4 = 0.059.
    ("589.872857", 589.8728571428571, True), ("589.87", 589.8728571428571, True), ("589.93", 589.8728571428571, True),
    ("589.94", 589.8728571428571, False), ("589.97", 589.8728571428571, False),
    ("0.0000005", 0, True), ("0.000002", 0, False), ("100001", 100000, True), ("100011", 100000, False),
    # Formats: separators, currency, percent (either reading), a unit word.
    ("1,234.5", 1234.5, True), ("$1234.50", 1234.5, True), ("€ 1,234,567", 1234567, True), ("12%", 0.12, True),
    ("12 %", 12, True), ("12%", 0.13, False), ("about 42 units", 42, True), ("\u221212", -12, True),
    # Not one clean number.
    ("3 or 4", 3, False), ("2024-03-05", 2024, False), ("12,5", 12.5, False), ("1.2.3", 1.2, False),
    ("P16", 16, False), ("", 0, False), ("nan", 1, False), ("inf", 1, False), ("1e400", 1, False),
])
def test_numbers(predicted, expected, result):
    assert answer_matches(predicted, expected, "number") is result


@pytest.mark.parametrize("predicted, expected, result", [
    ("North", "North", True), ("  'north'. ", "North", True), ("NORTH\n", "North", True),
    ("North   America", "north america", True), ("“Office”", "Office", True), ("P16", "P16", True),
    ("South", "North", False), ("The answer is North", "North", False), ("", "North", False), ("..", "", False),
])
def test_text(predicted, expected, result):
    assert answer_matches(predicted, expected, "text") is result


@pytest.mark.parametrize("predicted, expected, ordered, result", [
    ("Widget, Gizmo", ["Gizmo", "Widget"], False, True),
    ("gizmo;widget", ["Gizmo", "Widget"], False, True),
    ("- Gizmo\n- Widget", ["Gizmo", "Widget"], False, True),
    ("1. Gizmo\n2. Widget", ["Gizmo", "Widget"], False, True),
    ("Gizmo, Widget and Lamp", ["Gizmo", "Widget", "Lamp"], False, True),
    ('["Widget", "Gizmo"]', ["Gizmo", "Widget"], False, True),
    ("Gizmo, Gizmo, Widget", ["Gizmo", "Widget"], False, True),         # a set: repeats do not count
    ("Gizmo", ["Gizmo", "Widget"], False, False),                       # one missing
    ("Gizmo, Widget, Lamp", ["Gizmo", "Widget"], False, False),         # one extra
    ("1004.0, 1001", ["1001", "1004"], False, True),                    # numbers compare as numbers
    ("Research and Development, Sales", ["Research and Development", "Sales"], False, True),  # "and" kept
    ("Gadget, Widget", ["Gadget", "Widget"], True, True),
    ("Widget, Gadget", ["Gadget", "Widget"], True, False),             # order matters when ordered
    ("Gadget, Widget, Gizmo", ["Gadget", "Widget"], True, False),
    ("Gadget, Widget", "Gadget, Widget", True, True),                   # a user's answer given as text
    ("", ["Gadget"], False, False),
])
def test_lists(predicted, expected, ordered, result):
    assert answer_matches(predicted, expected, "list", ordered=ordered) is result


@pytest.mark.parametrize("predicted, expected, result", [
    ("2024-03-05", "2024-03-05", True), ("2024-03-05T00:00:00", "2024-03-05", True), ("2024/3/5", "2024-03-05", True),
    ("March 5, 2024", "2024-03-05", True), ("5 Mar 2024", "2024-03-05", True), ("5th March 2024", "2024-03-05", True),
    ("Hired on 2024-03-05.", "2024-03-05", True), ("15/03/2024", "2024-03-15", True),
    ("03/15/2024", "2024-03-15", True),
    ("03/05/2024", "2024-03-05", False),                                # ambiguous: rejected, not guessed
    ("2024-03-06", "2024-03-05", False), ("2024-13-45", "2024-03-05", False), ("yesterday", "2024-03-05", False),
    ("2024-03-05", dt.date(2024, 3, 5), True), ("2024-03-05", pd.Timestamp("2024-03-05"), True),
])
def test_dates(predicted, expected, result):
    assert answer_matches(predicted, expected, "date") is result


@pytest.mark.parametrize("garbage", [None, object(), b"\xff\xfe", "\x00" * 5, "[1, 2", "9" * 5000, ["a"], {"x": 1}])
@pytest.mark.parametrize("kind", ["number", "text", "list", "date"])
def test_garbage_is_false_never_an_exception(garbage, kind):
    expected = {"number": 3, "text": "North", "list": ["a", "b"], "date": "2024-03-05"}[kind]
    assert answer_matches(garbage, expected, kind) is False


def test_unknown_kind_is_a_dataset_error():
    with pytest.raises(ValueError, match="unknown answer kind 'colour'"):
        answer_matches("red", "red", "colour")


def test_parsers():
    assert parse_number("$1,234.50") == (1234.5, False) and parse_number("12%") == (12.0, True)
    assert parse_number("1 2") is None and parse_number("none") is None
    assert parse_date("March 5, 2024") == dt.date(2024, 3, 5) and parse_date("03/05/2024") is None

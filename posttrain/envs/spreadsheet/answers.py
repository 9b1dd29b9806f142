"""Does a predicted answer match the expected one? Numbers, text, lists and dates.

`answer_matches` is the environment's reward check, so it must be hard to game and never crash
on what a policy writes: anything it cannot read is simply False.

- number: the prediction must contain exactly one number ("42", "$1,234.50", "about 12 units";
  "3 or 4" and "2024-03-05" are rejected). It matches when ``|p - e| <= max(1e-4 * |e|, 1e-6)``:
  relative, because answers range from ratios near 1 to sums in the hundred-thousands, and 1e-4
  lets a model copy a value at the 6 decimals the tools print (or round to 4-5 significant
  digits) while still telling 589.87 from 589.97; the absolute floor only matters for an expected 0.
  Thousands separators must be well formed ("1,234" yes, "12,5" no). A percent sign allows both
  readings: "12%" matches 12 and 0.12, since a question's "share" may be asked either way.
- text: compared after Unicode NFKC, case folding, collapsing inner whitespace and stripping
  surrounding whitespace, quotes and punctuation ("  'North'. " == "north").
- list: items split on commas, semicolons, newlines and " and " (unless an expected item contains
  " and "); a JSON list also works; list bullets ("- ", "1. ") dropped. Items compare as numbers
  when both sides are plain numbers, else as text.
  Unordered lists compare as sets (duplicates ignored); ordered ones item by item.
- date: ISO (2024-03-05, optionally with a time), 2024/03/05, "March 5, 2024", "5 Mar 2024", and
  day/month/year or month/day/year only when unambiguous (a part above 12, or day == month):
  "03/05/2024" could be either, so it is rejected rather than guessed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import string
import unicodedata
from typing import Any, Callable

__all__ = ["ABS_TOL", "REL_TOL", "answer_matches", "normalise_text", "parse_date", "parse_number"]

REL_TOL = 1e-4
ABS_TOL = 1e-6
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(\s*%)?"
                     r"|(?<![\w.])[-+]?\.\d+(\s*%)?")
_ANY_DIGITS = re.compile(r"\d+")
_LETTER = re.compile(r"[^\W\d_]")
_STRIP = string.whitespace + string.punctuation + "“”‘’«»…"
_BULLET = re.compile(r"^(?:[-*•]|\d+[.)])\s+")
_ISO = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?!\d)")
_NUMERIC_DATE = re.compile(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})$")
_MONTH_FORMATS = ("%B %d %Y", "%b %d %Y", "%d %B %Y", "%d %b %Y")


def answer_matches(predicted: Any, expected: Any, kind: str, ordered: bool = False) -> bool:
    """True when `predicted` (the model's answer text) matches `expected` under `kind`
    ("number" | "text" | "list" | "date"); `ordered` applies to lists. False for anything that
    cannot be read, never an exception, except a ValueError for an unknown `kind` (a dataset bug,
    not the model's)."""
    if kind not in _MATCHERS:
        raise ValueError(f"unknown answer kind {kind!r}; use one of {sorted(_MATCHERS)}")
    if predicted is None:
        return False
    try:
        return bool(_MATCHERS[kind](str(predicted), expected, ordered))
    except Exception:  # noqa: BLE001 - whatever the model wrote, a failed read is a wrong answer
        return False


def parse_number(text: Any) -> tuple[float, bool] | None:
    """``(value, had_percent_sign)`` of the one number in `text`, or None (none, or several)."""
    text = unicodedata.normalize("NFKC", str(text)).replace("\u2212", "-")
    matches = list(_NUMBER.finditer(text))
    if len(matches) != 1:
        return None
    match = matches[0]
    # Digits outside the match mean a malformed number ("12,5", "1.2.3"): not a clean answer.
    rest = text[:match.start()] + " " + text[match.end():]
    if _ANY_DIGITS.search(rest):
        return None
    token = match.group(0)
    percent = "%" in token
    value = float(token.replace("%", "").replace(",", "").strip())
    return (value, percent) if math.isfinite(value) else None


def normalise_text(text: Any) -> str:
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    return " ".join(text.split()).strip(_STRIP)


def parse_date(value: Any) -> dt.date | None:
    """A date from a date / datetime object or text in the formats of the module docstring."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = unicodedata.normalize("NFKC", str(value)).strip().strip(" \t\n'\"“”‘’.,;:!?()[]")
    found = _ISO.findall(text)
    if len(found) == 1:
        year, month, day = (int(p) for p in found[0])
        return _date(year, month, day)
    if found:
        return None
    numeric = _NUMERIC_DATE.match(text)
    if numeric:
        a, b, year = (int(p) for p in numeric.groups())
        if a > 12 or a == b:
            return _date(year, b, a)  # day/month/year
        if b > 12:
            return _date(year, a, b)  # month/day/year
        return None  # ambiguous: 03/05 is March 5 or 3 May
    words = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text.replace(",", " ").replace("-", " "))
    words = " ".join(words.split())
    for fmt in _MONTH_FORMATS:
        try:
            return dt.datetime.strptime(words, fmt).date()
        except ValueError:
            continue
    return None


def _date(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:  # 2024-13-45
        return None


def _close(predicted: float, expected: float) -> bool:
    return abs(predicted - expected) <= max(REL_TOL * abs(expected), ABS_TOL)


def _number_matches(predicted: str, expected: Any, ordered: bool) -> bool:
    if isinstance(expected, bool):
        return False
    if isinstance(expected, (int, float)):
        target = float(expected)
    else:
        parsed = parse_number(expected)
        if parsed is None:
            return False
        target = parsed[0] / 100 if parsed[1] else parsed[0]
    guess = parse_number(predicted)
    if guess is None or not math.isfinite(target):
        return False
    value, percent = guess
    return _close(value, target) or (percent and _close(value / 100, target))


def _text_matches(predicted: str, expected: Any, ordered: bool) -> bool:
    wanted = normalise_text(expected)
    return bool(wanted) and normalise_text(predicted) == wanted


def _date_matches(predicted: str, expected: Any, ordered: bool) -> bool:
    wanted = parse_date(expected)
    return wanted is not None and parse_date(predicted) == wanted


def _items(value: Any, split_and: bool = False) -> list[str]:
    if isinstance(value, (list, tuple)):
        raw = [str(v) for v in value]
    else:
        text = str(value).strip()
        raw = None
        if text.startswith("["):
            try:
                loaded = json.loads(text)
                raw = [str(v) for v in loaded] if isinstance(loaded, list) else None
            except ValueError:
                raw = None
        if raw is None:
            raw = re.split(r"[,;\n]|\s+and\s+" if split_and else r"[,;\n]", text)
    items = []
    for item in raw:
        item = _BULLET.sub("", item.strip())
        item = re.sub(r"^and\s+", "", item, flags=re.IGNORECASE)
        if normalise_text(item):
            items.append(item)
    return items


def _item_matches(predicted: str, expected: str) -> bool:
    a, b = parse_number(predicted), parse_number(expected)
    if a is not None and b is not None and not _LETTER.search(predicted + expected):  # "1003" vs "1003.0"
        return _close(a[0], b[0])
    return normalise_text(predicted) == normalise_text(expected)


def _list_matches(predicted: str, expected: Any, ordered: bool) -> bool:
    wanted = _items(expected)
    # "a, b and c" is a list of three, unless an expected item itself contains " and ".
    guess = _items(predicted, split_and=not any(re.search(r"\sand\s", w, re.IGNORECASE) for w in wanted))
    if not wanted:
        return not guess
    if ordered:
        return len(guess) == len(wanted) and all(_item_matches(g, w) for g, w in zip(guess, wanted))
    guess, wanted = _distinct(guess), _distinct(wanted)
    if len(guess) != len(wanted):
        return False
    unmatched = list(guess)
    for item in wanted:  # greedy is exact here: distinct items match at most one counterpart each
        hit = next((g for g in unmatched if _item_matches(g, item)), None)
        if hit is None:
            return False
        unmatched.remove(hit)
    return True


def _distinct(items: list[str]) -> list[str]:
    seen, kept = set(), []
    for item in items:
        key = normalise_text(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


_MATCHERS: dict[str, Callable[[str, Any, bool], bool]] = {
    "number": _number_matches, "text": _text_matches, "list": _list_matches, "date": _date_matches}

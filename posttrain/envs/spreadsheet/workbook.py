"""Procedural workbooks: small themed tables with keys, so questions can filter, group and join.

Four themes, each a sheet (the sheet name is the theme's title):

    Sales      Region, Product, Date, Units, Revenue
    Employees  Name, Department, Hired, Salary
    Products   ProductID, Name, Category, Price
    Orders     OrderID, ProductID, Quantity, Date        (ProductID refers to Products)

Orders draws its ProductIDs from the Products sheet of the same workbook, and Sales its product
names from Products' names, so a join across sheets has matching keys; a workbook that has
Orders gets Products too when the spec allows it. Key columns (ProductID, OrderID, Name) are
never blank and are kept whatever `column_types` says, since questions find rows by them.

The tables are deliberately small (the first policy trained here has a 1-2k token context) and
every value is drawn from a `random.Random` seeded by a string, so a seed gives the same
workbook in every process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any, Callable

import pandas as pd

from posttrain.envs.spreadsheet.tables import make_frame

__all__ = ["DIFFICULTIES", "THEMES", "WorkbookSpec", "generate_workbook"]

DIFFICULTIES = ("easy", "medium", "hard")
THEMES = ("sales", "employees", "products", "orders")
_TITLES = {"sales": "Sales", "employees": "Employees", "products": "Products", "orders": "Orders"}
# Column -> type, per theme; the generator below fills them in this order.
_COLUMNS = {
    "sales": {"Region": "text", "Product": "text", "Date": "date", "Units": "int", "Revenue": "float"},
    "employees": {"Name": "text", "Department": "text", "Hired": "date", "Salary": "int"},
    "products": {"ProductID": "text", "Name": "text", "Category": "text", "Price": "float"},
    "orders": {"OrderID": "int", "ProductID": "text", "Quantity": "int", "Date": "date"},
}
_KEYS = {"sales": (), "employees": ("Name",), "products": ("ProductID", "Name"), "orders": ("OrderID", "ProductID")}

_REGIONS = ("North", "South", "East", "West")
_PRODUCT_NAMES = ("Widget", "Gadget", "Gizmo", "Sprocket", "Bolt", "Lamp", "Chair", "Desk", "Kettle", "Drill",
                  "Hammer", "Rake", "Mug", "Stapler", "Puzzle", "Kite")
_CATEGORIES = ("Tools", "Home", "Office", "Garden", "Toys")
_DEPARTMENTS = ("Sales", "Support", "Finance", "Marketing", "Research")
_FIRST = ("Ana", "Ben", "Cara", "Dan", "Eve", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kim", "Leo")
_LAST = ("Park", "Stone", "Reyes", "Moss", "Khan", "Berg", "Lund", "Cole", "Diaz", "Shaw")

# Defaults per difficulty: (num_sheets, min_rows, max_rows, blank_fraction).
_PRESETS = {"easy": (1, 6, 10, 0.0), "medium": (2, 10, 16, 0.0), "hard": (3, 14, 24, 0.05)}


@dataclasses.dataclass(frozen=True)
class WorkbookSpec:
    """What a generated workbook looks like (the seed is `generate_workbook`'s argument).

    Attributes:
        difficulty: "easy" | "medium" | "hard"; also chooses the question kinds (questions.py).
        num_sheets: sheets per workbook, drawn from `themes` (at most len(themes)).
        min_rows, max_rows: data rows per sheet, inclusive (Products is capped by its name pool).
        themes: which themes to draw sheets from (THEMES).
        column_types: keep only columns of these types ("int", "float", "text", "date"); key
            columns always stay.
        blank_fraction: share of non-key cells left empty.
    """

    difficulty: str = "easy"
    num_sheets: int = 1
    min_rows: int = 6
    max_rows: int = 10
    themes: tuple[str, ...] = THEMES
    column_types: tuple[str, ...] = ("int", "float", "text", "date")
    blank_fraction: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "themes", tuple(self.themes))  # YAML gives lists
        object.__setattr__(self, "column_types", tuple(self.column_types))
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"WorkbookSpec.difficulty must be one of {DIFFICULTIES}, got {self.difficulty!r}")
        unknown = sorted(set(self.themes) - set(THEMES))
        if unknown or not self.themes:
            raise ValueError(f"WorkbookSpec.themes must be a non-empty subset of {THEMES}, got {self.themes!r}")
        if not 1 <= self.num_sheets <= len(set(self.themes)):
            raise ValueError(f"WorkbookSpec.num_sheets must be in 1..{len(set(self.themes))} (the number of "
                             f"themes), got {self.num_sheets}")
        if not 2 <= self.min_rows <= self.max_rows:
            raise ValueError(f"WorkbookSpec needs 2 <= min_rows <= max_rows, got {self.min_rows}, {self.max_rows}")
        bad_types = sorted(set(self.column_types) - {"int", "float", "text", "date"})
        if bad_types:
            raise ValueError(f"WorkbookSpec.column_types: unknown types {bad_types}; use int, float, text, date")
        if not 0.0 <= self.blank_fraction < 0.5:
            raise ValueError(f"WorkbookSpec.blank_fraction must be in [0, 0.5), got {self.blank_fraction}")

    @classmethod
    def for_difficulty(cls, difficulty: str, **overrides: Any) -> "WorkbookSpec":
        """The preset of a difficulty (easy: 1 sheet of 6-10 rows; medium: 2 sheets of 10-16;
        hard: 3 sheets of 14-24 with 5% blanks), with any field overridden."""
        if difficulty not in _PRESETS:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        sheets, low, high, blanks = _PRESETS[difficulty]
        fields = {"difficulty": difficulty, "num_sheets": sheets, "min_rows": low, "max_rows": high,
                  "blank_fraction": blanks}
        fields.update(overrides)
        return cls(**fields)


def generate_workbook(spec: WorkbookSpec, seed: int | str) -> dict[str, pd.DataFrame]:
    """A workbook for `spec`: ``{sheet name: canonical DataFrame}`` (tables.py), the same for the
    same (spec, seed)."""
    rng = random.Random(f"spreadsheet-workbook/{seed}")
    themes = _choose_themes(spec, rng)
    context: dict[str, Any] = {}
    tables = {}
    for theme in ("products", "sales", "employees", "orders"):  # products first: the others refer to it
        if theme not in themes:
            continue
        n_rows = rng.randint(spec.min_rows, spec.max_rows)
        columns = _GENERATORS[theme](rng, n_rows, context)
        columns = _keep_columns(theme, columns, spec.column_types)
        columns = _add_blanks(theme, columns, spec.blank_fraction, rng)
        tables[_TITLES[theme]] = make_frame(columns, f"generated sheet {_TITLES[theme]!r}")
    return {_TITLES[t]: tables[_TITLES[t]] for t in THEMES if t in themes}  # a stable sheet order


def _choose_themes(spec: WorkbookSpec, rng: random.Random) -> set[str]:
    pool = [t for t in THEMES if t in spec.themes]
    chosen = set(rng.sample(pool, spec.num_sheets))
    if "orders" in chosen and "products" not in chosen and "products" in pool and spec.num_sheets >= 2:
        # Orders' ProductIDs mean something only next to Products: swap another sheet for it.
        others = sorted(chosen - {"orders"})
        chosen.discard(rng.choice(others))
        chosen.add("products")
    return chosen


def _keep_columns(theme: str, columns: dict[str, list], types: tuple[str, ...]) -> dict[str, list]:
    return {name: values for name, values in columns.items()
            if name in _KEYS[theme] or _COLUMNS[theme][name] in types}


def _add_blanks(theme: str, columns: dict[str, list], fraction: float, rng: random.Random) -> dict[str, list]:
    if fraction <= 0:
        return columns
    return {name: values if name in _KEYS[theme] else [None if rng.random() < fraction else v for v in values]
            for name, values in columns.items()}


def _money(rng: random.Random, low: int, high: int) -> float:
    """A price with non-zero cents: a column of whole numbers would read back from .xlsx as int."""
    return rng.randint(low, high) + rng.randint(1, 99) / 100


def _day(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=rng.randint(0, (last - first).days))


def _products(rng: random.Random, n_rows: int, context: dict[str, Any]) -> dict[str, list]:
    n_rows = min(n_rows, len(_PRODUCT_NAMES))
    names = rng.sample(_PRODUCT_NAMES, n_rows)
    categories = rng.sample(_CATEGORIES, rng.randint(2, 4))
    ids = [f"P{i:02d}" for i in range(1, n_rows + 1)]
    context["product_ids"], context["product_names"] = ids, names
    return {"ProductID": ids, "Name": names, "Category": [rng.choice(categories) for _ in ids],
            "Price": [_money(rng, 2, 150) for _ in ids]}


def _sales(rng: random.Random, n_rows: int, context: dict[str, Any]) -> dict[str, list]:
    regions = rng.sample(_REGIONS, rng.randint(2, 4))
    products = context.get("product_names") or rng.sample(_PRODUCT_NAMES, rng.randint(3, 5))
    products = rng.sample(list(products), min(len(products), rng.randint(2, 5)))
    units = [rng.randint(1, 40) for _ in range(n_rows)]
    return {"Region": [rng.choice(regions) for _ in range(n_rows)],
            "Product": [rng.choice(products) for _ in range(n_rows)],
            "Date": [_day(rng, dt.date(2024, 1, 1), dt.date(2024, 12, 31)) for _ in range(n_rows)],
            "Units": units,
            "Revenue": [round(u * rng.randint(3, 60) + rng.randint(1, 99) / 100, 2) for u in units]}


def _employees(rng: random.Random, n_rows: int, context: dict[str, Any]) -> dict[str, list]:
    pool = [(f, s) for f in _FIRST for s in _LAST]
    names = [f"{first} {last}" for first, last in rng.sample(pool, min(n_rows, len(pool)))]
    departments = rng.sample(_DEPARTMENTS, rng.randint(2, 4))
    return {"Name": names, "Department": [rng.choice(departments) for _ in names],
            "Hired": [_day(rng, dt.date(2015, 1, 1), dt.date(2024, 12, 31)) for _ in names],
            "Salary": [rng.randrange(40_000, 120_001, 500) for _ in names]}


def _orders(rng: random.Random, n_rows: int, context: dict[str, Any]) -> dict[str, list]:
    ids = context.get("product_ids") or [f"P{i:02d}" for i in range(1, 7)]
    return {"OrderID": list(range(1001, 1001 + n_rows)),
            "ProductID": [rng.choice(ids) for _ in range(n_rows)],
            "Quantity": [rng.randint(1, 20) for _ in range(n_rows)],
            "Date": [_day(rng, dt.date(2024, 1, 1), dt.date(2024, 12, 31)) for _ in range(n_rows)]}


_GENERATORS: dict[str, Callable[[random.Random, int, dict[str, Any]], dict[str, list]]] = {
    "products": _products, "sales": _sales, "employees": _employees, "orders": _orders}

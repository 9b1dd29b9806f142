"""Question builders against answers worked out by hand on the example workbook (example.py),
the SQL of each one agreeing when DuckDB runs it, degenerate instances rejected, and sampling."""

from __future__ import annotations

import datetime as dt

import pytest

from posttrain.envs.spreadsheet import (DIFFICULTY_KINDS, Condition, Degenerate, SpreadsheetTools, WorkbookSpec,
                                        answer_from_output, answer_matches, example_tables, generate_questions,
                                        generate_workbook)
from posttrain.envs.spreadsheet import questions as q
from posttrain.envs.spreadsheet.sampling import column_roles, foreign_keys

T = example_tables()
NORTH = Condition("Region", "=", "North")
TOOLS_CATEGORY = Condition("Category", "=", "Tools")

# (question, expected answer); each worked out from the table in example.py's docstring.
CASES = [
    # Gadget's row: Price 15.0.
    (q.lookup(T, "Products", "Name", "Gadget", "Price"), 15.0),
    (q.lookup(T, "Orders", "OrderID", 1003, "ProductID"), "P01"),
    (q.lookup(T, "Orders", "OrderID", 1002, "Date"), "2024-02-02"),
    # North rows: 3; Units > 5: 10, 8, 12 (East's blank never matches) = 3; both: 10, 8 = 2.
    (q.count(T, "Sales", [NORTH]), 3),
    (q.count(T, "Sales", [Condition("Units", ">", 5)]), 3),
    (q.count(T, "Sales", [NORTH, Condition("Units", ">", 5)]), 2),
    # North Revenue 100.5 + 120.0 + blank = 220.5; South mean Units (5 + 12) / 2 = 8.5.
    (q.aggregate(T, "Sales", "Revenue", "sum", [NORTH]), 220.5),
    (q.aggregate(T, "Sales", "Units", "mean", [Condition("Region", "=", "South")]), 8.5),
    # Dated after Feb 1: 50.25, 120.0, 30.75, blank -> min 30.75 (South Gizmo has no date).
    (q.aggregate(T, "Sales", "Revenue", "min", [Condition("Date", ">", dt.date(2024, 2, 1))]), 30.75),
    (q.aggregate(T, "Sales", "Units", "max", [Condition("Product", "=", "Gadget")]), 8),
    # Totals: North 220.5, South 140.25, East 30.75. Rows: North 3, South 2, East 1.
    (q.argmax(T, "Sales", "Region", "Revenue", "sum"), "North"),
    (q.argmax(T, "Sales", "Region", "Revenue", "sum", highest=False), "East"),
    (q.argmax(T, "Sales", "Region", None, "count", highest=False), "East"),
    # Mean Units: Widget 7.5, Gadget 8 (blank skipped), Gizmo 7.5.
    (q.argmax(T, "Sales", "Product", "Units", "mean"), "Gadget"),
    # Units > 4: North 100.5 + 120.0 = 220.5, South 50.25 + 90.0 = 140.25.
    (q.argmax(T, "Sales", "Region", "Revenue", "sum", conditions=[Condition("Units", ">", 4)]), "North"),
    (q.compare(T, "Sales", "Region", "North", "South", "Revenue", "sum"), "North"),
    (q.compare(T, "Sales", "Region", "North", "South", "Revenue", "sum", higher=False), "South"),
    (q.computation(T, "Sales", "Region", "North", "South", "Revenue", "sum", "difference"), 80.25),
    (q.computation(T, "Sales", "Region", "North", "South", "Revenue", "sum", "ratio"), 220.5 / 140.25),
    (q.computation(T, "Sales", "Region", "North", "South", "Units", "sum", "difference"), 4),  # 21 - 17
    # Tools products: P01, P03. Their orders: 1001 (2), 1003 (1), 1004 (4).
    (q.join(T, "Orders", "Products", "ProductID", None, "count", [TOOLS_CATEGORY]), 3),
    (q.join(T, "Orders", "Products", "ProductID", "Quantity", "sum", [TOOLS_CATEGORY]), 7),
    (q.join(T, "Orders", "Products", "ProductID", "Quantity", "mean", [TOOLS_CATEGORY]), 7 / 3),
    # 2 * 10.05 + 1 * 10.05 + 4 * 7.5 = 60.15.
    (q.join(T, "Orders", "Products", "ProductID", "Quantity", "sum", [TOOLS_CATEGORY], times="Price"), 60.15),
    (q.list_rows(T, "Products", "Name", [TOOLS_CATEGORY]), ["Widget", "Gizmo"]),
    (q.list_rows(T, "Orders", "OrderID", [Condition("Quantity", ">", 1)]), ["1001", "1002", "1004"]),
    # Prices: Gadget 15.0, Widget 10.05, Gizmo 7.5.
    (q.top_k(T, "Products", "Name", "Price", 2), ["Gadget", "Widget"]),
    (q.top_k(T, "Products", "Name", "Price", 2, highest=False), ["Gizmo", "Widget"]),
]


@pytest.mark.parametrize("question, expected", CASES, ids=[f"{c[0].kind}-{i}" for i, c in enumerate(CASES)])
def test_answers_match_hand_computed_values_and_the_sql(question, expected):
    if isinstance(expected, float):
        assert question.answer == pytest.approx(expected, rel=1e-12)
    else:
        assert question.answer == expected and type(question.answer) is type(expected)
    assert answer_matches(str(expected) if not isinstance(expected, list) else ", ".join(expected),
                          question.answer, question.answer_kind, question.ordered)
    with SpreadsheetTools(T) as tools:  # the expert's SQL, run by DuckDB, gives the same answer
        read_back = answer_from_output(tools.query(question.sql), question.answer_kind)
    assert answer_matches(read_back, question.answer, question.answer_kind, question.ordered), (question.sql, read_back)


def test_question_text_kinds_and_plan():
    question = q.aggregate(T, "Sales", "Revenue", "sum", [NORTH, Condition("Date", "<", dt.date(2024, 3, 1))])
    assert question.text == "In Sales, what is the total Revenue where Region is North and Date is before 2024-03-01?"
    assert question.plan == {"sheets": ["Sales"], "sql": "SELECT SUM(Revenue) FROM Sales WHERE Region = 'North' "
                                                         "AND Date < DATE '2024-03-01'"}
    assert question.answer == 100.5 and question.answer_kind == "number"
    listing = q.list_rows(T, "Products", "Name", [TOOLS_CATEGORY])
    assert (listing.answer_kind, listing.ordered) == ("list", False)
    top = q.top_k(T, "Products", "Name", "Price", 2)
    assert (top.answer_kind, top.ordered) == ("list", True)
    assert top.text == "In Products, list the 2 Name values with the highest Price, highest first."
    # Blank-handling clauses only where the columns have blanks: Products has none, Sales' Revenue has one.
    assert q.argmax(T, "Products", "Category", "Price", "mean").sql == (
        "SELECT Category, AVG(Price) AS average FROM Products GROUP BY Category ORDER BY average DESC LIMIT 1")
    assert q.argmax(T, "Sales", "Region", "Revenue", "sum").sql == (
        "SELECT Region, SUM(Revenue) AS total FROM Sales GROUP BY Region ORDER BY total DESC NULLS LAST LIMIT 1")
    assert q.top_k(T, "Products", "Name", "Price", 2).sql == "SELECT Name, Price FROM Products ORDER BY Price DESC LIMIT 2"
    joined = q.join(T, "Orders", "Products", "ProductID", "Quantity", "sum", [TOOLS_CATEGORY])
    assert joined.sheets == ("Orders", "Products")
    assert joined.sql == ("SELECT SUM(Orders.Quantity) FROM Orders JOIN Products ON Orders.ProductID = "
                          "Products.ProductID WHERE Products.Category = 'Tools'")


@pytest.mark.parametrize("build", [
    lambda: q.count(T, "Sales", [Condition("Region", "=", "West")]),                    # empty filter
    lambda: q.aggregate(T, "Sales", "Revenue", "sum", [Condition("Units", "=", 3)]),    # only a blank value
    lambda: q.lookup(T, "Sales", "Region", "North", "Units"),                           # three North rows
    lambda: q.lookup(T, "Orders", "OrderID", 1004, "Date"),                             # blank target
    lambda: q.argmax(T, "Sales", "Product", "Units", "mean", highest=False),            # Widget and Gizmo tie at 7.5
    lambda: q.argmax(T, "Sales", "Product", None, "count"),                             # two rows each
    lambda: q.list_rows(T, "Products", "Name", [Condition("Category", "=", "Home")]),   # a single item
    lambda: q.top_k(T, "Products", "Name", "Price", 3),                                 # nothing left to rank against
    lambda: q.computation(T, "Sales", "Region", "North", "West", "Revenue", "sum", "ratio"),  # no West rows
])
def test_degenerate_instances_are_rejected(build):
    with pytest.raises(Degenerate):
        build()


def test_roles_and_foreign_keys_come_from_the_data():
    assert column_roles(T["Products"]) == {"key": ["ProductID", "Name"], "category": ["Category"],
                                           "numeric": ["Price"], "date": []}
    assert column_roles(T["Sales"]) == {"key": [], "category": ["Region", "Product"], "numeric": ["Units", "Revenue"],
                                        "date": ["Date"]}
    assert column_roles(T["Orders"])["key"] == ["OrderID"]
    assert foreign_keys(T) == [("Orders", "Products", "ProductID")]


def test_generate_questions_is_seeded_and_respects_difficulty():
    tables = generate_workbook(WorkbookSpec.for_difficulty("hard"), 2)
    first = generate_questions(tables, 8, seed=5, difficulty="hard")
    assert first == generate_questions(tables, 8, seed=5, difficulty="hard")
    assert first != generate_questions(tables, 8, seed=6, difficulty="hard")
    assert len(first) == 8 and len({x.text for x in first}) == 8
    for seed in range(6):
        easy_tables = generate_workbook(WorkbookSpec.for_difficulty("easy"), seed)
        for question in generate_questions(easy_tables, 6, seed=seed, difficulty="easy"):
            assert question.kind in DIFFICULTY_KINDS["easy"]
            assert question.text.count(" and ") == 0  # one condition at most on easy
    only = generate_questions(tables, 3, seed=1, difficulty="hard", kinds=("count",))
    assert [x.kind for x in only] == ["count"] * 3
    with pytest.raises(ValueError, match="unknown question kinds"):
        generate_questions(tables, 1, seed=1, difficulty="hard", kinds=("poetry",))

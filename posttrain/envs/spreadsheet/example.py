"""A small hand-built workbook whose answers can be worked out by eye (docs, tests, a first look).

    Sales                                              Products
    Region  Product  Date        Units  Revenue        ProductID  Name    Category  Price
    North   Widget   2024-01-05  10     100.5          P01        Widget  Tools     10.05
    South   Widget   2024-02-10  5      50.25          P02        Gadget  Home      15.0
    North   Gadget   2024-03-15  8      120.0          P03        Gizmo   Tools     7.5
    East    Gadget   2024-04-20         30.75
    South   Gizmo                12     90.0           Orders
    North   Gizmo    2024-06-30  3                     OrderID  ProductID  Quantity  Date
                                                       1001     P01        2         2024-01-01
                                                       1002     P02        5         2024-02-02
                                                       1003     P01        1         2024-03-03
                                                       1004     P03        4

Blanks sit where they test the rules of questions.py: a blank never meets a condition and is
skipped by aggregates (North's total Revenue is 100.5 + 120.0 = 220.5; Gadget's mean Units is 8).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from posttrain.envs.spreadsheet.tables import make_frame

__all__ = ["example_tables"]


def example_tables() -> dict[str, pd.DataFrame]:
    """The workbook above, in the canonical form (a fresh copy each call)."""
    day = dt.date
    sales = make_frame({
        "Region": ["North", "South", "North", "East", "South", "North"],
        "Product": ["Widget", "Widget", "Gadget", "Gadget", "Gizmo", "Gizmo"],
        "Date": [day(2024, 1, 5), day(2024, 2, 10), day(2024, 3, 15), day(2024, 4, 20), None, day(2024, 6, 30)],
        "Units": [10, 5, 8, None, 12, 3],
        "Revenue": [100.5, 50.25, 120.0, 30.75, 90.0, None],
    }, "example Sales")
    products = make_frame({
        "ProductID": ["P01", "P02", "P03"],
        "Name": ["Widget", "Gadget", "Gizmo"],
        "Category": ["Tools", "Home", "Tools"],
        "Price": [10.05, 15.0, 7.5],
    }, "example Products")
    orders = make_frame({
        "OrderID": [1001, 1002, 1003, 1004],
        "ProductID": ["P01", "P02", "P01", "P03"],
        "Quantity": [2, 5, 1, 4],
        "Date": [day(2024, 1, 1), day(2024, 2, 2), day(2024, 3, 3), None],
    }, "example Orders")
    return {"Sales": sales, "Products": products, "Orders": orders}

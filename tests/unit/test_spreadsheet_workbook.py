"""Spreadsheet workbooks: seeded generation, the canonical column types, .xlsx / .csv files."""

from __future__ import annotations

import datetime as dt

import openpyxl
import pandas as pd
import pytest

from posttrain.envs.spreadsheet import WorkbookSpec, example_tables, generate_workbook, load_tables, write_xlsx
from posttrain.envs.spreadsheet.tables import column_type, make_frame

THEME_COLUMNS = {
    "Sales": ["Region", "Product", "Date", "Units", "Revenue"],
    "Employees": ["Name", "Department", "Hired", "Salary"],
    "Products": ["ProductID", "Name", "Category", "Price"],
    "Orders": ["OrderID", "ProductID", "Quantity", "Date"],
}
TYPES = {"Region": "text", "Product": "text", "Date": "date", "Units": "int", "Revenue": "float", "Name": "text",
         "Department": "text", "Hired": "date", "Salary": "int", "ProductID": "text", "Category": "text",
         "Price": "float", "OrderID": "int", "Quantity": "int"}


def assert_same_tables(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_same_seed_same_workbook_other_seed_other_workbook():
    spec = WorkbookSpec.for_difficulty("hard")
    assert_same_tables(generate_workbook(spec, 7), generate_workbook(spec, 7))
    first, other = generate_workbook(spec, 7), generate_workbook(spec, 8)
    assert list(first) != list(other) or any(not first[k].equals(other[k]) for k in first)


def test_themes_columns_types_and_join_keys():
    spec = WorkbookSpec.for_difficulty("hard", num_sheets=4, blank_fraction=0.2)
    tables = generate_workbook(spec, 3)
    assert list(tables) == ["Sales", "Employees", "Products", "Orders"]
    blanks = 0
    for name, frame in tables.items():
        assert list(frame.columns) == THEME_COLUMNS[name]
        assert {c: column_type(frame[c]) for c in frame.columns} == {c: TYPES[c] for c in frame.columns}
        assert 14 <= len(frame) <= 24
        blanks += int(frame.isna().sum().sum())
    assert blanks > 0
    keys = {"Employees": ["Name"], "Products": ["ProductID", "Name"], "Orders": ["OrderID", "ProductID"]}
    for name, columns in keys.items():
        for key in columns:
            assert tables[name][key].notna().all()  # keys are never blank
    assert tables["Products"]["ProductID"].is_unique and tables["Orders"]["OrderID"].is_unique
    assert set(tables["Orders"]["ProductID"]) <= set(tables["Products"]["ProductID"])
    assert set(tables["Sales"]["Product"].dropna()) <= set(tables["Products"]["Name"])
    assert (tables["Products"]["Price"] % 1 != 0).all()  # cents, so the column stays float in .xlsx


def test_easy_preset_and_spec_options():
    easy = generate_workbook(WorkbookSpec.for_difficulty("easy"), 0)
    assert len(easy) == 1 and 6 <= len(next(iter(easy.values()))) <= 10
    assert all(not frame.isna().any().any() for frame in easy.values())
    text_only = generate_workbook(WorkbookSpec(themes=("products", "orders"), num_sheets=2, column_types=("text",)), 1)
    assert {k: list(v.columns) for k, v in text_only.items()} == {
        "Products": ["ProductID", "Name", "Category"], "Orders": ["OrderID", "ProductID"]}  # keys always stay
    # A two-sheet workbook that draws Orders swaps another sheet for Products, so its keys mean something.
    for seed in range(20):
        tables = generate_workbook(WorkbookSpec(num_sheets=2), seed)
        assert "Orders" not in tables or "Products" in tables


@pytest.mark.parametrize("fields, message", [
    ({"difficulty": "extreme"}, "difficulty"), ({"num_sheets": 5}, "num_sheets"), ({"themes": ("weather",)}, "themes"),
    ({"min_rows": 9, "max_rows": 3}, "min_rows"), ({"column_types": ("bool",)}, "column_types"),
    ({"blank_fraction": 0.7}, "blank_fraction")])
def test_spec_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        WorkbookSpec(**fields)


def test_xlsx_round_trip_keeps_types_dates_and_blanks(tmp_path):
    tables = generate_workbook(WorkbookSpec.for_difficulty("hard", num_sheets=4, blank_fraction=0.2), 11)
    path = write_xlsx(tables, tmp_path / "wb.xlsx")
    assert_same_tables(load_tables(path), tables)
    example = example_tables()
    assert_same_tables(load_tables(write_xlsx(example, tmp_path / "example.xlsx")), example)
    sheet = openpyxl.load_workbook(tmp_path / "example.xlsx")["Sales"]
    assert [c.value for c in sheet[1]] == ["Region", "Product", "Date", "Units", "Revenue"]
    assert sheet["C2"].is_date and sheet["C2"].value == dt.datetime(2024, 1, 5)  # a real date cell
    assert sheet["C6"].value is None and sheet["D5"].value is None and sheet["E7"].value is None  # empty cells


def test_csv_types_are_inferred(tmp_path):
    path = tmp_path / "cities.csv"
    path.write_text("City,Population,Area,Founded,Code,Checked\nOslo,709000,454.0,1048-01-01,01,2024-02-30\n"
                    "Bergen,,465.3,1070-01-01,02,2024-02-01\nTromso,77000,2521.5,,x,\n", encoding="utf-8")
    frame = load_tables(path)["cities"]
    assert {c: column_type(frame[c]) for c in frame.columns} == {
        "City": "text", "Population": "int", "Area": "float", "Founded": "date", "Code": "text",
        "Checked": "text"}  # February 30th is no date, so that column stays text
    assert frame["Population"].tolist()[0] == 709000 and pd.isna(frame["Population"][1])
    assert frame["Code"].tolist() == ["01", "02", "x"]  # text stays text: "01" is a code
    assert frame["Founded"][0] == pd.Timestamp("1048-01-01") and pd.isna(frame["Founded"][2])


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.xlsx.*does not exist"):
        load_tables(tmp_path / "missing.xlsx")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt.*unsupported file type '.txt'"):
        load_tables(tmp_path / "notes.txt")
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="broken.xlsx.*cannot read it as .xlsx"):
        load_tables(tmp_path / "broken.xlsx")
    (tmp_path / "nohead.csv").write_text("a,\n1,2\n")
    with pytest.raises(ValueError, match="nohead.csv.*column 2 has values but no header"):
        load_tables(tmp_path / "nohead.csv")
    (tmp_path / "twice.csv").write_text("a,A\n1,2\n")
    with pytest.raises(ValueError, match="twice.csv.*two columns are named 'A'"):
        load_tables(tmp_path / "twice.csv")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.csv.*is empty"):
        load_tables(tmp_path / "empty.csv")


def test_make_frame_canonical_dtypes():
    frame = make_frame({"i": [1, None], "f": [1, 2.5], "t": ["a", None], "d": [dt.date(2024, 1, 2), None],
                        "mixed": [1, "a"]})
    assert [str(frame[c].dtype) for c in frame.columns] == ["Int64", "float64", "object", "datetime64[us]", "object"]
    assert frame["mixed"].tolist() == ["1", "a"] and frame["t"].tolist() == ["a", None]

"""Reading rows from JSONL / JSON / Parquet / CSV / save_to_disk folders, and their error messages."""

import json

import pytest

from posttrain.data.jsonl import write_jsonl
from posttrain.data.readers import DataError, Record, iter_rows, read_records


def test_jsonl_rows_carry_line_numbers_and_skip_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n   \n{"a": 3}\n', encoding="utf-8")
    records = list(read_records(path))
    # Lines 2 and 4 are blank: the rows sit on lines 1, 3 and 5 of the file.
    assert [(r.row, r.data["a"]) for r in records] == [(1, 1), (3, 2), (5, 3)]
    assert all(r.source == str(path) for r in records)


def test_write_jsonl_round_trips_unicode(tmp_path):
    rows = [{"prompt": "héllo", "n": 1}, {"prompt": "日本", "n": 2}]
    out = write_jsonl(rows, tmp_path / "sub" / "out.jsonl")  # parent folder is created
    assert [r.data for r in read_records(out)] == rows


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: invalid JSON") as info:
        list(read_records(path))
    assert info.value.row == 3 and info.value.field is None


def test_non_object_line_is_an_error(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"list\.jsonl, line 2: expected a JSON object, got list"):
        list(read_records(path))


def test_iter_rows_yields_bad_lines_and_keeps_reading(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n', encoding="utf-8")
    items = list(iter_rows(path))
    assert isinstance(items[0], Record) and isinstance(items[1], DataError) and isinstance(items[2], Record)
    assert items[1].row == 2 and items[2].data == {"a": 3}


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        list(read_records(missing))
    with pytest.raises(DataError, match="file or directory not found"):
        list(read_records(str(tmp_path / "no" / "such" / "dir")))


def test_json_list_rows_are_zero_based(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"x": "a"}, {"x": "b"}]), encoding="utf-8")
    assert [(r.row, r.data["x"]) for r in read_records(path)] == [(0, "a"), (1, "b")]


def test_json_that_is_not_a_list_is_rejected(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"x": 1}', encoding="utf-8")
    with pytest.raises(DataError, match=r"obj\.json: expected a JSON list of objects, got dict"):
        list(read_records(path))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["p0", "p1", "p2"], "answer": ["0", "1", None]}), path)
    records = list(read_records(path))
    assert [r.row for r in records] == [0, 1, 2]
    assert records[1].data == {"prompt": "p1", "answer": "1"}
    assert records[2].data["answer"] is None
    # Non-JSONL sources say "row", not "line".
    assert str(DataError(str(path), 2, "answer", "missing")).endswith("rows.parquet, row 2, field 'answer': missing")


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list([{"q": "a"}, {"q": "b"}]).save_to_disk(str(single))
    assert [r.data["q"] for r in read_records(single)] == ["a", "b"]

    both = tmp_path / "both"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"q": "t0"}, {"q": "t1"}]),
        "test": datasets.Dataset.from_list([{"q": "e0"}]),
    }).save_to_disk(str(both))
    assert [(r.row, r.data["q"]) for r in read_records(both, split="test")] == [(0, "e0")]
    with pytest.raises(DataError, match=r"several splits \['test', 'train'\]"):
        list(read_records(both))
    with pytest.raises(DataError, match="no split 'dev'"):
        list(read_records(both, split="dev"))


def test_csv_via_datasets(tmp_path, monkeypatch):
    import datasets

    # Keep datasets' Arrow cache inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "rows.csv"
    path.write_text("prompt,answer\n1+1=,2\n2+2=,4\n", encoding="utf-8")
    assert [r.data for r in read_records(path)] == [{"prompt": "1+1=", "answer": 2}, {"prompt": "2+2=", "answer": 4}]


def test_error_message_format():
    error = DataError("data/train.jsonl", 7, "chosen", "missing")
    assert str(error) == "data/train.jsonl, line 7, field 'chosen': missing"
    assert (error.source, error.row, error.field, error.reason) == ("data/train.jsonl", 7, "chosen", "missing")
    assert isinstance(error, ValueError)


def test_folder_of_data_files_via_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ds"
    write_jsonl([{"q": "t0"}, {"q": "t1"}], folder / "train.jsonl")
    write_jsonl([{"q": "e0"}], folder / "test.jsonl")
    assert [(r.row, r.data) for r in read_records(folder, split="train")] == [(0, {"q": "t0"}), (1, {"q": "t1"})]
    with pytest.raises(DataError, match="several splits"):
        list(read_records(folder))

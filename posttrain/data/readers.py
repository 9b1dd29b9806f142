"""Read rows from JSONL / JSON / CSV / Parquet files, `save_to_disk` folders or `datasets` names.

Every row comes back as a `Record` that remembers where it came from, so a bad row anywhere
later in the pipeline can be reported as ``data/train.jsonl, line 7, field 'chosen': missing``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Suffixes we read ourselves; anything else that is not a directory goes to `datasets.load_dataset`.
# `.jsonl.gz` too, because benchmarks are published that way (HumanEval.jsonl.gz).
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def _is_jsonl(name: str) -> bool:
    return name.endswith(_JSONL_SUFFIXES)


def location(source: str, row: int | None) -> str:
    """Human-readable place of a row: 'line N' (1-based) for JSONL, 'row N' (0-based) otherwise."""
    if row is None:
        return source
    label = "line" if _is_jsonl(source) else "row"
    return f"{source}, {label} {row}"


class DataError(ValueError):
    """A problem with input data, pointing at the file, row and field that caused it.

    Attributes:
        source: the file / dataset name as the user wrote it.
        row: JSONL: 1-based line number; everything else: 0-based row index; None for
            file-level problems (missing file, wrong top-level JSON type).
        field: the offending column (possibly with a path, e.g. ``messages[2].content``) or None.
        reason: the bare reason, e.g. ``missing``.
    """

    def __init__(self, source: str, row: int | None, field: str | None, reason: str):
        self.source = str(source)
        self.row = row
        self.field = field
        self.reason = reason
        where = location(self.source, row)
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Record:
    """One raw row.

    Attributes:
        source: the file / dataset name it came from.
        row: JSONL: the 1-based line number (what an editor shows); JSON lists, CSV, Parquet and
            `datasets` data: the 0-based row index.
        data: the row's columns.
    """

    source: str
    row: int
    data: dict[str, Any]


def read_records(source: str | Path, *, split: str | None = None) -> Iterator[Record]:
    """Yield the rows of `source` as `Record`s.

    Accepted sources:
        * ``*.jsonl``: one JSON object per line; blank lines skipped. ``*.jsonl.gz``: the same, gzipped.
        * ``*.json``: a JSON list of objects.
        * ``*.parquet``: read in batches with pyarrow.
        * ``*.csv``: via ``datasets``' csv builder.
        * a directory written by ``datasets`` ``save_to_disk`` (a Dataset, or a DatasetDict with
          `split` chosen; a DatasetDict with a single split needs no `split`).
        * anything else: ``datasets.load_dataset(source, split=split)`` -- a local folder of data
          files or a dataset already in the Hugging Face cache.

    Raises:
        DataError: missing file, unreadable JSON (naming the line), non-object rows, unknown split.
    """
    for item in iter_rows(source, split=split):
        if isinstance(item, DataError):
            raise item
        yield item


def iter_rows(source: str | Path, *, split: str | None = None) -> Iterator[Record | DataError]:
    """Like `read_records`, but a row that cannot be read (bad JSON line, non-object row) is
    yielded as a `DataError` instead of raised, so a caller can skip it and keep reading.
    File-level problems (missing file, unknown split) are still raised."""
    name = str(source)
    path = Path(source)
    if path.suffix in _FILE_SUFFIXES or _is_jsonl(path.name):
        if not path.is_file():
            raise DataError(name, None, None, f"file not found ({path.resolve()})")
        if _is_jsonl(path.name):
            yield from _read_jsonl(path, name)
        elif path.suffix == ".json":
            yield from _read_json(path, name)
        elif path.suffix == ".parquet":
            yield from _read_parquet(path, name)
        else:
            yield from _read_rows(name, _load_hf("csv", name, split or "train", data_files=str(path)))
        return
    if path.is_dir() and _is_saved_dataset(path):
        yield from _read_rows(name, _load_saved(path, name, split))
        return
    if not path.exists() and _looks_local(name):
        raise DataError(name, None, None, f"file or directory not found ({path.resolve()})")
    yield from _read_rows(name, _load_hf(name, name, split))


def _looks_local(name: str) -> bool:
    """True for names that can only be a local path (a hub id is 'name' or 'owner/name')."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _read_jsonl(path: Path, name: str) -> Iterator[Record | DataError]:
    zipped = path.name.endswith(".gz")
    opened = gzip.open(path, "rt", encoding="utf-8") if zipped else path.open("r", encoding="utf-8")
    with opened as f:
        for line_no, line in _lines(f, name, zipped):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                yield DataError(name, line_no, None, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(data, dict):
                yield DataError(name, line_no, None, f"expected a JSON object, got {type(data).__name__}")
                continue
            yield Record(name, line_no, data)


def _lines(f, name: str, zipped: bool) -> Iterator[tuple[int, str]]:
    """(line number, line); a file that is not gzip, or is cut short, is a DataError naming the
    line where reading stopped (nothing after it can be read, so it is raised, not yielded)."""
    line_no = 0
    try:
        for line_no, line in enumerate(f, start=1):
            yield line_no, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        if not zipped:
            raise
        reason = "not a gzip file" if line_no == 0 else f"gzip data ends or breaks after line {line_no}"
        raise DataError(name, None, None, f"{reason} ({type(e).__name__}: {e})") from e


def _read_json(path: Path, name: str) -> Iterator[Record | DataError]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(name, None, None, f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    if not isinstance(data, list):
        raise DataError(name, None, None, f"expected a JSON list of objects, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            yield DataError(name, i, None, f"expected a JSON object, got {type(item).__name__}")
            continue
        yield Record(name, i, item)


def _read_parquet(path: Path, name: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(name, None, None, f"cannot read Parquet file: {e}") from e
    i = 0
    for batch in parquet.iter_batches():
        for data in batch.to_pylist():
            yield Record(name, i, data)
            i += 1


def _read_rows(name: str, dataset: Any) -> Iterator[Record]:
    for i, data in enumerate(dataset):
        yield Record(name, i, dict(data))


def _is_saved_dataset(path: Path) -> bool:
    # save_to_disk writes state.json (Dataset) or dataset_dict.json (DatasetDict).
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _load_saved(path: Path, name: str, split: str | None) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(loaded, name, split)
    if split is not None:
        raise DataError(name, None, None, f"split {split!r} requested but this folder holds a single Dataset")
    return loaded


def _load_hf(path: str, name: str, split: str | None, **kwargs: Any) -> Any:
    import datasets

    try:
        loaded = datasets.load_dataset(path, split=split, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError...)
        raise DataError(name, None, None, f"cannot load with datasets.load_dataset: {e}") from e
    if isinstance(loaded, (datasets.DatasetDict, dict)):
        return _pick_split(loaded, name, split)
    return loaded


def _pick_split(splits: Any, name: str, split: str | None) -> Any:
    available = sorted(splits.keys())
    if split is None:
        if len(available) == 1:
            return splits[available[0]]
        raise DataError(name, None, None, f"several splits {available}; choose one with split=")
    if split not in splits:
        raise DataError(name, None, None, f"no split {split!r}; available: {available}")
    return splits[split]

"""Corpus readers: every source becomes a stream of documents (``str``), in a deterministic order.

A path may be
  * a text file (one document), a ``.jsonl`` file (one document per line, field ``text_field``),
    a ``.parquet`` file (column ``text_field``; needs pyarrow);
  * a directory written by ``datasets.Dataset.save_to_disk`` (has ``state.json``; read with pyarrow);
  * any other directory: the files under it matching ``glob``, sorted, each read as above.
No paths = the Python standard library's sources (``site-packages`` excluded): real text that every Python has.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_documents(paths: list[str] | tuple[str, ...], glob: str = "*", text_field: str = "text",
                   max_bytes: int | None = None) -> Iterator[str]:
    """Documents of all ``paths`` in order; stops after ``max_bytes`` of UTF-8 (the last one cut there)."""
    budget = max_bytes
    for doc in _all_documents([Path(p) for p in paths] or [stdlib_root()], glob, text_field):
        if budget is not None:
            raw = doc.encode("utf-8", errors="replace")
            if len(raw) >= budget:
                yield raw[:budget].decode("utf-8", errors="ignore")
                return
            budget -= len(raw)
        yield doc


def _all_documents(roots: list[Path], glob: str, text_field: str) -> Iterator[str]:
    for root in roots:
        if root.is_file():
            yield from _file_documents(root, text_field)
        elif (root / "state.json").is_file():
            yield from _saved_dataset_documents(root, text_field)
        elif root.is_dir():
            files = _walk(root, glob)
            if not files:
                raise FileNotFoundError(f"data.paths: no files matching {glob!r} under {str(root)!r}")
            for f in files:
                yield from _file_documents(f, text_field)
        else:
            raise FileNotFoundError(f"data.paths: {str(root)!r} does not exist")


def _walk(root: Path, glob: str) -> list[Path]:
    """Files under ``root`` whose name matches ``glob``, sorted; ``site-packages`` trees are not entered."""
    found = []
    for here, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "site-packages"]
        found.extend(Path(here, n) for n in fnmatch.filter(names, glob))
    return sorted(p for p in found if p.is_file())


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _field(json.loads(line), text_field, f"{path}:{n}")
    elif path.suffix == ".parquet":
        pq = _pyarrow("parquet")
        for batch in pq.ParquetFile(path).iter_batches(columns=[_column(pq.read_schema(path).names, text_field, path)]):
            yield from (t for t in batch.column(0).to_pylist() if t)
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def _saved_dataset_documents(root: Path, text_field: str) -> Iterator[str]:
    """A ``Dataset.save_to_disk`` directory: Arrow stream files listed in ``state.json``."""
    ipc = _pyarrow("ipc")
    state = json.loads((root / "state.json").read_text())
    for entry in state.get("_data_files", []):
        with ipc.open_stream(root / entry["filename"]) as reader:
            column = _column(reader.schema.names, text_field, root)
            for batch in reader:
                yield from (t for t in batch.column(column).to_pylist() if t)


def _field(record: dict, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(f"{where}: no string field {text_field!r} (set data.text_field)")
    return record[text_field]


def _column(names: list[str], text_field: str, where: Path) -> str:
    if text_field not in names:
        raise ValueError(f"{where}: no column {text_field!r} (columns: {names}; set data.text_field)")
    return text_field


def _pyarrow(module: str):
    try:
        import importlib

        return importlib.import_module(f"pyarrow.{module}")
    except ImportError:
        raise ImportError("parquet and saved-dataset corpora need pyarrow: pip install 'archlab[data]'") from None

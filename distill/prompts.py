"""Training prompts from txt / jsonl / csv / parquet files, stripped and deduplicated in file order.

SwiftBrush v2 trains on deduplicated JourneyDB prompts (1.38M after dedup of the ``prompt`` field,
VinAIResearch/SwiftBrush#1) plus LAION captions; any list of captions works.
"""

import io
import json
import math
from pathlib import Path

from bench.errors import UserError
from bench.protocol import read_utf8

COLUMNS = ("prompt", "caption", "text")  # tried in this order when no column is named
FORMATS = (".txt", ".jsonl", ".csv", ".parquet")


def _pick_column(columns, column: str | None, path: Path) -> str:
    if column is not None:
        if column not in columns:
            raise UserError(f"{path}: no column {column!r} (columns: {', '.join(map(str, columns))}); "
                            "pass --prompt-column NAME")
        return column
    for name in COLUMNS:
        if name in columns:
            return name
    raise UserError(f"{path}: none of the columns {', '.join(COLUMNS)} found "
                    f"(columns: {', '.join(map(str, columns))}); pass --prompt-column NAME")


def _read_jsonl(path: Path, column: str | None) -> list:
    rows = []
    for number, line in enumerate(read_utf8(path, "prompt file", "pass --prompts FILE").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error}); write one JSON string or object per line") \
                from error
        rows.append(row if isinstance(row, str) else row.get(_pick_column(list(row), column, path)))
    return rows


def _read_table(path: Path, column: str | None) -> list:
    import pandas as pd

    if path.suffix == ".csv":
        text = read_utf8(path, "prompt file", "pass --prompts FILE")
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    else:
        try:
            frame = pd.read_parquet(path)
        except ImportError as error:
            raise UserError(f"{path}: reading parquet needs pyarrow ({error}); pip install pyarrow, or use csv") \
                from error
    return frame[_pick_column(list(frame.columns), column, path)].tolist()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_prompts(path: str | Path, column: str | None = None) -> list[str]:
    """Prompts of a txt (one per line), jsonl (strings or objects), csv or parquet file.

    Args:
        path: the prompt file; the format comes from its extension.
        column: the column / key holding the prompt for jsonl, csv and parquet; by default the
            first of ``prompt``, ``caption``, ``text`` that exists.
    Returns:
        The prompts, whitespace-stripped, empty ones dropped, duplicates removed (first kept).
    Raises:
        UserError: a missing or empty file, an unknown format, a missing column, bytes that are not UTF-8 (the
            line is named; a UTF-8 byte-order mark is dropped).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {str(path)!r} does not exist: pass --prompts with a {'/'.join(FORMATS)} file")
    if path.suffix not in FORMATS:
        raise UserError(f"prompt file {str(path)!r}: unknown format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if path.suffix == ".txt":
        rows = read_utf8(path, "prompt file", "pass --prompts FILE").splitlines()
    elif path.suffix == ".jsonl":
        rows = _read_jsonl(path, column)
    else:
        rows = _read_table(path, column)
    # A missing value is None (jsonl) or NaN (parquet under pandas 3), never the prompt "nan".
    prompts = dict.fromkeys(str(row).strip() for row in rows if not _missing(row) and str(row).strip())
    if not prompts:
        raise UserError(f"prompt file {str(path)!r} holds no prompts: write one caption per line (or row)")
    return list(prompts)

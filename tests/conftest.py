"""Shared fixtures.

chDB runs one engine per process bound to one directory, so the whole test session shares one
data directory and every test that stores anything gets its own database in it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings, StoreSettings
from pipeline.store.client import Store

_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fieldtrack-data")


@pytest.fixture
def settings(chdb_dir: Path) -> Settings:
    s = Settings()
    s.store = StoreSettings(data_dir=str(chdb_dir), database=f"t{next(_db_numbers)}")
    s.gateway.port = 0  # any free port
    return s


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    st = Store(settings.store)
    st.apply_schema()
    yield st
    st.command(f"DROP DATABASE IF EXISTS {settings.store.database}")
    st.close()

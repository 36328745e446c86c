"""Database-level statements for set-up code (tests, benchmarks): create and drop a PostgreSQL
database. SQLAlchemy has no construct for them, so these two are DDL elements whose name is quoted
by the dialect's identifier preparer: no SQL is ever built from a raw string."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement


class CreateDatabase(ExecutableDDLElement):
    """`CREATE DATABASE "name"` (run it on an AUTOCOMMIT connection)."""

    def __init__(self, name: str) -> None:
        self.name = name


class DropDatabase(ExecutableDDLElement):
    """`DROP DATABASE IF EXISTS "name" WITH (FORCE)` (PostgreSQL 13+; AUTOCOMMIT connection)."""

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(CreateDatabase)
def _create(element: CreateDatabase, compiler: Any, **kw: Any) -> str:
    return f"CREATE DATABASE {compiler.preparer.quote_identifier(element.name)}"


@compiles(DropDatabase)
def _drop(element: DropDatabase, compiler: Any, **kw: Any) -> str:
    return f"DROP DATABASE IF EXISTS {compiler.preparer.quote_identifier(element.name)} WITH (FORCE)"

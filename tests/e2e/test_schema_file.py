"""The shipped chat.sql is the schema the server uses, and MariaDB accepts it."""

from __future__ import annotations

import secrets
from importlib import resources

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat.storage.tables import metadata, mysql_ddl
from tests.conftest import MYSQL_SERVER


def test_shipped_chat_sql_is_current() -> None:
    shipped = resources.files("clusterchat").joinpath("sql/chat.sql").read_text()
    assert shipped == mysql_ddl()


async def test_chat_sql_creates_the_schema_on_mariadb() -> None:
    name = f"cc_sql_{secrets.token_hex(4)}"
    engine = create_async_engine(MYSQL_SERVER + "/")
    try:
        async with engine.begin() as conn:
            for stmt in mysql_ddl(name).split(";\n"):
                body = "\n".join(
                    line for line in stmt.splitlines() if not line.startswith("--")
                ).strip()
                if body:
                    await conn.exec_driver_sql(body)
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names(schema=name))
        assert sorted(tables) == sorted(metadata.tables)
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        await engine.dispose()

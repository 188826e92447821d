"""DB.query: keyed reads run on the loop only while nobody else holds the connection."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from berth.core.metadata.db import DB


def _db(tmp_path: Path) -> DB:
    db = DB(
        tmp_path / "meta.db", schemas=["CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)"]
    )
    with db.tx() as cur:
        cur.execute("INSERT INTO kv VALUES ('a', 'one')")
    return db


def _read(db: DB, ran_on: list[int]) -> str:
    ran_on.append(threading.get_ident())
    with db.read() as cur:
        value: str = cur.execute("SELECT v FROM kv WHERE k='a'").fetchone()["v"]
    return value


def test_a_query_on_a_free_connection_runs_on_the_loop_thread(tmp_path: Path) -> None:
    db = _db(tmp_path)
    ran_on: list[int] = []

    async def main() -> str:
        return await db.query(lambda: _read(db, ran_on))

    assert asyncio.run(main()) == "one"
    assert ran_on == [threading.get_ident()]
    db.close()


def test_a_query_while_another_thread_holds_the_connection_leaves_the_loop_free(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    ran_on: list[int] = []
    held = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with db.tx():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=writer)
    holder.start()
    assert held.wait(10)

    async def main() -> tuple[str, bool]:
        query = asyncio.ensure_future(db.query(lambda: _read(db, ran_on)))
        # The loop keeps running other work while the query waits its turn.
        await asyncio.sleep(0.05)
        waiting = not query.done()
        release.set()
        return await query, waiting

    value, waited = asyncio.run(main())
    holder.join(10)
    assert value == "one"
    assert waited, "the query finished while the connection was held elsewhere"
    assert ran_on and ran_on[0] != threading.get_ident()
    db.close()

"""A WebSocket connection's stored SQL texts (`store_sql`, `close_sql`), and putting them in
place of their ids when a request is read (so a `close_sql` right after a request cannot pull
its text away: @libsql/client relies on that)."""

from __future__ import annotations

from dataclasses import replace

from router.hrana.errors import SqlExists, SqlNotFound, SqlStoreTooLarge, SqlStoreTooMany
from router.hrana.protocol import Batch, Request, Stmt

MAX_STORED_SQL = 150  # per connection, as libsql-server (@libsql/client caches 100)
MAX_STORED_SQL_CHARS = 1 << 20  # all of them together (@libsql/client's: 100 of < 5000)


class StoredSql:
    """The texts of one connection. Event loop only."""

    def __init__(self, max_sql_length: int) -> None:
        self.max_sql_length = max_sql_length
        self._texts: dict[int, str] = {}
        self._chars = 0

    def store(self, sql_id: int, sql: str) -> None:
        """Raises SqlExists (a protocol violation), SqlStoreTooLarge, SqlStoreTooMany."""
        if sql_id in self._texts:
            raise SqlExists(f"SQL text {sql_id} is already stored")
        if len(sql) > self.max_sql_length:
            raise SqlStoreTooLarge(f"SQL text longer than {self.max_sql_length} characters")
        if len(self._texts) >= MAX_STORED_SQL:
            raise SqlStoreTooMany(f"a connection stores at most {MAX_STORED_SQL} SQL texts")
        if self._chars + len(sql) > MAX_STORED_SQL_CHARS:
            raise SqlStoreTooMany(f"a connection stores at most {MAX_STORED_SQL_CHARS} characters of SQL")
        self._texts[sql_id] = sql
        self._chars += len(sql)

    def close(self, sql_id: int) -> None:
        """Forget `sql_id` (nothing stored under it is fine, as the spec says)."""
        self._chars -= len(self._texts.pop(sql_id, ""))

    def clear(self) -> None:
        self._texts.clear()
        self._chars = 0

    def resolve(self, request: Request) -> Request:
        """`request` with every sql_id replaced by its text. Raises SqlNotFound."""
        if request.stmt is not None:
            return replace(request, stmt=self._stmt(request.stmt))
        if request.batch is not None:
            return replace(request, batch=self.resolve_batch(request.batch))
        if request.sql_id is not None and request.kind in ("sequence", "describe"):
            return replace(request, sql=self._text(request.sql_id), sql_id=None)
        return request

    def resolve_batch(self, batch: Batch) -> Batch:
        if all(step.stmt.sql_id is None for step in batch.steps):
            return batch
        return Batch([replace(step, stmt=self._stmt(step.stmt)) for step in batch.steps])

    def _stmt(self, stmt: Stmt) -> Stmt:
        return stmt if stmt.sql_id is None else replace(stmt, sql=self._text(stmt.sql_id), sql_id=None)

    def _text(self, sql_id: int) -> str:
        sql = self._texts.get(sql_id)
        if sql is None:
            raise SqlNotFound(f"no SQL text stored as {sql_id}")
        return sql

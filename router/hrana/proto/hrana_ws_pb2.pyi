from router.hrana.proto import hrana_pb2 as _hrana_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientMsg(_message.Message):
    __slots__ = ("hello", "request")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    hello: HelloMsg
    request: RequestMsg
    def __init__(self, hello: _Optional[_Union[HelloMsg, _Mapping]] = ..., request: _Optional[_Union[RequestMsg, _Mapping]] = ...) -> None: ...

class ServerMsg(_message.Message):
    __slots__ = ("hello_ok", "hello_error", "response_ok", "response_error")
    HELLO_OK_FIELD_NUMBER: _ClassVar[int]
    HELLO_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_OK_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    hello_ok: HelloOkMsg
    hello_error: HelloErrorMsg
    response_ok: ResponseOkMsg
    response_error: ResponseErrorMsg
    def __init__(self, hello_ok: _Optional[_Union[HelloOkMsg, _Mapping]] = ..., hello_error: _Optional[_Union[HelloErrorMsg, _Mapping]] = ..., response_ok: _Optional[_Union[ResponseOkMsg, _Mapping]] = ..., response_error: _Optional[_Union[ResponseErrorMsg, _Mapping]] = ...) -> None: ...

class HelloMsg(_message.Message):
    __slots__ = ("jwt",)
    JWT_FIELD_NUMBER: _ClassVar[int]
    jwt: str
    def __init__(self, jwt: _Optional[str] = ...) -> None: ...

class HelloOkMsg(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HelloErrorMsg(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: _hrana_pb2.Error
    def __init__(self, error: _Optional[_Union[_hrana_pb2.Error, _Mapping]] = ...) -> None: ...

class RequestMsg(_message.Message):
    __slots__ = ("request_id", "open_stream", "close_stream", "execute", "batch", "open_cursor", "close_cursor", "fetch_cursor", "sequence", "describe", "store_sql", "close_sql", "get_autocommit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAM_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STREAM_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_CURSOR_FIELD_NUMBER: _ClassVar[int]
    CLOSE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FETCH_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    STORE_SQL_FIELD_NUMBER: _ClassVar[int]
    CLOSE_SQL_FIELD_NUMBER: _ClassVar[int]
    GET_AUTOCOMMIT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    open_stream: OpenStreamReq
    close_stream: CloseStreamReq
    execute: ExecuteReq
    batch: BatchReq
    open_cursor: OpenCursorReq
    close_cursor: CloseCursorReq
    fetch_cursor: FetchCursorReq
    sequence: SequenceReq
    describe: DescribeReq
    store_sql: StoreSqlReq
    close_sql: CloseSqlReq
    get_autocommit: GetAutocommitReq
    def __init__(self, request_id: _Optional[int] = ..., open_stream: _Optional[_Union[OpenStreamReq, _Mapping]] = ..., close_stream: _Optional[_Union[CloseStreamReq, _Mapping]] = ..., execute: _Optional[_Union[ExecuteReq, _Mapping]] = ..., batch: _Optional[_Union[BatchReq, _Mapping]] = ..., open_cursor: _Optional[_Union[OpenCursorReq, _Mapping]] = ..., close_cursor: _Optional[_Union[CloseCursorReq, _Mapping]] = ..., fetch_cursor: _Optional[_Union[FetchCursorReq, _Mapping]] = ..., sequence: _Optional[_Union[SequenceReq, _Mapping]] = ..., describe: _Optional[_Union[DescribeReq, _Mapping]] = ..., store_sql: _Optional[_Union[StoreSqlReq, _Mapping]] = ..., close_sql: _Optional[_Union[CloseSqlReq, _Mapping]] = ..., get_autocommit: _Optional[_Union[GetAutocommitReq, _Mapping]] = ...) -> None: ...

class ResponseOkMsg(_message.Message):
    __slots__ = ("request_id", "open_stream", "close_stream", "execute", "batch", "open_cursor", "close_cursor", "fetch_cursor", "sequence", "describe", "store_sql", "close_sql", "get_autocommit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAM_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STREAM_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_CURSOR_FIELD_NUMBER: _ClassVar[int]
    CLOSE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FETCH_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    STORE_SQL_FIELD_NUMBER: _ClassVar[int]
    CLOSE_SQL_FIELD_NUMBER: _ClassVar[int]
    GET_AUTOCOMMIT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    open_stream: OpenStreamResp
    close_stream: CloseStreamResp
    execute: ExecuteResp
    batch: BatchResp
    open_cursor: OpenCursorResp
    close_cursor: CloseCursorResp
    fetch_cursor: FetchCursorResp
    sequence: SequenceResp
    describe: DescribeResp
    store_sql: StoreSqlResp
    close_sql: CloseSqlResp
    get_autocommit: GetAutocommitResp
    def __init__(self, request_id: _Optional[int] = ..., open_stream: _Optional[_Union[OpenStreamResp, _Mapping]] = ..., close_stream: _Optional[_Union[CloseStreamResp, _Mapping]] = ..., execute: _Optional[_Union[ExecuteResp, _Mapping]] = ..., batch: _Optional[_Union[BatchResp, _Mapping]] = ..., open_cursor: _Optional[_Union[OpenCursorResp, _Mapping]] = ..., close_cursor: _Optional[_Union[CloseCursorResp, _Mapping]] = ..., fetch_cursor: _Optional[_Union[FetchCursorResp, _Mapping]] = ..., sequence: _Optional[_Union[SequenceResp, _Mapping]] = ..., describe: _Optional[_Union[DescribeResp, _Mapping]] = ..., store_sql: _Optional[_Union[StoreSqlResp, _Mapping]] = ..., close_sql: _Optional[_Union[CloseSqlResp, _Mapping]] = ..., get_autocommit: _Optional[_Union[GetAutocommitResp, _Mapping]] = ...) -> None: ...

class ResponseErrorMsg(_message.Message):
    __slots__ = ("request_id", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    error: _hrana_pb2.Error
    def __init__(self, request_id: _Optional[int] = ..., error: _Optional[_Union[_hrana_pb2.Error, _Mapping]] = ...) -> None: ...

class OpenStreamReq(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ...) -> None: ...

class OpenStreamResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseStreamReq(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ...) -> None: ...

class CloseStreamResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecuteReq(_message.Message):
    __slots__ = ("stream_id", "stmt")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STMT_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    stmt: _hrana_pb2.Stmt
    def __init__(self, stream_id: _Optional[int] = ..., stmt: _Optional[_Union[_hrana_pb2.Stmt, _Mapping]] = ...) -> None: ...

class ExecuteResp(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _hrana_pb2.StmtResult
    def __init__(self, result: _Optional[_Union[_hrana_pb2.StmtResult, _Mapping]] = ...) -> None: ...

class BatchReq(_message.Message):
    __slots__ = ("stream_id", "batch")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    batch: _hrana_pb2.Batch
    def __init__(self, stream_id: _Optional[int] = ..., batch: _Optional[_Union[_hrana_pb2.Batch, _Mapping]] = ...) -> None: ...

class BatchResp(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _hrana_pb2.BatchResult
    def __init__(self, result: _Optional[_Union[_hrana_pb2.BatchResult, _Mapping]] = ...) -> None: ...

class OpenCursorReq(_message.Message):
    __slots__ = ("stream_id", "cursor_id", "batch")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    cursor_id: int
    batch: _hrana_pb2.Batch
    def __init__(self, stream_id: _Optional[int] = ..., cursor_id: _Optional[int] = ..., batch: _Optional[_Union[_hrana_pb2.Batch, _Mapping]] = ...) -> None: ...

class OpenCursorResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseCursorReq(_message.Message):
    __slots__ = ("cursor_id",)
    CURSOR_ID_FIELD_NUMBER: _ClassVar[int]
    cursor_id: int
    def __init__(self, cursor_id: _Optional[int] = ...) -> None: ...

class CloseCursorResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchCursorReq(_message.Message):
    __slots__ = ("cursor_id", "max_count")
    CURSOR_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    cursor_id: int
    max_count: int
    def __init__(self, cursor_id: _Optional[int] = ..., max_count: _Optional[int] = ...) -> None: ...

class FetchCursorResp(_message.Message):
    __slots__ = ("entries", "done")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_hrana_pb2.CursorEntry]
    done: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[_hrana_pb2.CursorEntry, _Mapping]]] = ..., done: _Optional[bool] = ...) -> None: ...

class StoreSqlReq(_message.Message):
    __slots__ = ("sql_id", "sql")
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    sql_id: int
    sql: str
    def __init__(self, sql_id: _Optional[int] = ..., sql: _Optional[str] = ...) -> None: ...

class StoreSqlResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseSqlReq(_message.Message):
    __slots__ = ("sql_id",)
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    sql_id: int
    def __init__(self, sql_id: _Optional[int] = ...) -> None: ...

class CloseSqlResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SequenceReq(_message.Message):
    __slots__ = ("stream_id", "sql", "sql_id")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    sql: str
    sql_id: int
    def __init__(self, stream_id: _Optional[int] = ..., sql: _Optional[str] = ..., sql_id: _Optional[int] = ...) -> None: ...

class SequenceResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeReq(_message.Message):
    __slots__ = ("stream_id", "sql", "sql_id")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    sql: str
    sql_id: int
    def __init__(self, stream_id: _Optional[int] = ..., sql: _Optional[str] = ..., sql_id: _Optional[int] = ...) -> None: ...

class DescribeResp(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _hrana_pb2.DescribeResult
    def __init__(self, result: _Optional[_Union[_hrana_pb2.DescribeResult, _Mapping]] = ...) -> None: ...

class GetAutocommitReq(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ...) -> None: ...

class GetAutocommitResp(_message.Message):
    __slots__ = ("is_autocommit",)
    IS_AUTOCOMMIT_FIELD_NUMBER: _ClassVar[int]
    is_autocommit: bool
    def __init__(self, is_autocommit: _Optional[bool] = ...) -> None: ...

from router.hrana.proto import hrana_pb2 as _hrana_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PipelineReqBody(_message.Message):
    __slots__ = ("baton", "requests")
    BATON_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    baton: str
    requests: _containers.RepeatedCompositeFieldContainer[StreamRequest]
    def __init__(self, baton: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[StreamRequest, _Mapping]]] = ...) -> None: ...

class PipelineRespBody(_message.Message):
    __slots__ = ("baton", "base_url", "results")
    BATON_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    baton: str
    base_url: str
    results: _containers.RepeatedCompositeFieldContainer[StreamResult]
    def __init__(self, baton: _Optional[str] = ..., base_url: _Optional[str] = ..., results: _Optional[_Iterable[_Union[StreamResult, _Mapping]]] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: StreamResponse
    error: _hrana_pb2.Error
    def __init__(self, ok: _Optional[_Union[StreamResponse, _Mapping]] = ..., error: _Optional[_Union[_hrana_pb2.Error, _Mapping]] = ...) -> None: ...

class CursorReqBody(_message.Message):
    __slots__ = ("baton", "batch")
    BATON_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    baton: str
    batch: _hrana_pb2.Batch
    def __init__(self, baton: _Optional[str] = ..., batch: _Optional[_Union[_hrana_pb2.Batch, _Mapping]] = ...) -> None: ...

class CursorRespBody(_message.Message):
    __slots__ = ("baton", "base_url")
    BATON_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    baton: str
    base_url: str
    def __init__(self, baton: _Optional[str] = ..., base_url: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("close", "execute", "batch", "sequence", "describe", "store_sql", "close_sql", "get_autocommit")
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    STORE_SQL_FIELD_NUMBER: _ClassVar[int]
    CLOSE_SQL_FIELD_NUMBER: _ClassVar[int]
    GET_AUTOCOMMIT_FIELD_NUMBER: _ClassVar[int]
    close: CloseStreamReq
    execute: ExecuteStreamReq
    batch: BatchStreamReq
    sequence: SequenceStreamReq
    describe: DescribeStreamReq
    store_sql: StoreSqlStreamReq
    close_sql: CloseSqlStreamReq
    get_autocommit: GetAutocommitStreamReq
    def __init__(self, close: _Optional[_Union[CloseStreamReq, _Mapping]] = ..., execute: _Optional[_Union[ExecuteStreamReq, _Mapping]] = ..., batch: _Optional[_Union[BatchStreamReq, _Mapping]] = ..., sequence: _Optional[_Union[SequenceStreamReq, _Mapping]] = ..., describe: _Optional[_Union[DescribeStreamReq, _Mapping]] = ..., store_sql: _Optional[_Union[StoreSqlStreamReq, _Mapping]] = ..., close_sql: _Optional[_Union[CloseSqlStreamReq, _Mapping]] = ..., get_autocommit: _Optional[_Union[GetAutocommitStreamReq, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("close", "execute", "batch", "sequence", "describe", "store_sql", "close_sql", "get_autocommit")
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    STORE_SQL_FIELD_NUMBER: _ClassVar[int]
    CLOSE_SQL_FIELD_NUMBER: _ClassVar[int]
    GET_AUTOCOMMIT_FIELD_NUMBER: _ClassVar[int]
    close: CloseStreamResp
    execute: ExecuteStreamResp
    batch: BatchStreamResp
    sequence: SequenceStreamResp
    describe: DescribeStreamResp
    store_sql: StoreSqlStreamResp
    close_sql: CloseSqlStreamResp
    get_autocommit: GetAutocommitStreamResp
    def __init__(self, close: _Optional[_Union[CloseStreamResp, _Mapping]] = ..., execute: _Optional[_Union[ExecuteStreamResp, _Mapping]] = ..., batch: _Optional[_Union[BatchStreamResp, _Mapping]] = ..., sequence: _Optional[_Union[SequenceStreamResp, _Mapping]] = ..., describe: _Optional[_Union[DescribeStreamResp, _Mapping]] = ..., store_sql: _Optional[_Union[StoreSqlStreamResp, _Mapping]] = ..., close_sql: _Optional[_Union[CloseSqlStreamResp, _Mapping]] = ..., get_autocommit: _Optional[_Union[GetAutocommitStreamResp, _Mapping]] = ...) -> None: ...

class CloseStreamReq(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseStreamResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecuteStreamReq(_message.Message):
    __slots__ = ("stmt",)
    STMT_FIELD_NUMBER: _ClassVar[int]
    stmt: _hrana_pb2.Stmt
    def __init__(self, stmt: _Optional[_Union[_hrana_pb2.Stmt, _Mapping]] = ...) -> None: ...

class ExecuteStreamResp(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _hrana_pb2.StmtResult
    def __init__(self, result: _Optional[_Union[_hrana_pb2.StmtResult, _Mapping]] = ...) -> None: ...

class BatchStreamReq(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: _hrana_pb2.Batch
    def __init__(self, batch: _Optional[_Union[_hrana_pb2.Batch, _Mapping]] = ...) -> None: ...

class BatchStreamResp(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _hrana_pb2.BatchResult
    def __init__(self, result: _Optional[_Union[_hrana_pb2.BatchResult, _Mapping]] = ...) -> None: ...

class SequenceStreamReq(_message.Message):
    __slots__ = ("sql", "sql_id")
    SQL_FIELD_NUMBER: _ClassVar[int]
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    sql: str
    sql_id: int
    def __init__(self, sql: _Optional[str] = ..., sql_id: _Optional[int] = ...) -> None: ...

class SequenceStreamResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeStreamReq(_message.Message):
    __slots__ = ("sql", "sql_id")
    SQL_FIELD_NUMBER: _ClassVar[int]
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    sql: str
    sql_id: int
    def __init__(self, sql: _Optional[str] = ..., sql_id: _Optional[int] = ...) -> None: ...

class DescribeStreamResp(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _hrana_pb2.DescribeResult
    def __init__(self, result: _Optional[_Union[_hrana_pb2.DescribeResult, _Mapping]] = ...) -> None: ...

class StoreSqlStreamReq(_message.Message):
    __slots__ = ("sql_id", "sql")
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    sql_id: int
    sql: str
    def __init__(self, sql_id: _Optional[int] = ..., sql: _Optional[str] = ...) -> None: ...

class StoreSqlStreamResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseSqlStreamReq(_message.Message):
    __slots__ = ("sql_id",)
    SQL_ID_FIELD_NUMBER: _ClassVar[int]
    sql_id: int
    def __init__(self, sql_id: _Optional[int] = ...) -> None: ...

class CloseSqlStreamResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAutocommitStreamReq(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAutocommitStreamResp(_message.Message):
    __slots__ = ("is_autocommit",)
    IS_AUTOCOMMIT_FIELD_NUMBER: _ClassVar[int]
    is_autocommit: bool
    def __init__(self, is_autocommit: _Optional[bool] = ...) -> None: ...

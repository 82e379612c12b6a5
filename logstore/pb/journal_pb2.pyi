from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[Op]
    SETATTR: _ClassVar[Op]
    WRITE: _ClassVar[Op]
    CREATE: _ClassVar[Op]
    MKDIR: _ClassVar[Op]
    SYMLINK: _ClassVar[Op]
    MKNOD: _ClassVar[Op]
    REMOVE: _ClassVar[Op]
    RMDIR: _ClassVar[Op]
    RENAME: _ClassVar[Op]
    LINK: _ClassVar[Op]
    COMMIT: _ClassVar[Op]
    BIND: _ClassVar[Op]
    BASELINE: _ClassVar[Op]
    BASELINE_BEGIN: _ClassVar[Op]
    BASELINE_END: _ClassVar[Op]
    GAP: _ClassVar[Op]
    SETACL: _ClassVar[Op]
OP_UNSPECIFIED: Op
SETATTR: Op
WRITE: Op
CREATE: Op
MKDIR: Op
SYMLINK: Op
MKNOD: Op
REMOVE: Op
RMDIR: Op
RENAME: Op
LINK: Op
COMMIT: Op
BIND: Op
BASELINE: Op
BASELINE_BEGIN: Op
BASELINE_END: Op
GAP: Op
SETACL: Op

class Attr(_message.Message):
    __slots__ = ("type", "mode", "nlink", "uid", "gid", "size", "used", "rdev_major", "rdev_minor", "fsid", "fileid", "atime_ns", "mtime_ns", "ctime_ns")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NLINK_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RDEV_MAJOR_FIELD_NUMBER: _ClassVar[int]
    RDEV_MINOR_FIELD_NUMBER: _ClassVar[int]
    FSID_FIELD_NUMBER: _ClassVar[int]
    FILEID_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    type: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev_major: int
    rdev_minor: int
    fsid: int
    fileid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    def __init__(self, type: _Optional[int] = ..., mode: _Optional[int] = ..., nlink: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., size: _Optional[int] = ..., used: _Optional[int] = ..., rdev_major: _Optional[int] = ..., rdev_minor: _Optional[int] = ..., fsid: _Optional[int] = ..., fileid: _Optional[int] = ..., atime_ns: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., ctime_ns: _Optional[int] = ...) -> None: ...

class SetAttr(_message.Message):
    __slots__ = ("mode", "uid", "gid", "size", "atime_ns", "atime_server", "mtime_ns", "mtime_server")
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    ATIME_SERVER_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_SERVER_FIELD_NUMBER: _ClassVar[int]
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    atime_server: bool
    mtime_ns: int
    mtime_server: bool
    def __init__(self, mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., size: _Optional[int] = ..., atime_ns: _Optional[int] = ..., atime_server: _Optional[bool] = ..., mtime_ns: _Optional[int] = ..., mtime_server: _Optional[bool] = ...) -> None: ...

class AclEntry(_message.Message):
    __slots__ = ("type", "id", "perm")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PERM_FIELD_NUMBER: _ClassVar[int]
    type: int
    id: int
    perm: int
    def __init__(self, type: _Optional[int] = ..., id: _Optional[int] = ..., perm: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("stamp", "op", "ok", "status", "seq", "client", "uid", "gid", "gids", "machine_name", "xid", "fh", "dir_fh", "name", "to_dir_fh", "to_name", "offset", "count", "stable", "data", "set", "create_mode", "verifier", "symlink_target", "mknod_type", "rdev_major", "rdev_minor", "guard_ctime_ns", "attr", "dir_attr", "to_dir_attr", "reply_count", "baseline_id", "baseline_first", "baseline_files", "baseline_bytes", "object_fh", "gap_from", "gap_cause", "gap_reason", "acl", "default_acl", "acl_mask")
    STAMP_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GIDS_FIELD_NUMBER: _ClassVar[int]
    MACHINE_NAME_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    FH_FIELD_NUMBER: _ClassVar[int]
    DIR_FH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_DIR_FH_FIELD_NUMBER: _ClassVar[int]
    TO_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    CREATE_MODE_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    MKNOD_TYPE_FIELD_NUMBER: _ClassVar[int]
    RDEV_MAJOR_FIELD_NUMBER: _ClassVar[int]
    RDEV_MINOR_FIELD_NUMBER: _ClassVar[int]
    GUARD_CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    DIR_ATTR_FIELD_NUMBER: _ClassVar[int]
    TO_DIR_ATTR_FIELD_NUMBER: _ClassVar[int]
    REPLY_COUNT_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIRST_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FILES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FH_FIELD_NUMBER: _ClassVar[int]
    GAP_FROM_FIELD_NUMBER: _ClassVar[int]
    GAP_CAUSE_FIELD_NUMBER: _ClassVar[int]
    GAP_REASON_FIELD_NUMBER: _ClassVar[int]
    ACL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ACL_FIELD_NUMBER: _ClassVar[int]
    ACL_MASK_FIELD_NUMBER: _ClassVar[int]
    stamp: bytes
    op: Op
    ok: bool
    status: int
    seq: int
    client: str
    uid: int
    gid: int
    gids: _containers.RepeatedScalarFieldContainer[int]
    machine_name: bytes
    xid: int
    fh: bytes
    dir_fh: bytes
    name: bytes
    to_dir_fh: bytes
    to_name: bytes
    offset: int
    count: int
    stable: int
    data: bytes
    set: SetAttr
    create_mode: int
    verifier: bytes
    symlink_target: bytes
    mknod_type: int
    rdev_major: int
    rdev_minor: int
    guard_ctime_ns: int
    attr: Attr
    dir_attr: Attr
    to_dir_attr: Attr
    reply_count: int
    baseline_id: bytes
    baseline_first: bool
    baseline_files: int
    baseline_bytes: int
    object_fh: bytes
    gap_from: bytes
    gap_cause: str
    gap_reason: str
    acl: _containers.RepeatedCompositeFieldContainer[AclEntry]
    default_acl: _containers.RepeatedCompositeFieldContainer[AclEntry]
    acl_mask: int
    def __init__(self, stamp: _Optional[bytes] = ..., op: _Optional[_Union[Op, str]] = ..., ok: _Optional[bool] = ..., status: _Optional[int] = ..., seq: _Optional[int] = ..., client: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., gids: _Optional[_Iterable[int]] = ..., machine_name: _Optional[bytes] = ..., xid: _Optional[int] = ..., fh: _Optional[bytes] = ..., dir_fh: _Optional[bytes] = ..., name: _Optional[bytes] = ..., to_dir_fh: _Optional[bytes] = ..., to_name: _Optional[bytes] = ..., offset: _Optional[int] = ..., count: _Optional[int] = ..., stable: _Optional[int] = ..., data: _Optional[bytes] = ..., set: _Optional[_Union[SetAttr, _Mapping]] = ..., create_mode: _Optional[int] = ..., verifier: _Optional[bytes] = ..., symlink_target: _Optional[bytes] = ..., mknod_type: _Optional[int] = ..., rdev_major: _Optional[int] = ..., rdev_minor: _Optional[int] = ..., guard_ctime_ns: _Optional[int] = ..., attr: _Optional[_Union[Attr, _Mapping]] = ..., dir_attr: _Optional[_Union[Attr, _Mapping]] = ..., to_dir_attr: _Optional[_Union[Attr, _Mapping]] = ..., reply_count: _Optional[int] = ..., baseline_id: _Optional[bytes] = ..., baseline_first: _Optional[bool] = ..., baseline_files: _Optional[int] = ..., baseline_bytes: _Optional[int] = ..., object_fh: _Optional[bytes] = ..., gap_from: _Optional[bytes] = ..., gap_cause: _Optional[str] = ..., gap_reason: _Optional[str] = ..., acl: _Optional[_Iterable[_Union[AclEntry, _Mapping]]] = ..., default_acl: _Optional[_Iterable[_Union[AclEntry, _Mapping]]] = ..., acl_mask: _Optional[int] = ...) -> None: ...

class StreamId(_message.Message):
    __slots__ = ("node_id", "log_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    log_id: str
    def __init__(self, node_id: _Optional[int] = ..., log_id: _Optional[str] = ...) -> None: ...

class ShippedRecord(_message.Message):
    __slots__ = ("seq", "record", "stamp", "data_at")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    STAMP_FIELD_NUMBER: _ClassVar[int]
    DATA_AT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    record: bytes
    stamp: bytes
    data_at: int
    def __init__(self, seq: _Optional[int] = ..., record: _Optional[bytes] = ..., stamp: _Optional[bytes] = ..., data_at: _Optional[int] = ...) -> None: ...

class IngestBatch(_message.Message):
    __slots__ = ("stream", "after_seq", "through_seq", "records", "stable", "sent_stamp", "gap", "newest", "frames", "defer_durable")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    SENT_STAMP_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DEFER_DURABLE_FIELD_NUMBER: _ClassVar[int]
    stream: StreamId
    after_seq: int
    through_seq: int
    records: _containers.RepeatedCompositeFieldContainer[ShippedRecord]
    stable: bytes
    sent_stamp: bytes
    gap: bool
    newest: bytes
    frames: bytes
    defer_durable: bool
    def __init__(self, stream: _Optional[_Union[StreamId, _Mapping]] = ..., after_seq: _Optional[int] = ..., through_seq: _Optional[int] = ..., records: _Optional[_Iterable[_Union[ShippedRecord, _Mapping]]] = ..., stable: _Optional[bytes] = ..., sent_stamp: _Optional[bytes] = ..., gap: _Optional[bool] = ..., newest: _Optional[bytes] = ..., frames: _Optional[bytes] = ..., defer_durable: _Optional[bool] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("stream", "durable_seq", "frontier", "shard_stamp", "error", "shard_id", "reads_frames", "applied_seq")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    FRONTIER_FIELD_NUMBER: _ClassVar[int]
    SHARD_STAMP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    READS_FRAMES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    stream: StreamId
    durable_seq: int
    frontier: bytes
    shard_stamp: bytes
    error: str
    shard_id: int
    reads_frames: bool
    applied_seq: int
    def __init__(self, stream: _Optional[_Union[StreamId, _Mapping]] = ..., durable_seq: _Optional[int] = ..., frontier: _Optional[bytes] = ..., shard_stamp: _Optional[bytes] = ..., error: _Optional[str] = ..., shard_id: _Optional[int] = ..., reads_frames: _Optional[bool] = ..., applied_seq: _Optional[int] = ...) -> None: ...

class StreamGap(_message.Message):
    __slots__ = ("after_seq", "through_seq", "through", "cause", "reason")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    THROUGH_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    through_seq: int
    through: bytes
    cause: str
    reason: str
    def __init__(self, after_seq: _Optional[int] = ..., through_seq: _Optional[int] = ..., through: _Optional[bytes] = ..., cause: _Optional[str] = ..., reason: _Optional[str] = ..., **kwargs) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("stream", "durable_seq", "frontier", "newest", "gaps", "records", "updated_unix_ns", "gap_ranges")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    FRONTIER_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    GAP_RANGES_FIELD_NUMBER: _ClassVar[int]
    stream: StreamId
    durable_seq: int
    frontier: bytes
    newest: bytes
    gaps: _containers.RepeatedScalarFieldContainer[str]
    records: int
    updated_unix_ns: int
    gap_ranges: _containers.RepeatedCompositeFieldContainer[StreamGap]
    def __init__(self, stream: _Optional[_Union[StreamId, _Mapping]] = ..., durable_seq: _Optional[int] = ..., frontier: _Optional[bytes] = ..., newest: _Optional[bytes] = ..., gaps: _Optional[_Iterable[str]] = ..., records: _Optional[int] = ..., updated_unix_ns: _Optional[int] = ..., gap_ranges: _Optional[_Iterable[_Union[StreamGap, _Mapping]]] = ...) -> None: ...

class ShardStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard_id", "streams", "records", "bytes", "frontier", "shard_stamp", "data_id", "baselines", "members", "streams_hidden")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FRONTIER_FIELD_NUMBER: _ClassVar[int]
    SHARD_STAMP_FIELD_NUMBER: _ClassVar[int]
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    BASELINES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    streams: _containers.RepeatedCompositeFieldContainer[StreamStatus]
    records: int
    bytes: int
    frontier: bytes
    shard_stamp: bytes
    data_id: str
    baselines: _containers.RepeatedCompositeFieldContainer[BaselineInfo]
    members: _containers.RepeatedScalarFieldContainer[int]
    streams_hidden: bool
    def __init__(self, shard_id: _Optional[int] = ..., streams: _Optional[_Iterable[_Union[StreamStatus, _Mapping]]] = ..., records: _Optional[int] = ..., bytes: _Optional[int] = ..., frontier: _Optional[bytes] = ..., shard_stamp: _Optional[bytes] = ..., data_id: _Optional[str] = ..., baselines: _Optional[_Iterable[_Union[BaselineInfo, _Mapping]]] = ..., members: _Optional[_Iterable[int]] = ..., streams_hidden: _Optional[bool] = ...) -> None: ...

class RetireRequest(_message.Message):
    __slots__ = ("stream", "through_seq")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    stream: StreamId
    through_seq: int
    def __init__(self, stream: _Optional[_Union[StreamId, _Mapping]] = ..., through_seq: _Optional[int] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("after", "until", "with_data", "ops", "limit")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    WITH_DATA_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after: bytes
    until: bytes
    with_data: bool
    ops: _containers.RepeatedScalarFieldContainer[Op]
    limit: int
    def __init__(self, after: _Optional[bytes] = ..., until: _Optional[bytes] = ..., with_data: _Optional[bool] = ..., ops: _Optional[_Iterable[_Union[Op, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class FileRequest(_message.Message):
    __slots__ = ("fh", "after", "until", "with_data")
    FH_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    WITH_DATA_FIELD_NUMBER: _ClassVar[int]
    fh: bytes
    after: bytes
    until: bytes
    with_data: bool
    def __init__(self, fh: _Optional[bytes] = ..., after: _Optional[bytes] = ..., until: _Optional[bytes] = ..., with_data: _Optional[bool] = ...) -> None: ...

class FilesRequest(_message.Message):
    __slots__ = ("fhs", "after", "until", "with_data")
    FHS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    WITH_DATA_FIELD_NUMBER: _ClassVar[int]
    fhs: _containers.RepeatedScalarFieldContainer[bytes]
    after: bytes
    until: bytes
    with_data: bool
    def __init__(self, fhs: _Optional[_Iterable[bytes]] = ..., after: _Optional[bytes] = ..., until: _Optional[bytes] = ..., with_data: _Optional[bool] = ...) -> None: ...

class RecordChunk(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BulkRequest(_message.Message):
    __slots__ = ("scan", "files")
    SCAN_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    scan: ScanRequest
    files: FilesRequest
    def __init__(self, scan: _Optional[_Union[ScanRequest, _Mapping]] = ..., files: _Optional[_Union[FilesRequest, _Mapping]] = ...) -> None: ...

class BulkTicket(_message.Message):
    __slots__ = ("ticket", "port", "tls")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    ticket: bytes
    port: int
    tls: bool
    def __init__(self, ticket: _Optional[bytes] = ..., port: _Optional[int] = ..., tls: _Optional[bool] = ...) -> None: ...

class BaselineInfo(_message.Message):
    __slots__ = ("baseline_id", "end", "files", "bytes")
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    baseline_id: bytes
    end: bytes
    files: int
    bytes: int
    def __init__(self, baseline_id: _Optional[bytes] = ..., end: _Optional[bytes] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class BaselineList(_message.Message):
    __slots__ = ("baselines",)
    BASELINES_FIELD_NUMBER: _ClassVar[int]
    baselines: _containers.RepeatedCompositeFieldContainer[BaselineInfo]
    def __init__(self, baselines: _Optional[_Iterable[_Union[BaselineInfo, _Mapping]]] = ...) -> None: ...

class BaselineRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BaselineProgress(_message.Message):
    __slots__ = ("files", "bytes", "dirs", "current", "done", "baseline_id", "end", "error", "total_bytes_hint")
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_HINT_FIELD_NUMBER: _ClassVar[int]
    files: int
    bytes: int
    dirs: int
    current: str
    done: bool
    baseline_id: bytes
    end: bytes
    error: str
    total_bytes_hint: int
    def __init__(self, files: _Optional[int] = ..., bytes: _Optional[int] = ..., dirs: _Optional[int] = ..., current: _Optional[str] = ..., done: _Optional[bool] = ..., baseline_id: _Optional[bytes] = ..., end: _Optional[bytes] = ..., error: _Optional[str] = ..., total_bytes_hint: _Optional[int] = ...) -> None: ...

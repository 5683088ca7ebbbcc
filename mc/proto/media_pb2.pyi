from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DisconnectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECT_REASON_UNSPECIFIED: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_CLIENT_CLOSED: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_TIMEOUT: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_ERROR: _ClassVar[DisconnectReason]
DISCONNECT_REASON_UNSPECIFIED: DisconnectReason
DISCONNECT_REASON_CLIENT_CLOSED: DisconnectReason
DISCONNECT_REASON_TIMEOUT: DisconnectReason
DISCONNECT_REASON_ERROR: DisconnectReason

class RegisterMeetingRequest(_message.Message):
    __slots__ = ("meeting_id", "mc_id", "mc_grpc_endpoint")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    MC_ID_FIELD_NUMBER: _ClassVar[int]
    MC_GRPC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    mc_id: str
    mc_grpc_endpoint: str
    def __init__(self, meeting_id: _Optional[str] = ..., mc_id: _Optional[str] = ..., mc_grpc_endpoint: _Optional[str] = ...) -> None: ...

class RegisterMeetingResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class NotifyParticipantConnectedRequest(_message.Message):
    __slots__ = ("meeting_id", "participant_id", "handler_id")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLER_ID_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    participant_id: str
    handler_id: str
    def __init__(self, meeting_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., handler_id: _Optional[str] = ...) -> None: ...

class NotifyParticipantConnectedResponse(_message.Message):
    __slots__ = ("acknowledged",)
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    acknowledged: bool
    def __init__(self, acknowledged: _Optional[bool] = ...) -> None: ...

class NotifyParticipantDisconnectedRequest(_message.Message):
    __slots__ = ("meeting_id", "participant_id", "handler_id", "reason")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    participant_id: str
    handler_id: str
    reason: DisconnectReason
    def __init__(self, meeting_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., handler_id: _Optional[str] = ..., reason: _Optional[_Union[DisconnectReason, str]] = ...) -> None: ...

class NotifyParticipantDisconnectedResponse(_message.Message):
    __slots__ = ("acknowledged",)
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    acknowledged: bool
    def __init__(self, acknowledged: _Optional[bool] = ...) -> None: ...

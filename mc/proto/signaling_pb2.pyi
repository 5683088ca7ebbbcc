import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO: _ClassVar[StreamType]
    VIDEO_CAMERA: _ClassVar[StreamType]
    VIDEO_SCREEN: _ClassVar[StreamType]

class LeaveReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUNTARY: _ClassVar[LeaveReason]
    KICKED: _ClassVar[LeaveReason]
    CONNECTION_LOST: _ClassVar[LeaveReason]
    MEETING_ENDED: _ClassVar[LeaveReason]
    TIMEOUT: _ClassVar[LeaveReason]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[ErrorCode]
    INVALID_REQUEST: _ClassVar[ErrorCode]
    UNAUTHORIZED: _ClassVar[ErrorCode]
    FORBIDDEN: _ClassVar[ErrorCode]
    NOT_FOUND: _ClassVar[ErrorCode]
    CONFLICT: _ClassVar[ErrorCode]
    INTERNAL_ERROR: _ClassVar[ErrorCode]
    CAPACITY_EXCEEDED: _ClassVar[ErrorCode]
    STREAM_ERROR: _ClassVar[ErrorCode]

class ConnectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATE_UNSPECIFIED: _ClassVar[ConnectionState]
    CONNECTION_STATE_CONNECTED: _ClassVar[ConnectionState]
    CONNECTION_STATE_FAILED: _ClassVar[ConnectionState]
    CONNECTION_STATE_DISCONNECTED: _ClassVar[ConnectionState]
AUDIO: StreamType
VIDEO_CAMERA: StreamType
VIDEO_SCREEN: StreamType
VOLUNTARY: LeaveReason
KICKED: LeaveReason
CONNECTION_LOST: LeaveReason
MEETING_ENDED: LeaveReason
TIMEOUT: LeaveReason
UNKNOWN: ErrorCode
INVALID_REQUEST: ErrorCode
UNAUTHORIZED: ErrorCode
FORBIDDEN: ErrorCode
NOT_FOUND: ErrorCode
CONFLICT: ErrorCode
INTERNAL_ERROR: ErrorCode
CAPACITY_EXCEEDED: ErrorCode
STREAM_ERROR: ErrorCode
CONNECTION_STATE_UNSPECIFIED: ConnectionState
CONNECTION_STATE_CONNECTED: ConnectionState
CONNECTION_STATE_FAILED: ConnectionState
CONNECTION_STATE_DISCONNECTED: ConnectionState

class ParticipantCapabilities(_message.Message):
    __slots__ = ("video_codecs", "audio_codecs", "supports_simulcast", "max_video_streams")
    VIDEO_CODECS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CODECS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_SIMULCAST_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_STREAMS_FIELD_NUMBER: _ClassVar[int]
    video_codecs: _containers.RepeatedScalarFieldContainer[str]
    audio_codecs: _containers.RepeatedScalarFieldContainer[str]
    supports_simulcast: bool
    max_video_streams: int
    def __init__(self, video_codecs: _Optional[_Iterable[str]] = ..., audio_codecs: _Optional[_Iterable[str]] = ..., supports_simulcast: _Optional[bool] = ..., max_video_streams: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("meeting_id", "join_token", "participant_name", "capabilities", "correlation_id", "binding_token")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    BINDING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    join_token: str
    participant_name: str
    capabilities: ParticipantCapabilities
    correlation_id: str
    binding_token: str
    def __init__(self, meeting_id: _Optional[str] = ..., join_token: _Optional[str] = ..., participant_name: _Optional[str] = ..., capabilities: _Optional[_Union[ParticipantCapabilities, _Mapping]] = ..., correlation_id: _Optional[str] = ..., binding_token: _Optional[str] = ...) -> None: ...

class MediaServerInfo(_message.Message):
    __slots__ = ("media_handler_url",)
    MEDIA_HANDLER_URL_FIELD_NUMBER: _ClassVar[int]
    media_handler_url: str
    def __init__(self, media_handler_url: _Optional[str] = ...) -> None: ...

class EncryptionKeys(_message.Message):
    __slots__ = ("public_key", "key_id")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    key_id: str
    def __init__(self, public_key: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class StreamMetadata(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MediaStream(_message.Message):
    __slots__ = ("stream_id", "stream_type", "metadata")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    stream_type: StreamType
    metadata: StreamMetadata
    def __init__(self, stream_id: _Optional[str] = ..., stream_type: _Optional[_Union[StreamType, str]] = ..., metadata: _Optional[_Union[StreamMetadata, _Mapping]] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("participant_id", "name", "streams", "joined_at")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    name: str
    streams: _containers.RepeatedCompositeFieldContainer[MediaStream]
    joined_at: int
    def __init__(self, participant_id: _Optional[str] = ..., name: _Optional[str] = ..., streams: _Optional[_Iterable[_Union[MediaStream, _Mapping]]] = ..., joined_at: _Optional[int] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("participant_id", "user_id", "existing_participants", "media_servers", "encryption_keys", "correlation_id", "binding_token")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTING_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_SERVERS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEYS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    BINDING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    user_id: int
    existing_participants: _containers.RepeatedCompositeFieldContainer[Participant]
    media_servers: _containers.RepeatedCompositeFieldContainer[MediaServerInfo]
    encryption_keys: EncryptionKeys
    correlation_id: str
    binding_token: str
    def __init__(self, participant_id: _Optional[str] = ..., user_id: _Optional[int] = ..., existing_participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., media_servers: _Optional[_Iterable[_Union[MediaServerInfo, _Mapping]]] = ..., encryption_keys: _Optional[_Union[EncryptionKeys, _Mapping]] = ..., correlation_id: _Optional[str] = ..., binding_token: _Optional[str] = ...) -> None: ...

class ParticipantJoined(_message.Message):
    __slots__ = ("participant",)
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    participant: Participant
    def __init__(self, participant: _Optional[_Union[Participant, _Mapping]] = ...) -> None: ...

class ParticipantLeft(_message.Message):
    __slots__ = ("participant_id", "reason")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    reason: LeaveReason
    def __init__(self, participant_id: _Optional[str] = ..., reason: _Optional[_Union[LeaveReason, str]] = ...) -> None: ...

class MuteRequest(_message.Message):
    __slots__ = ("audio_muted", "video_muted")
    AUDIO_MUTED_FIELD_NUMBER: _ClassVar[int]
    VIDEO_MUTED_FIELD_NUMBER: _ClassVar[int]
    audio_muted: bool
    video_muted: bool
    def __init__(self, audio_muted: _Optional[bool] = ..., video_muted: _Optional[bool] = ...) -> None: ...

class ParticipantMuteUpdate(_message.Message):
    __slots__ = ("participant_id", "audio_self_muted", "video_self_muted", "audio_host_muted", "video_host_muted", "host_muted_by")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SELF_MUTED_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SELF_MUTED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_HOST_MUTED_FIELD_NUMBER: _ClassVar[int]
    VIDEO_HOST_MUTED_FIELD_NUMBER: _ClassVar[int]
    HOST_MUTED_BY_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    audio_self_muted: bool
    video_self_muted: bool
    audio_host_muted: bool
    video_host_muted: bool
    host_muted_by: str
    def __init__(self, participant_id: _Optional[str] = ..., audio_self_muted: _Optional[bool] = ..., video_self_muted: _Optional[bool] = ..., audio_host_muted: _Optional[bool] = ..., video_host_muted: _Optional[bool] = ..., host_muted_by: _Optional[str] = ...) -> None: ...

class RedirectToMc(_message.Message):
    __slots__ = ("new_mc_endpoint", "meeting_id", "reason")
    NEW_MC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    new_mc_endpoint: str
    meeting_id: str
    reason: str
    def __init__(self, new_mc_endpoint: _Optional[str] = ..., meeting_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ErrorMessage(_message.Message):
    __slots__ = ("code", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublishStream(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeToLayout(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateLayout(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnsubscribeLayout(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamQualityUpdate(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HostMuteRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnmuteRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnmuteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamPublished(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamAssignments(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MhConnectionStatus(_message.Message):
    __slots__ = ("mh_url", "state", "failure_reason", "failure_code", "observed_at")
    MH_URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    mh_url: str
    state: ConnectionState
    failure_reason: str
    failure_code: str
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, mh_url: _Optional[str] = ..., state: _Optional[_Union[ConnectionState, str]] = ..., failure_reason: _Optional[str] = ..., failure_code: _Optional[str] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MediaConnectionUpdate(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[MhConnectionStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[MhConnectionStatus, _Mapping]]] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("join_request", "publish_stream", "subscribe_to_layout", "update_layout", "unsubscribe_layout", "stream_quality_update", "mute_request", "host_mute_request", "unmute_request", "unmute_response", "media_connection_update", "trace_parent", "trace_state")
    JOIN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_STREAM_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_TO_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    STREAM_QUALITY_UPDATE_FIELD_NUMBER: _ClassVar[int]
    MUTE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    HOST_MUTE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMUTE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMUTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_CONNECTION_UPDATE_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    TRACE_STATE_FIELD_NUMBER: _ClassVar[int]
    join_request: JoinRequest
    publish_stream: PublishStream
    subscribe_to_layout: SubscribeToLayout
    update_layout: UpdateLayout
    unsubscribe_layout: UnsubscribeLayout
    stream_quality_update: StreamQualityUpdate
    mute_request: MuteRequest
    host_mute_request: HostMuteRequest
    unmute_request: UnmuteRequest
    unmute_response: UnmuteResponse
    media_connection_update: MediaConnectionUpdate
    trace_parent: str
    trace_state: str
    def __init__(self, join_request: _Optional[_Union[JoinRequest, _Mapping]] = ..., publish_stream: _Optional[_Union[PublishStream, _Mapping]] = ..., subscribe_to_layout: _Optional[_Union[SubscribeToLayout, _Mapping]] = ..., update_layout: _Optional[_Union[UpdateLayout, _Mapping]] = ..., unsubscribe_layout: _Optional[_Union[UnsubscribeLayout, _Mapping]] = ..., stream_quality_update: _Optional[_Union[StreamQualityUpdate, _Mapping]] = ..., mute_request: _Optional[_Union[MuteRequest, _Mapping]] = ..., host_mute_request: _Optional[_Union[HostMuteRequest, _Mapping]] = ..., unmute_request: _Optional[_Union[UnmuteRequest, _Mapping]] = ..., unmute_response: _Optional[_Union[UnmuteResponse, _Mapping]] = ..., media_connection_update: _Optional[_Union[MediaConnectionUpdate, _Mapping]] = ..., trace_parent: _Optional[str] = ..., trace_state: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("join_response", "participant_joined", "participant_left", "stream_published", "stream_assignments", "stream_quality_update", "error", "participant_mute_update", "unmute_request", "unmute_response", "redirect_to_mc", "trace_parent", "trace_state")
    JOIN_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_JOINED_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_LEFT_FIELD_NUMBER: _ClassVar[int]
    STREAM_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_QUALITY_UPDATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_MUTE_UPDATE_FIELD_NUMBER: _ClassVar[int]
    UNMUTE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMUTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_TO_MC_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    TRACE_STATE_FIELD_NUMBER: _ClassVar[int]
    join_response: JoinResponse
    participant_joined: ParticipantJoined
    participant_left: ParticipantLeft
    stream_published: StreamPublished
    stream_assignments: StreamAssignments
    stream_quality_update: StreamQualityUpdate
    error: ErrorMessage
    participant_mute_update: ParticipantMuteUpdate
    unmute_request: UnmuteRequest
    unmute_response: UnmuteResponse
    redirect_to_mc: RedirectToMc
    trace_parent: str
    trace_state: str
    def __init__(self, join_response: _Optional[_Union[JoinResponse, _Mapping]] = ..., participant_joined: _Optional[_Union[ParticipantJoined, _Mapping]] = ..., participant_left: _Optional[_Union[ParticipantLeft, _Mapping]] = ..., stream_published: _Optional[_Union[StreamPublished, _Mapping]] = ..., stream_assignments: _Optional[_Union[StreamAssignments, _Mapping]] = ..., stream_quality_update: _Optional[_Union[StreamQualityUpdate, _Mapping]] = ..., error: _Optional[_Union[ErrorMessage, _Mapping]] = ..., participant_mute_update: _Optional[_Union[ParticipantMuteUpdate, _Mapping]] = ..., unmute_request: _Optional[_Union[UnmuteRequest, _Mapping]] = ..., unmute_response: _Optional[_Union[UnmuteResponse, _Mapping]] = ..., redirect_to_mc: _Optional[_Union[RedirectToMc, _Mapping]] = ..., trace_parent: _Optional[str] = ..., trace_state: _Optional[str] = ...) -> None: ...

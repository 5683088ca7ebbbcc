"""The committed generated modules match the .proto, and the .proto matches the
platform's contracts name for name and number for number (tables written out
from gc-mc-wire.md, platform-v1.md and signaling.md, not derived from the
.proto): the GC's services under both packages, the media handlers' in v1."""

import runpy
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from mc.proto import (
    gc_mc_legacy_pb2,
    gc_mc_legacy_pb2_grpc,
    gc_mc_pb2,
    gc_mc_pb2_grpc,
    media_pb2,
    media_pb2_grpc,
    signaling_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
V1 = "dark_tower.internal.v1"
LEGACY = "dark_tower.internal"
SIGNALING = "dark_tower.signaling.v1"

GC_METHODS = {
    "GlobalControllerService": [
        ("RegisterMC", "RegisterMCRequest", "RegisterMCResponse"),
        ("FastHeartbeat", "FastHeartbeatRequest", "FastHeartbeatResponse"),
        ("ComprehensiveHeartbeat", "ComprehensiveHeartbeatRequest",
         "ComprehensiveHeartbeatResponse"),
        ("NotifyMeetingEnded", "NotifyMeetingEndedRequest", "NotifyMeetingEndedResponse"),
    ],
    "MeetingControllerService": [
        ("AssignMeetingWithMh", "AssignMeetingWithMhRequest", "AssignMeetingWithMhResponse"),
    ],
}
MEDIA_METHODS = {
    "MediaHandlerService": [
        ("RegisterMeeting", "RegisterMeetingRequest", "RegisterMeetingResponse"),
    ],
    "MediaCoordinationService": [
        ("NotifyParticipantConnected", "NotifyParticipantConnectedRequest",
         "NotifyParticipantConnectedResponse"),
        ("NotifyParticipantDisconnected", "NotifyParticipantDisconnectedRequest",
         "NotifyParticipantDisconnectedResponse"),
    ],
}
#: (generated module, its grpc module, package, services)
SERVICE_FILES = [
    (gc_mc_pb2, gc_mc_pb2_grpc, V1, GC_METHODS),
    (gc_mc_legacy_pb2, gc_mc_legacy_pb2_grpc, LEGACY, GC_METHODS),
    (media_pb2, media_pb2_grpc, V1, MEDIA_METHODS),
]

ENUMS = {
    "HealthStatus": {"PENDING": 0, "HEALTHY": 1, "DEGRADED": 2, "UNHEALTHY": 3, "DRAINING": 4},
    "RejectionReason": {
        "REJECTION_REASON_UNSPECIFIED": 0,
        "REJECTION_REASON_AT_CAPACITY": 1,
        "REJECTION_REASON_DRAINING": 2,
        "REJECTION_REASON_UNHEALTHY": 3,
    },
}
MEDIA_ENUMS = {
    "DisconnectReason": {
        "DISCONNECT_REASON_UNSPECIFIED": 0, "DISCONNECT_REASON_CLIENT_CLOSED": 1,
        "DISCONNECT_REASON_TIMEOUT": 2, "DISCONNECT_REASON_ERROR": 3,
    },
}

S, U32, U64, B, FL = "string", "uint32", "uint64", "bool", "float"
REPEATED, OPTIONAL = "repeated", "optional"

# message -> [(field, number, type, [label])]; a type naming a message or
# enum of the package is that message or enum.
MESSAGES = {
    "ControllerCapacity": [
        ("max_meetings", 1, U32), ("current_meetings", 2, U32),
        ("max_participants", 3, U32), ("current_participants", 4, U32),
    ],
    "RegisterMCRequest": [
        ("id", 1, S), ("region", 2, S), ("grpc_endpoint", 3, S),
        ("webtransport_endpoint", 4, S), ("max_meetings", 5, U32), ("max_participants", 6, U32),
    ],
    "RegisterMCResponse": [
        ("accepted", 1, B), ("message", 2, S),
        ("fast_heartbeat_interval_ms", 3, U64), ("comprehensive_heartbeat_interval_ms", 4, U64),
    ],
    "FastHeartbeatRequest": [
        ("controller_id", 1, S), ("capacity", 2, "ControllerCapacity"),
        ("health", 3, "HealthStatus"),
    ],
    "ComprehensiveHeartbeatRequest": [
        ("controller_id", 1, S), ("capacity", 2, "ControllerCapacity"),
        ("health", 3, "HealthStatus"), ("cpu_usage_percent", 4, FL),
        ("memory_usage_percent", 5, FL),
    ],
    "FastHeartbeatResponse": [("acknowledged", 1, B), ("timestamp", 2, U64)],
    "ComprehensiveHeartbeatResponse": [("acknowledged", 1, B), ("timestamp", 2, U64)],
    "NotifyMeetingEndedRequest": [("meeting_id", 1, S), ("region", 2, S)],
    "NotifyMeetingEndedResponse": [("acknowledged", 1, B)],
    "MhAssignment": [
        ("mh_id", 1, S), ("webtransport_endpoint", 2, S), ("grpc_endpoint", 4, S),
    ],
    "AssignMeetingWithMhRequest": [
        ("meeting_id", 1, S), ("mh_assignments", 2, "MhAssignment", REPEATED),
        ("requesting_gc_id", 3, S),
    ],
    "AssignMeetingWithMhResponse": [
        ("accepted", 1, B), ("rejection_reason", 2, "RejectionReason"),
    ],
}
MEDIA_MESSAGES = {
    "RegisterMeetingRequest": [("meeting_id", 1, S), ("mc_id", 2, S), ("mc_grpc_endpoint", 3, S)],
    "RegisterMeetingResponse": [("accepted", 1, B)],
    "NotifyParticipantConnectedRequest": [
        ("meeting_id", 1, S), ("participant_id", 2, S), ("handler_id", 3, S)],
    "NotifyParticipantConnectedResponse": [("acknowledged", 1, B)],
    "NotifyParticipantDisconnectedRequest": [
        ("meeting_id", 1, S), ("participant_id", 2, S), ("handler_id", 3, S),
        ("reason", 4, "DisconnectReason")],
    "NotifyParticipantDisconnectedResponse": [("acknowledged", 1, B)],
}
#: signalling v1's additions (platform-v1.md, section 4)
SIGNALING_ENUMS = {
    "ConnectionState": {
        "CONNECTION_STATE_UNSPECIFIED": 0, "CONNECTION_STATE_CONNECTED": 1,
        "CONNECTION_STATE_FAILED": 2, "CONNECTION_STATE_DISCONNECTED": 3,
    },
}
SIGNALING_MESSAGES = {
    "MhConnectionStatus": [
        ("mh_url", 1, S), ("state", 2, "ConnectionState"), ("failure_reason", 3, S, OPTIONAL),
        ("failure_code", 4, S, OPTIONAL), ("observed_at", 5, "google.protobuf.Timestamp"),
    ],
    "MediaConnectionUpdate": [("statuses", 1, "MhConnectionStatus", REPEATED)],
}

SCALARS = {S: F.TYPE_STRING, U32: F.TYPE_UINT32, U64: F.TYPE_UINT64, B: F.TYPE_BOOL,
           FL: F.TYPE_FLOAT}


def test_committed_modules_are_regenerated(tmp_path):
    generate = runpy.run_path(str(ROOT / "scripts" / "gen_proto.py"))["generate"]
    written = generate(tmp_path)
    assert {p.name for p in written} >= {
        f"{m}_pb2{ext}" for m in ("gc_mc", "gc_mc_legacy", "media") for ext in (".py", "_grpc.py")}
    for path in written:
        committed = ROOT / "mc" / "proto" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run scripts/gen_proto.py")


def test_file_packages():
    assert gc_mc_pb2.DESCRIPTOR.package == V1
    assert set(gc_mc_pb2.DESCRIPTOR.message_types_by_name) == set(MESSAGES)
    assert set(gc_mc_pb2.DESCRIPTOR.enum_types_by_name) == set(ENUMS)
    # The legacy file declares services only, over the v1 messages.
    assert gc_mc_legacy_pb2.DESCRIPTOR.package == LEGACY
    assert not gc_mc_legacy_pb2.DESCRIPTOR.message_types_by_name
    assert media_pb2.DESCRIPTOR.package == V1
    assert set(media_pb2.DESCRIPTOR.message_types_by_name) == set(MEDIA_MESSAGES)
    assert set(media_pb2.DESCRIPTOR.enum_types_by_name) == set(MEDIA_ENUMS)
    for module, _, _, methods in SERVICE_FILES:
        assert set(module.DESCRIPTOR.services_by_name) == set(methods)


@pytest.mark.parametrize("module, grpc_module, package, methods", SERVICE_FILES,
                         ids=["v1", "legacy", "media"])
def test_method_paths_and_types(module, grpc_module, package, methods):
    grpc_source = Path(grpc_module.__file__).read_text()
    for service, expected in methods.items():
        desc = module.DESCRIPTOR.services_by_name[service]
        assert desc.full_name == f"{package}.{service}"
        assert [m.name for m in desc.methods] == [m[0] for m in expected]
        for name, request, response in expected:
            m = desc.methods_by_name[name]
            path = f"/{package}.{service}/{name}"
            assert f"/{m.containing_service.full_name}/{m.name}" == path
            # The stubs and handlers put this literal path on the wire.
            assert f"'{path}'" in grpc_source
            # Both dialects carry the one set of v1 messages.
            assert m.input_type.full_name == f"{V1}.{request}"
            assert m.output_type.full_name == f"{V1}.{response}"
            assert not m.client_streaming and not m.server_streaming


def test_mh_assignment_reserves_the_legacy_role():
    desc = gc_mc_pb2.MhAssignment.DESCRIPTOR
    assert list(desc.GetOptions().ListFields()) == []
    # A legacy GC's role (field 3, varint 1) parses as an unknown field.
    legacy = b"\n\x04mh-1\x12\x0bhttps://m:1\x18\x01"
    parsed = gc_mc_pb2.MhAssignment.FromString(legacy)
    assert (parsed.mh_id, parsed.webtransport_endpoint, parsed.grpc_endpoint) == (
        "mh-1", "https://m:1", "")
    assert 3 not in desc.fields_by_number


def _check_enums(module, package, enums):
    for enum, values in enums.items():
        desc = module.DESCRIPTOR.enum_types_by_name[enum]
        assert desc.full_name == f"{package}.{enum}"
        assert {v.name: v.number for v in desc.values} == values


def _check_messages(module, package, messages, enums):
    for message, expected in messages.items():
        desc = module.DESCRIPTOR.message_types_by_name[message]
        assert desc.full_name == f"{package}.{message}"
        assert sorted(f.name for f in desc.fields) == sorted(e[0] for e in expected)
        for name, number, kind, *label in expected:
            fd = desc.fields_by_name[name]
            assert fd.number == number, name
            assert fd.is_repeated == (label == [REPEATED]), name
            assert fd.has_presence == (label == [OPTIONAL] or (
                fd.type == F.TYPE_MESSAGE and not fd.is_repeated)), name
            if kind in SCALARS:
                assert fd.type == SCALARS[kind], name
            elif kind in enums:
                assert fd.type == F.TYPE_ENUM, name
                assert fd.enum_type.full_name == f"{package}.{kind}", name
            else:
                assert fd.type == F.TYPE_MESSAGE, name
                full = kind if "." in kind else f"{package}.{kind}"
                assert fd.message_type.full_name == full, name


def test_gc_enums_and_messages():
    _check_enums(gc_mc_pb2, V1, ENUMS)
    _check_messages(gc_mc_pb2, V1, MESSAGES, ENUMS)


def test_media_enums_and_messages():
    _check_enums(media_pb2, V1, MEDIA_ENUMS)
    _check_messages(media_pb2, V1, MEDIA_MESSAGES, MEDIA_ENUMS)


def test_signaling_v1_additions():
    _check_enums(signaling_pb2, SIGNALING, SIGNALING_ENUMS)
    _check_messages(signaling_pb2, SIGNALING, SIGNALING_MESSAGES, SIGNALING_ENUMS)
    fields = signaling_pb2.ClientMessage.DESCRIPTOR.fields_by_name
    assert fields["media_connection_update"].number == 11
    assert fields["media_connection_update"].containing_oneof.name == "message"
    assert fields["media_connection_update"].message_type.name == "MediaConnectionUpdate"
    assert (fields["trace_parent"].number, fields["trace_state"].number) == (20, 21)
    assert fields["trace_parent"].type == fields["trace_state"].type == F.TYPE_STRING

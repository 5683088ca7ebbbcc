"""The committed generated modules match the .proto, and the .proto matches the
GC's wire contract name for name and number for number (a table written out
from the contract, not derived from the .proto)."""

import runpy
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from mc.proto import gc_mc_pb2, gc_mc_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PKG = "dark_tower.internal"

METHODS = {
    "GlobalControllerService": [
        ("RegisterMC", "RegisterMCRequest", "RegisterMCResponse"),
        ("FastHeartbeat", "FastHeartbeatRequest", "HeartbeatResponse"),
        ("ComprehensiveHeartbeat", "ComprehensiveHeartbeatRequest", "HeartbeatResponse"),
        ("NotifyMeetingEnded", "NotifyMeetingEndedRequest", "NotifyMeetingEndedResponse"),
    ],
    "MeetingControllerService": [
        ("AssignMeetingWithMh", "AssignMeetingWithMhRequest", "AssignMeetingWithMhResponse"),
    ],
}

ENUMS = {
    "HealthStatus": {"PENDING": 0, "HEALTHY": 1, "DEGRADED": 2, "UNHEALTHY": 3, "DRAINING": 4},
    "MhRole": {"MH_ROLE_UNSPECIFIED": 0, "MH_ROLE_PRIMARY": 1, "MH_ROLE_BACKUP": 2},
    "RejectionReason": {
        "REJECTION_REASON_UNSPECIFIED": 0,
        "REJECTION_REASON_AT_CAPACITY": 1,
        "REJECTION_REASON_DRAINING": 2,
        "REJECTION_REASON_UNHEALTHY": 3,
    },
}

S, U32, U64, B, FL = "string", "uint32", "uint64", "bool", "float"
REPEATED = "repeated"

# message -> [(field, number, type, [repeated])]; a type naming a message or
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
    "HeartbeatResponse": [("acknowledged", 1, B), ("timestamp", 2, U64)],
    "NotifyMeetingEndedRequest": [("meeting_id", 1, S), ("region", 2, S)],
    "NotifyMeetingEndedResponse": [("acknowledged", 1, B)],
    "MhAssignment": [
        ("mh_id", 1, S), ("webtransport_endpoint", 2, S), ("role", 3, "MhRole"),
    ],
    "AssignMeetingWithMhRequest": [
        ("meeting_id", 1, S), ("mh_assignments", 2, "MhAssignment", REPEATED),
        ("requesting_gc_id", 3, S),
    ],
    "AssignMeetingWithMhResponse": [
        ("accepted", 1, B), ("rejection_reason", 2, "RejectionReason"),
    ],
}

SCALARS = {S: F.TYPE_STRING, U32: F.TYPE_UINT32, U64: F.TYPE_UINT64, B: F.TYPE_BOOL,
           FL: F.TYPE_FLOAT}


def test_committed_modules_are_regenerated(tmp_path):
    generate = runpy.run_path(str(ROOT / "scripts" / "gen_proto.py"))["generate"]
    written = generate(tmp_path)
    assert written
    for path in written:
        committed = ROOT / "mc" / "proto" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run scripts/gen_proto.py")


def test_file_package():
    assert gc_mc_pb2.DESCRIPTOR.package == PKG
    assert set(gc_mc_pb2.DESCRIPTOR.services_by_name) == set(METHODS)
    assert set(gc_mc_pb2.DESCRIPTOR.message_types_by_name) == set(MESSAGES)
    assert set(gc_mc_pb2.DESCRIPTOR.enum_types_by_name) == set(ENUMS)


@pytest.mark.parametrize("service", sorted(METHODS))
def test_method_paths_and_types(service):
    desc = gc_mc_pb2.DESCRIPTOR.services_by_name[service]
    assert desc.full_name == f"{PKG}.{service}"
    assert [m.name for m in desc.methods] == [m[0] for m in METHODS[service]]
    grpc_source = Path(gc_mc_pb2_grpc.__file__).read_text()
    for name, request, response in METHODS[service]:
        m = desc.methods_by_name[name]
        path = f"/{PKG}.{service}/{name}"
        assert f"/{m.containing_service.full_name}/{m.name}" == path
        # The stubs and handlers put this literal path on the wire.
        assert f"'{path}'" in grpc_source
        assert m.input_type.full_name == f"{PKG}.{request}"
        assert m.output_type.full_name == f"{PKG}.{response}"
        assert not m.client_streaming and not m.server_streaming


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values(enum):
    desc = gc_mc_pb2.DESCRIPTOR.enum_types_by_name[enum]
    assert desc.full_name == f"{PKG}.{enum}"
    assert {v.name: v.number for v in desc.values} == ENUMS[enum]


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_message_fields(message):
    desc = gc_mc_pb2.DESCRIPTOR.message_types_by_name[message]
    assert desc.full_name == f"{PKG}.{message}"
    expected = MESSAGES[message]
    assert sorted(f.name for f in desc.fields) == sorted(e[0] for e in expected)
    for name, number, kind, *label in expected:
        fd = desc.fields_by_name[name]
        assert fd.number == number, name
        assert fd.is_repeated == (label == [REPEATED]), name
        if kind in SCALARS:
            assert fd.type == SCALARS[kind], name
        elif kind in ENUMS:
            assert fd.type == F.TYPE_ENUM, name
            assert fd.enum_type.full_name == f"{PKG}.{kind}", name
        else:
            assert fd.type == F.TYPE_MESSAGE, name
            assert fd.message_type.full_name == f"{PKG}.{kind}", name

"""Trace context by OpenTelemetry: the propagator's parse of a caller's
traceparent (malformed values ignored), spans of the MC's under it, the
trace_id on log lines (JSON field and text suffix), and spans exported only
when the SDK's OTLP variables say so."""

import io
import json

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.logger import Logger, LogPublisher, textFileLogObserver

from mc.ops.logs import json_observer, trace_filter
from mc.proto import gc_mc_pb2 as pb
from mc.tracing import (
    Tracing,
    carrier_context,
    current_metadata,
    current_trace_id,
    metadata_context,
)
from tests.test_liaison import Rig

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_a_valid_traceparent_is_continued_with_its_state():
    ctx = carrier_context(TRACEPARENT, "a=1,b=2")
    assert ctx is not None
    tracing = Tracing({})
    with tracing.span("x", ctx) as span:
        sc = span.get_span_context()
        assert format(sc.trace_id, "032x") == TRACE_ID
        assert format(sc.span_id, "016x") != "b7ad6b7169203331"
        headers = dict(current_metadata())
    assert headers["traceparent"].split("-")[1] == TRACE_ID
    assert headers["tracestate"] == "a=1,b=2"
    assert current_metadata() == (), "nothing outside a span"


def test_grpc_metadata_is_read_for_the_first_traceparent_only():
    assert metadata_context([("traceparent", TRACEPARENT), ("traceparent", "junk")]) is not None
    assert metadata_context([("traceparent", "junk"), ("traceparent", TRACEPARENT)]) is None
    assert metadata_context([("authorization", "Bearer x")]) is None
    assert metadata_context(None) is None
    assert metadata_context([("traceparent", b"bytes")]) is None


def emit(observer, text):
    publisher = LogPublisher(trace_filter(observer, text=text))
    log = Logger(observer=publisher, namespace="test")
    tracing = Tracing({})
    log.info("outside {what}", what="any span")
    with tracing.continued("join", TRACEPARENT):
        log.info("inside {what}", what="the join")


def test_log_lines_within_a_span_carry_its_trace_id_in_json_and_text():
    out = io.StringIO()
    emit(json_observer(out), text=False)
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == TRACE_ID and inside["message"] == "inside the join"
    out = io.StringIO()
    emit(textFileLogObserver(out), text=True)
    outside, inside = out.getvalue().splitlines()
    assert "trace_id" not in outside
    assert inside.endswith(f"inside the join [trace_id={TRACE_ID}]")


def test_spans_leave_the_process_only_when_asked():
    assert not Tracing({}).exporting
    assert not Tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}).exporting
    configured = Tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert configured.exporting
    configured.provider.shutdown()
    exporter = InMemorySpanExporter()
    tracing = Tracing({}, exporter=exporter)
    with tracing.continued("join", TRACEPARENT):
        span, _ = tracing.client_metadata("RegisterMeeting")
        span.end()
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"join", "RegisterMeeting"}
    assert spans["RegisterMeeting"].parent.span_id == spans["join"].context.span_id
    assert format(spans["join"].context.trace_id, "032x") == TRACE_ID


def traced_heartbeats(rig):
    """The trace id current at each fast heartbeat the liaison sends."""
    seen = []
    send = rig.client.fast_heartbeat

    def fast_heartbeat(request):
        seen.append(current_trace_id())
        return send(request)

    rig.client.fast_heartbeat = fast_heartbeat
    return seen


def test_a_nudge_held_back_by_the_spacing_keeps_the_trace_it_was_asked_in():
    rig = Rig(max_meetings=1)
    rig.liaison.startService()
    seen = traced_heartbeats(rig)
    rig.advance(0.5)
    with Tracing({}).continued("AssignMeetingWithMh", TRACEPARENT):
        rig.registry.commit(rig.registry.reserve("m1"), 1, [])  # full: a nudge
    assert seen == []
    rig.advance(0.6)
    assert seen == [TRACE_ID]
    rig.advance(10)
    assert seen == [TRACE_ID, None], "the loop's own heartbeats carry no trace"
    rig.liaison.stopService()


def test_a_nudge_waiting_for_the_heartbeat_in_flight_keeps_its_trace():
    rig = Rig(max_meetings=1)
    rig.liaison.startService()
    rig.advance(3)
    seen = traced_heartbeats(rig)
    rig.client.script("fast_heartbeat", "hold")
    rig.advance(10)
    assert seen == [None]
    with Tracing({}).continued("AssignMeetingWithMh", TRACEPARENT):
        rig.registry.commit(rig.registry.reserve("m1"), 1, [])
    (_method, held), = rig.client.held
    held.callback(pb.FastHeartbeatResponse(acknowledged=True))
    rig.advance(0)
    assert seen == [None, TRACE_ID]
    rig.liaison.stopService()

"""Clients' MediaConnectionUpdates and trace context in signalling, Clock-driven:
statuses parsed with every string cut to 256 bytes at a UTF-8 boundary, 10,000
statuses or 1 MiB strings held by the frame limit, trace_parent continued
into the join's log lines and the RegisterMeeting it causes, malformed trace
context ignored."""

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mc.binding import BindingKeys
from mc.joining import JoinService
from mc.meetings import MeetingRegistry
from mc.mh.registration import MAX_STATUSES, MeetingRegistrar
from mc.ops.health import Health
from mc.ops.logs import trace_filter
from mc.ops.metrics import Metrics
from mc.participants.signaling import (
    MAX_FRAME_BYTES,
    SignalingSession,
    cut_utf8,
)
from mc.proto import signaling_pb2 as pb
from mc.testing.doubles import RecordingTransport, ScriptedMhClient, TableTokenVerifier
from mc.tracing import Tracing
from tests.test_mh_registration import TRACE_ID, TRACEPARENT, A, Identity
from tests.test_signaling import error_of, kinds, send


class Rig:
    def __init__(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics()
        self.registry = MeetingRegistry(10, 100, 0, self.clock)
        self.tokens = TableTokenVerifier()
        self.joins = JoinService(self.registry, Health(lambda: True, 1.0), self.tokens,
                                 self.clock, self.metrics, 30.0, BindingKeys(b"s" * 32))
        self.client = ScriptedMhClient(self.clock)
        self.tracing = Tracing({})
        self.registrar = MeetingRegistrar(self.client, Identity(), "mc-1", "http://mc-1:50052",
                                          self.clock, self.metrics, self.tracing)
        self.registrar.startService()
        self.joins.on_first_join(self.registrar.first_join)
        self.meeting = self.registry.commit(self.registry.reserve("m-1"), 1, (A,))

    def join(self, name="Ann", **trace):
        s = SignalingSession(self.joins, self.clock, ("127.0.0.1", 1), now=self.clock.seconds,
                             media=self.registrar, tracing=self.tracing)
        t = RecordingTransport(s)
        s.session_opened(t)
        t.open_stream()
        self.tokens.add(f"tok-{name}", "m-1", f"user-{name}")
        send(s, pb.ClientMessage(join_request=pb.JoinRequest(
            meeting_id="m-1", join_token=f"tok-{name}", participant_name=name), **trace))
        return s, t

    def statuses(self, state):
        return self.metrics.client_media_statuses.labels(state)._value.get()


def update(*statuses, **trace):
    return pb.ClientMessage(media_connection_update=pb.MediaConnectionUpdate(
        statuses=list(statuses)), **trace)


def status(url, state=pb.CONNECTION_STATE_FAILED, **kw):
    return pb.MhConnectionStatus(mh_url=url, state=state, **kw)


@pytest.mark.parametrize("text, limit, expected", [
    ("abc", 256, "abc"),
    ("a" * 300, 256, "a" * 256),
    ("\u00e9" * 200, 256, "\u00e9" * 128),
    ("a" + "\u00e9" * 200, 256, "a" + "\u00e9" * 127),
    ("\U0001f600" * 100, 10, "\U0001f600" * 2),
])
def test_client_strings_are_cut_at_a_utf8_boundary(text, limit, expected):
    assert cut_utf8(text, limit) == expected
    assert len(cut_utf8(text, limit).encode()) <= limit


def test_a_reported_failure_reregisters_and_is_counted_by_state(events):
    rig = Rig()
    s, t = rig.join()
    assert len(rig.client.calls) == 1
    rig.clock.advance(10)
    send(s, update(status(A[1]), status(A[1], pb.CONNECTION_STATE_CONNECTED),
                   status("https://other.example", pb.CONNECTION_STATE_DISCONNECTED)))
    assert len(rig.client.calls) == 2
    assert (rig.statuses("failed"), rig.statuses("connected"), rig.statuses("disconnected")) \
        == (1, 1, 1)
    assert kinds(t) == ["join_response"], "answered with nothing, the session open"


def test_long_strings_in_a_frame_are_cut_before_they_are_logged(events):
    rig = Rig()
    s, t = rig.join()
    reason = "\u00e9" * 10_000  # 20,000 bytes: within the frame limit with the URL
    send(s, update(status(A[1] + "x" * 20_000, failure_reason=reason, failure_code="c" * 500)))
    logged = [e for e in events if "reports" in e.get("log_format", "")]
    assert logged
    for event in logged:
        for field in ("mh_url", "failure_reason", "failure_code"):
            assert len(event[field].encode()) <= 256
    assert kinds(t) == ["join_response"]


def test_ten_thousand_statuses_in_one_frame_cost_the_first_few():
    rig = Rig()
    s, t = rig.join()
    message = update(status(A[1]), *[status("")] * 9_999)
    assert len(message.SerializeToString()) <= MAX_FRAME_BYTES
    send(s, message)
    assert rig.statuses("failed") == MAX_STATUSES
    assert rig.statuses("ignored") == 10_000 - MAX_STATUSES
    assert len(rig.client.calls) == 2, "one re-registration"
    assert kinds(t) == ["join_response"]
    send(s, update(*[status(A[1])] * 10_000))  # 310,000 bytes: over the frame limit
    assert error_of(t) == ("INVALID_REQUEST", "invalid frame") and t.finished


def test_a_1_mib_string_breaks_the_frame_limit_and_only_that_session():
    rig = Rig()
    s, t = rig.join("Ann")
    other, other_t = rig.join("Bob")
    send(s, update(status("u" * (1 << 20))))
    assert error_of(t) == ("INVALID_REQUEST", "invalid frame") and t.finished
    assert rig.statuses("failed") == 0
    assert not other_t.finished
    assert [p.name for p in rig.meeting.participants] == ["Bob"]


def test_updates_before_the_join_are_refused_as_any_first_message():
    rig = Rig()
    s = SignalingSession(rig.joins, rig.clock, now=rig.clock.seconds, media=rig.registrar,
                         tracing=rig.tracing)
    t = RecordingTransport(s)
    s.session_opened(t)
    t.open_stream()
    send(s, update(status(A[1])))
    assert error_of(t)[0] == "INVALID_REQUEST" and t.finished


def traced_events():
    seen = []
    observer = trace_filter(seen.append)
    globalLogPublisher.addObserver(observer)
    return seen, lambda: globalLogPublisher.removeObserver(observer)


def test_a_joins_trace_parent_reaches_its_log_lines_and_register_meeting():
    rig = Rig()
    seen, stop = traced_events()
    try:
        rig.join(trace_parent=TRACEPARENT, trace_state="vendor=x")
    finally:
        stop()
    joined = [e for e in seen if "joined meeting" in e.get("log_format", "")]
    assert joined and joined[0]["trace_id"] == TRACE_ID
    registered = [e for e in seen if "registered with media handler" in e.get("log_format", "")]
    assert registered and registered[0]["trace_id"] == TRACE_ID
    (_, _, metadata, _), = rig.client.calls
    assert metadata["traceparent"].split("-")[1] == TRACE_ID
    assert metadata["tracestate"] == "vendor=x"


def test_an_updates_trace_parent_reaches_the_reregistration():
    rig = Rig()
    s, _ = rig.join()
    first_trace = rig.client.calls[0][2]["traceparent"].split("-")[1]
    assert first_trace != TRACE_ID, "a join without trace context starts a trace of the MC's"
    send(s, update(status(A[1]), trace_parent=TRACEPARENT))
    assert rig.client.calls[1][2]["traceparent"].split("-")[1] == TRACE_ID


@pytest.mark.parametrize("bad", ["nonsense", "00-" + "g" * 32 + "-" + "1" * 16 + "-01",
                                 TRACEPARENT[:-1], "x" * 60_000])
def test_malformed_trace_context_is_ignored_and_the_join_goes_on(bad):
    rig = Rig()
    seen, stop = traced_events()
    try:
        s, t = rig.join(trace_parent=bad, trace_state="\x00" * 100)
    finally:
        stop()
    assert kinds(t) == ["join_response"]
    (_, _, metadata, _), = rig.client.calls
    trace_id = metadata["traceparent"].split("-")[1]
    assert trace_id != "0" * 32
    assert all(e.get("trace_id") in (None, trace_id) for e in seen)

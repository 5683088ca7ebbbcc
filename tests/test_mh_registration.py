"""Media handlers told, Clock-driven: RegisterMeeting at a meeting's first join
in this process, to every MH with a gRPC URL at once, 3 attempts 1 s and 2 s
apart, a refusal final; re-registration on a participant's FAILED or
DISCONNECTED report at most once per 5 s; the trace id carried; the
participants untouched by any of it."""

import pytest
from opentelemetry import trace
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mc.binding import BindingKeys
from mc.interfaces import IMhClient
from mc.joining import JoinService
from mc.meetings import MeetingRegistry
from mc.mh.registration import MAX_STATUSES, MeetingRegistrar, MhStatus
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.proto import signaling_pb2 as spb
from mc.testing.doubles import ScriptedMhClient, TableTokenVerifier
from mc.tracing import Tracing, carrier_context

A = ("mh-a", "https://mh-a.example:4433", "http://mh-a.example:50061")
B = ("mh-b", "https://mh-b.example:4433", "https://mh-b.example:50061")
LEGACY = ("mh-c", "https://mh-c.example:4433", "")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Identity:
    """The service token seam, as the registrar uses it."""

    def __init__(self, token="svc-token-Z9"):
        self.token = token

    def metadata(self):
        return None if self.token is None else (("authorization", "Bearer " + self.token),)


class Sink:
    closed = False

    def deliver(self, event):
        pass


class Rig:
    def __init__(self, mh=(A, B, LEGACY)):
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics()
        self.registry = MeetingRegistry(10, 100, 0, self.clock)
        self.client = ScriptedMhClient(self.clock)
        self.identity = Identity()
        self.registrar = MeetingRegistrar(self.client, self.identity, "mc-1",
                                          "http://mc-1.example:50052", self.clock, self.metrics,
                                          Tracing({}))
        self.registrar.startService()
        self.tokens = TableTokenVerifier()
        self.joins = JoinService(self.registry, Health(lambda: True, 1.0), self.tokens,
                                 self.clock, self.metrics, 30.0, BindingKeys(b"s" * 32))
        self.joins.on_first_join(self.registrar.first_join)
        self.meeting = self.registry.commit(self.registry.reserve("m-1"), 1, mh)

    def join(self, name, meeting_id="m-1"):
        """The join's Deferred (fired at once: the token table answers synchronously)."""
        self.tokens.add(f"tok-{name}", meeting_id, f"user-{name}")
        return defer.ensureDeferred(self.joins.join(meeting_id, f"tok-{name}", name, Sink()))

    def admit(self, name, meeting_id="m-1"):
        results = []
        self.join(name, meeting_id).addBoth(results.append)
        return results[0].participant

    def calls(self, url=None):
        return [c for c in self.client.calls if url is None or c[0] == url]

    def outcome(self, trigger, outcome):
        return self.metrics.mh_registrations.labels(trigger, outcome)._value.get()


def test_the_double_is_an_mh_client():
    verifyObject(IMhClient, ScriptedMhClient(Clock()))


def test_first_join_registers_with_every_mh_with_a_grpc_url_at_once():
    rig = Rig()
    rig.admit("Ann")
    assert [c[0] for c in rig.calls()] == [A[2], B[2]]
    for _url, request, metadata, at in rig.calls():
        assert (request.meeting_id, request.mc_id, request.mc_grpc_endpoint) == (
            "m-1", "mc-1", "http://mc-1.example:50052")
        assert metadata["authorization"] == "Bearer svc-token-Z9"
        assert at == 1000
    assert rig.outcome("first_join", "accepted") == 2
    rig.admit("Bob")
    rig.clock.advance(60)
    assert len(rig.calls()) == 2, "only the first join registers"


def test_a_meeting_hosted_again_registers_again_on_its_first_join():
    rig = Rig(mh=(A,))
    p = rig.admit("Ann")
    rig.joins.leave(p)
    rig.registry.remove("m-1")
    rig.registry.commit(rig.registry.reserve("m-1"), 2, (A,))
    rig.admit("Bob")
    assert len(rig.calls(A[2])) == 2


def test_failures_are_retried_after_1_then_2_seconds_then_accepted():
    rig = Rig(mh=(A,))
    rig.client.script(A[2], "UNAVAILABLE", "DEADLINE_EXCEEDED")
    rig.admit("Ann")
    rig.clock.advance(1)
    rig.clock.advance(2)
    assert [c[3] - 1000 for c in rig.calls()] == [0, 1, 3]
    assert rig.outcome("first_join", "accepted") == 1
    attempts = rig.metrics.mh_register_attempts
    assert attempts.labels("unavailable")._value.get() == 1
    assert attempts.labels("deadline_exceeded")._value.get() == 1


def test_failure_after_the_last_attempt_is_logged_and_counted_and_people_stay(events):
    rig = Rig(mh=(A,))
    rig.client.script(A[2], "UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE")
    rig.admit("Ann")
    rig.clock.pump([1, 2, 4, 8])
    assert len(rig.calls()) == 3
    assert rig.outcome("first_join", "failed") == 1
    assert rig.meeting.participant_count == 1 and rig.meeting.hosted
    warned = [e for e in events if "was not told of meeting" in e.get("log_format", "")]
    assert warned and warned[0]["mh_id"] == "mh-a" and "svc-token" not in repr(warned)


def test_a_refusal_is_final_and_counted():
    rig = Rig(mh=(A,))
    rig.client.script(A[2], False)
    rig.admit("Ann")
    rig.clock.pump([1, 2, 4])
    assert len(rig.calls()) == 1
    assert rig.outcome("first_join", "refused") == 1
    assert rig.meeting.participant_count == 1


def test_an_mh_that_never_answers_holds_nothing_up():
    rig = Rig(mh=(A, B))
    rig.client.script(A[2], "hold")
    d = rig.join("Ann")
    assert d.called, "the join does not wait for the MHs"
    assert rig.outcome("first_join", "accepted") == 1


def test_no_service_token_means_no_call():
    rig = Rig(mh=(A,))
    rig.identity.token = None
    rig.admit("Ann")
    rig.clock.pump([1, 2])
    assert rig.calls() == []
    assert rig.metrics.mh_register_attempts.labels("no_token")._value.get() == 3
    assert rig.outcome("first_join", "failed") == 1


def test_a_meeting_gone_between_attempts_is_abandoned():
    rig = Rig(mh=(A,))
    rig.client.script(A[2], "UNAVAILABLE")
    rig.admit("Ann")
    rig.registry.remove("m-1")
    rig.clock.advance(1)
    assert len(rig.calls()) == 1
    assert rig.outcome("first_join", "abandoned") == 1


def test_stopping_abandons_registrations_in_flight():
    rig = Rig(mh=(A,))
    rig.client.script(A[2], "hold")
    rig.admit("Ann")
    (held,) = rig.client.held
    rig.registrar.stopService()
    assert held.called and rig.client.closed, "the call in flight is cancelled"
    rig.clock.pump([1, 2, 4])
    assert len(rig.calls()) == 1


def status(mh, state, reason=""):
    return MhStatus(mh[1], state, reason)


@pytest.mark.parametrize("state", [spb.CONNECTION_STATE_FAILED,
                                   spb.CONNECTION_STATE_DISCONNECTED])
def test_a_reported_failure_registers_again_at_most_once_per_5s(state):
    rig = Rig()
    p = rig.admit("Ann")
    rig.registrar.client_report(p, [status(A, state)])
    assert len(rig.calls(A[2])) == 2 and len(rig.calls(B[2])) == 1
    rig.clock.advance(4.9)
    rig.registrar.client_report(p, [status(A, state)])
    assert len(rig.calls(A[2])) == 2
    rig.clock.advance(0.2)
    rig.registrar.client_report(p, [status(A, state), status(B, state)])
    assert len(rig.calls(A[2])) == 3 and len(rig.calls(B[2])) == 2
    assert rig.outcome("reported", "accepted") == 3


def test_reports_that_name_no_mh_of_the_meeting_or_say_connected_register_nothing():
    rig = Rig()
    p = rig.admit("Ann")
    rig.registrar.client_report(p, [
        status(A, spb.CONNECTION_STATE_CONNECTED),
        MhStatus("https://elsewhere.example:4433", spb.CONNECTION_STATE_FAILED),
        status(LEGACY, spb.CONNECTION_STATE_FAILED),  # no gRPC URL to call
        MhStatus(A[1], 99),
    ])
    assert len(rig.calls()) == 2
    statuses = rig.metrics.client_media_statuses
    assert statuses.labels("connected")._value.get() == 1
    assert statuses.labels("failed")._value.get() == 2
    assert statuses.labels("unspecified")._value.get() == 1


def test_ten_thousand_statuses_cost_only_the_first_few():
    rig = Rig()
    p = rig.admit("Ann")
    rig.registrar.client_report(p, [status(A, spb.CONNECTION_STATE_FAILED)] * 10_000)
    assert len(rig.calls(A[2])) == 2
    statuses = rig.metrics.client_media_statuses
    assert statuses.labels("failed")._value.get() == MAX_STATUSES
    assert statuses.labels("ignored")._value.get() == 10_000 - MAX_STATUSES


def test_registration_carries_the_join_trace_id_with_a_span_id_of_the_mcs():
    rig = Rig(mh=(A,))
    tracing = Tracing({})
    with tracing.continued("join", TRACEPARENT):
        rig.admit("Ann")
    (_, _, metadata, _), = rig.calls()
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id not in ("00f067aa0ba902b7", "0" * 16)


@pytest.mark.parametrize("value", [
    "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01",
    f"ff-{TRACE_ID}-00f067aa0ba902b7-01", TRACEPARENT + "-" + "a" * 4000, "\u00e9" * 60,
])
def test_malformed_trace_context_is_ignored(value):
    assert carrier_context(value, "k=v") is None
    with Tracing({}).continued("join", value, "k=v") as span:
        assert span.get_span_context().is_valid
        assert format(span.get_span_context().trace_id, "032x") != TRACE_ID
    assert not trace.get_current_span().get_span_context().is_valid

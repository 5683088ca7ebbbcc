"""Media handlers told: ``RegisterMeeting`` on the MHs of a meeting this MC hosts.

An MH drops a client's media connection for a meeting it was not told about
(after 15 s), and calls back the MC named in the registration. So the MC
registers a meeting with every MH of its assignment that has a gRPC URL when
the first participant joins it in this process: also a meeting that moved
here (a drain, a fenced-out owner, a restart), so its MHs call the MC that
hosts it now. All MHs at once, 3 attempts each with 1 s and 2 s between
them (the client bounds each to 5 s to connect, 10 s to answer), never on
the join's path. A participant's report that an MH of its meeting FAILED or
DISCONNECTED registers the meeting with that MH again (an MH that restarted
learns its meetings back), at most once per ``REREGISTER_SPACING`` per
meeting and MH. A refusal, or a failure after the last attempt, is logged
and counted; the participants stay in the meeting.

Runs on the reactor. A registration started under a join's (or report's)
trace carries its trace id to the MH, with a span id of the MC's.
"""

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from mc.backoff import retry_policy
from mc.errors import MhCallError
from mc.proto import media_pb2
from mc.proto import signaling_pb2 as spb

ATTEMPTS = 3
#: 1 s, then 2 s between attempts: the platform's MC's spacing, not jittered.
DELAY = retry_policy(spread=0.0)
REREGISTER_SPACING = 5.0
#: Statuses of one MediaConnectionUpdate looked at; a meeting has a few MHs,
#: and a frame can carry 10,000 empty ones.
MAX_STATUSES = 32

FIRST_JOIN = "first_join"
REPORTED = "reported"
#: ``mc_mh_registrations_total`` outcomes.
ACCEPTED = "accepted"
REFUSED = "refused"
FAILED = "failed"
ABANDONED = "abandoned"
#: Client-reported states that mean the MH may have lost the meeting.
TROUBLE = frozenset({spb.CONNECTION_STATE_FAILED, spb.CONNECTION_STATE_DISCONNECTED})
STATE_LABELS = {spb.CONNECTION_STATE_UNSPECIFIED: "unspecified",
                spb.CONNECTION_STATE_CONNECTED: "connected",
                spb.CONNECTION_STATE_FAILED: "failed",
                spb.CONNECTION_STATE_DISCONNECTED: "disconnected"}


class MhStatus:
    """One status of a client's MediaConnectionUpdate, its strings already
    cut to the contract's 256 bytes."""

    __slots__ = ("mh_url", "state", "failure_reason", "failure_code")

    def __init__(self, mh_url, state, failure_reason="", failure_code=""):
        self.mh_url = mh_url
        self.state = state
        self.failure_reason = failure_reason
        self.failure_code = failure_code


class MeetingRegistrar(Service):
    """Tells MHs which meetings this MC hosts (``first_join``) and again when
    a participant reports trouble with one (``client_report``).

    ``identity``: an IServiceIdentity (the token each call carries); no call
    is made without one. ``tracing``: ``mc.tracing.Tracing``."""

    name = "mh-registration"
    log = Logger()

    def __init__(self, client, identity, mc_id, mc_grpc_url, clock, metrics, tracing):
        self._client = client
        self._identity = identity
        self._mc_id = mc_id
        self._mc_grpc_url = mc_grpc_url
        self._clock = clock
        self._metrics = metrics
        self._tracing = tracing
        self._inflight: dict[tuple[str, str], defer.Deferred] = {}
        self._last_reported: dict[tuple[str, str], float] = {}

    def first_join(self, meeting):
        """The first participant joined ``meeting`` in this process: register
        it with each of its MHs that has a gRPC URL. Returns at once."""
        for mh_id, _webtransport, grpc_url in meeting.mh_assignments:
            if grpc_url:
                self._start(meeting, mh_id, grpc_url, FIRST_JOIN)

    def client_report(self, p, statuses):
        """``p`` sent a MediaConnectionUpdate (``MhStatus`` list): count its
        statuses by state, and register the meeting again with each of its
        MHs reported FAILED or DISCONNECTED."""
        meeting = p.meeting
        for status in statuses[:MAX_STATUSES]:
            self._metrics.client_media_statuses.labels(
                STATE_LABELS.get(status.state, "unspecified")).inc()
            if status.state not in TROUBLE or not meeting.hosted:
                continue
            self.log.debug("participant {participant_id} of meeting {meeting_id} reports "
                           "{mh_url} {state} ({failure_code} {failure_reason})",
                           participant_id=p.participant_id, meeting_id=meeting.meeting_id,
                           mh_url=status.mh_url, state=STATE_LABELS[status.state],
                           failure_code=status.failure_code,
                           failure_reason=status.failure_reason)
            for mh_id, webtransport, grpc_url in meeting.mh_assignments:
                if webtransport == status.mh_url and grpc_url and self._may_reregister(
                        meeting.meeting_id, mh_id):
                    self._start(meeting, mh_id, grpc_url, REPORTED)
        if len(statuses) > MAX_STATUSES:
            self._metrics.client_media_statuses.labels("ignored").inc(
                len(statuses) - MAX_STATUSES)

    def stopService(self):
        """Abandon the registrations in flight: the MC is stopping."""
        for d in list(self._inflight.values()):
            d.cancel()
        self._inflight.clear()
        self._client.close()
        return super().stopService()

    def _may_reregister(self, meeting_id, mh_id):
        now = self._clock.seconds()
        key = (meeting_id, mh_id)
        last = self._last_reported.get(key)
        if last is not None and now - last < REREGISTER_SPACING:
            return False
        if len(self._last_reported) >= 1024:  # forget what no longer limits anything
            self._last_reported = {k: t for k, t in self._last_reported.items()
                                   if now - t < REREGISTER_SPACING}
        self._last_reported[key] = now
        return True

    def _start(self, meeting, mh_id, grpc_url, trigger):
        key = (meeting.meeting_id, mh_id)
        if key in self._inflight or not self.running:
            return
        d = defer.ensureDeferred(self._register(meeting, mh_id, grpc_url, trigger))
        self._inflight[key] = d

        def done(result):
            if self._inflight.get(key) is d:
                del self._inflight[key]
            return result

        d.addBoth(done)
        d.addErrback(self._bug, meeting.meeting_id, mh_id)

    async def _register(self, meeting, mh_id, grpc_url, trigger):
        request = media_pb2.RegisterMeetingRequest(
            meeting_id=meeting.meeting_id, mc_id=self._mc_id, mc_grpc_endpoint=self._mc_grpc_url)
        why = "not tried"
        for attempt in range(ATTEMPTS):
            if attempt:
                await task.deferLater(self._clock, DELAY(attempt - 1), lambda: None)
            if not meeting.hosted:
                self._finish(trigger, ABANDONED)
                return
            result, why = await self._attempt(grpc_url, request)
            self._metrics.mh_register_attempts.labels(result).inc()
            if result == ACCEPTED:
                self.log.info("meeting {meeting_id} registered with media handler {mh_id}",
                              meeting_id=meeting.meeting_id, mh_id=mh_id, trigger=trigger)
                self._finish(trigger, ACCEPTED)
                return
            if result == REFUSED:
                self.log.warn("media handler {mh_id} refused meeting {meeting_id}",
                              meeting_id=meeting.meeting_id, mh_id=mh_id, trigger=trigger)
                self._finish(trigger, REFUSED)
                return
        self.log.warn("media handler {mh_id} was not told of meeting {meeting_id} after "
                      "{attempts} attempts: {why}", meeting_id=meeting.meeting_id, mh_id=mh_id,
                      attempts=ATTEMPTS, why=why, trigger=trigger)
        self._finish(trigger, FAILED)

    async def _attempt(self, grpc_url, request):
        """``(result, why)`` of one RegisterMeeting: ``result`` is ACCEPTED,
        REFUSED, ``no_token`` or the failure's status code, lower case."""
        metadata = self._identity.metadata()
        if metadata is None:
            return "no_token", "no service token"
        span, trace_metadata = self._tracing.client_metadata("RegisterMeeting")
        try:
            response = await self._client.register_meeting(
                grpc_url, request, tuple(metadata) + trace_metadata)
        except MhCallError as e:
            span.set_attribute("rpc.grpc.status_code", e.code)
            return e.code.lower(), f"{e.code} {e.details}"[:200]
        finally:
            span.end()
        return (ACCEPTED, "") if response.accepted else (REFUSED, "accepted = false")

    def _finish(self, trigger, outcome):
        self._metrics.mh_registrations.labels(trigger, outcome).inc()

    def _bug(self, failure, meeting_id, mh_id):
        if not failure.check(defer.CancelledError):
            self.log.failure("registering meeting {meeting_id} with {mh_id} failed", failure,
                             meeting_id=meeting_id, mh_id=mh_id)

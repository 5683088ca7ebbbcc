"""A participant's way into a hosted meeting and out of it: the contract's
checks in its order, the disconnect grace, and the counts the GC reads.

Core code: it speaks to the token verifier and the sinks through their
interfaces and knows no transport. Every refusal is a ``Refused`` carrying the
contract's error code, so the signalling layer only encodes it.
"""

import secrets
import time

from twisted.application.service import Service
from twisted.logger import Logger

from mc.binding import new_correlation_id
from mc.errors import InvalidToken, NoJwks
from mc.meetings import DRAINING, MOVED, TIMEOUT, VOLUNTARY, AtCapacity, Replaced

MAX_NAME_BYTES = 256
INVALID_TOKEN_MESSAGE = "invalid or expired token"

#: ``mc_joins_total`` outcomes: a small fixed set.
OUTCOMES = ("accepted", "unauthorized", "not_found", "capacity", "invalid", "redirected",
            "error")
#: ``mc_reconnects_total`` outcomes.
RECONNECT_OUTCOMES = ("accepted", "refused")


class Refused(Exception):
    """A join refused with the contract's ``ErrorCode`` name and message;
    ``outcome`` is its ``mc_joins_total`` label."""

    def __init__(self, code, message, outcome):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.outcome = outcome


class Redirected(Exception):
    """Join again through the GC: this MC is draining the meeting."""

    def __init__(self, meeting_id, reason):
        super().__init__(f"redirect {meeting_id}: {reason}")
        self.meeting_id = meeting_id
        self.reason = reason


class Gone(Exception):
    """The session closed while its token was checked: nothing was done."""


class Admission:
    """What a ``JoinResponse`` says, read off the meeting at the moment of
    admission (so it matches the ``ParticipantJoined`` the others got)."""

    __slots__ = ("participant", "others", "media_servers", "correlation_id", "binding_token")

    def __init__(self, participant, others, media_servers, correlation_id="",
                 binding_token=""):
        self.participant = participant
        self.others = others
        self.media_servers = media_servers
        self.correlation_id = correlation_id
        self.binding_token = binding_token


def valid_name(raw):
    """The trimmed ``participant_name``, or None when it is not 1-256 bytes
    of UTF-8 after trimming."""
    name = raw.strip()
    return name if 0 < len(name.encode("utf-8")) <= MAX_NAME_BYTES else None


def new_participant_id():
    return "p-" + secrets.token_hex(8)


class JoinService(Service):
    """Admits participants into the meetings the registry hosts, and lets
    them go: at once when they leave on purpose, after ``grace`` seconds when
    their connection was lost (they hold their place meanwhile)."""

    name = "joins"
    log = Logger()

    def __init__(self, registry, health, verifier, clock, metrics, grace, binding,
                 perf_counter=time.perf_counter):
        self._registry = registry
        self.binding = binding  # BindingKeys; replaced on a rotation
        self._health = health
        self._verifier = verifier
        self._clock = clock
        self._metrics = metrics
        self._grace = grace
        self._perf_counter = perf_counter
        self._in_grace = {}  # Participant -> its DelayedCall
        self._outcomes = {o: metrics.joins.labels(o) for o in OUTCOMES}
        self._reconnects = {o: metrics.reconnects.labels(o) for o in RECONNECT_OUTCOMES}
        registry.on_removed(self._meeting_removed)
        self._first_join_observers = []

    def on_first_join(self, observer):
        """Call ``observer(meeting)`` when a meeting admits its first
        participant in this process (again after it moved away and back),
        within the join's call: the observer must return at once."""
        self._first_join_observers.append(observer)

    def connected(self):
        """Participants with a session open now (a shutdown waits for none):
        everyone counted but those holding their place in the grace."""
        return self._registry.snapshot().participants - len(self._in_grace)

    @property
    def in_grace(self):
        """Participants disconnected and holding their place."""
        return len(self._in_grace)

    async def join(self, meeting_id, token, name, sink, correlation_id="", binding_token=""):
        """Admit the sender of a JoinRequest (a reconnect when it carries a
        correlation id or binding token); raise Refused or Redirected."""
        started = self._perf_counter()
        reconnect = bool(correlation_id or binding_token)
        try:
            if reconnect:
                admission = await self._reconnect(meeting_id, token, sink, correlation_id,
                                                  binding_token)
            else:
                admission = await self._join(meeting_id, token, name, sink)
        except Refused as e:
            self._outcomes[e.outcome].inc()
            if reconnect:
                self._reconnects["refused"].inc()
            raise
        except Redirected:
            self._outcomes["redirected"].inc()
            raise
        except Gone:
            self.log.debug("join to {meeting_id} dropped: its session closed during the token "
                           "check", meeting_id=meeting_id)
            raise
        self._outcomes["accepted"].inc()
        if reconnect:
            self._reconnects["accepted"].inc()
        self._metrics.join_duration.observe(self._perf_counter() - started)
        return admission

    async def _hosted_for(self, meeting_id, token, sink):
        """The token's claims and the meeting, checked in the contract's
        order: token, hosted here, not draining. A session that closed while
        its token was checked gets ``Gone``: nothing is committed for it."""
        try:
            claims = await self._verifier.verify(token, meeting_id)
        except InvalidToken as e:
            self.log.debug("join of {meeting_id} refused: {why}", meeting_id=meeting_id,
                           why=e.why)
            raise Refused("UNAUTHORIZED", INVALID_TOKEN_MESSAGE, "unauthorized") from None
        except NoJwks:
            raise Refused("INTERNAL_ERROR", "meeting tokens cannot be checked yet",
                          "error") from None
        if sink.closed:
            raise Gone()
        meeting = self._registry.get(meeting_id)
        if meeting is None:
            raise Refused("NOT_FOUND", "meeting not hosted here", "not_found")
        if self._health.draining:
            raise Redirected(meeting_id, DRAINING)
        if not self._health.hosting or meeting.ending:
            # Unconfirmed ownership (the lease lapsed) or an end in flight:
            # the GC places the meeting afresh.
            raise Redirected(meeting_id, MOVED)
        return claims, meeting

    async def _join(self, meeting_id, token, name, sink):
        claims, meeting = await self._hosted_for(meeting_id, token, sink)
        jti = claims["jti"]
        holder = meeting.holder_of(jti)
        if holder is not None:
            # The token's place is taken: by this client, whose JoinResponse
            # was lost. The place is handed over; nobody else sees anything.
            self.log.debug("meeting token of participant {participant_id} used again: "
                           "its place moves to the new session",
                           participant_id=holder.participant_id, meeting_id=meeting_id)
            return self._take_place(holder, sink)
        trimmed = valid_name(name)
        try:
            self._registry.check_room(meeting)
            if trimmed is None:
                raise Refused("INVALID_REQUEST", "participant_name must be 1-256 bytes of UTF-8",
                              "invalid")
            p = meeting.admit(claims["sub"], trimmed, sink, self._clock.seconds(),
                              new_participant_id, jti)
        except AtCapacity as e:
            whose = "meeting" if e.resource == "meeting" else "MC"
            raise Refused("CAPACITY_EXCEEDED", f"the {whose} is full", "capacity") from None
        self.log.debug("participant {participant_id} joined meeting {meeting_id}",
                      participant_id=p.participant_id, meeting_id=meeting_id,
                      user_id=p.user_id)
        p.correlation_id = new_correlation_id()
        if p.user_id == 1:  # user ids count this meeting actor's admissions from 1
            self._first_joined(meeting)
        return self._admission(p)

    def _first_joined(self, meeting):
        for observer in list(self._first_join_observers):
            try:
                observer(meeting)
            except Exception:
                self.log.failure("first-join observer failed", meeting_id=meeting.meeting_id)

    async def _reconnect(self, meeting_id, token, sink, correlation_id, binding_token):
        """The same participant on a new session: its latest binding token,
        a fresh meeting token for the same ``sub``, within the grace (or
        while the old session still looks open). The others see nothing."""
        claims, meeting = await self._hosted_for(meeting_id, token, sink)
        p = next((o for o in meeting.participants if o.correlation_id == correlation_id), None)
        if (p is None or p.sub != claims["sub"] or p.proof is None
                or not p.proof.verify(binding_token, correlation_id, p.participant_id)
                or not meeting.bind_token(p, claims["jti"])):
            self.log.info("reconnect to meeting {meeting_id} refused", meeting_id=meeting_id)
            raise Refused("UNAUTHORIZED", "invalid binding", "unauthorized")
        self.log.debug("participant {participant_id} reconnected to meeting {meeting_id}",
                      participant_id=p.participant_id, meeting_id=meeting_id)
        return self._take_place(p, sink)

    def _take_place(self, p, sink):
        """``p`` goes on in the session of ``sink``: its grace ends, an old
        session still open is closed without the participant leaving."""
        self._end_grace(p)
        old, p.sink = p.sink, sink
        if old is not None and old is not sink:
            old.deliver(Replaced())
        return self._admission(p)

    def _admission(self, p):
        """A JoinResponse's content, with a new binding token (the previous
        one stops working now)."""
        meeting = p.meeting
        token, p.proof = self.binding.issue(meeting.meeting_id, p.correlation_id,
                                            p.participant_id)
        others = tuple(o for o in meeting.participants if o is not p)
        return Admission(p, others, meeting.media_servers, p.correlation_id, token)

    def set_mute(self, p, audio_muted, video_muted):
        p.meeting.set_mute(p, audio_muted, video_muted)

    def leave(self, p, reason=VOLUNTARY):
        """``p`` left on purpose (or was put out, ``KICKED``): gone at once."""
        self._end_grace(p)
        if p.meeting.participant(p.participant_id) is p:
            p.meeting.leave(p, reason, self._clock.seconds())
            self.log.debug("participant {participant_id} left meeting {meeting_id}: {reason}",
                          participant_id=p.participant_id, meeting_id=p.meeting.meeting_id,
                          reason=reason)

    def lost(self, p):
        """``p``'s connection was lost: it keeps its place for the grace, then
        the others hear TIMEOUT."""
        if p.meeting.participant(p.participant_id) is not p or p in self._in_grace:
            return
        p.sink = None
        if not p.meeting.hosted or self._grace <= 0:
            self.leave(p, TIMEOUT)
            return
        self._in_grace[p] = self._clock.callLater(self._grace, self._grace_over, p)
        self.log.info("participant {participant_id} of meeting {meeting_id} lost its "
                      "connection; holding its place for {grace:g}s",
                      participant_id=p.participant_id, meeting_id=p.meeting.meeting_id,
                      grace=self._grace)

    def _meeting_removed(self, meeting):
        """A meeting no longer hosted (ended, or lost to another MC): its
        participants' graces end with it, as do their places."""
        for p in [p for p in self._in_grace if p.meeting is meeting]:
            self._end_grace(p)

    def _grace_over(self, p):
        self._in_grace.pop(p, None)
        self.leave(p, TIMEOUT)

    def _end_grace(self, p):
        call = self._in_grace.pop(p, None)
        if call is not None and call.active():
            call.cancel()

    def redirect_everyone(self, reason=DRAINING):
        """Send every connected participant of every meeting elsewhere (the
        MC drains); each session closes after its RedirectToMc."""
        count = 0
        for meeting in self._registry:
            count += sum(1 for p in meeting.participants if p.sink is not None)
            meeting.redirect_all(reason, self._clock.seconds())
        self.log.info("redirected {count} participants: {reason}", count=count, reason=reason)
        return count

    def stopService(self):
        """Cancel the grace timers: the MC is stopping, nobody is left to tell."""
        for call in self._in_grace.values():
            if call.active():
                call.cancel()
        self._in_grace.clear()
        return super().stopService()

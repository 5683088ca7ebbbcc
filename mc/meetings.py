"""The meeting registry and its actors: the one true count of meetings and
participants.

Capacity is checked and a slot taken in one synchronous step on the reactor
thread, so two concurrent assignments can never both take the last slot. The
registry knows nothing of Redis or gRPC; the assignment service drives it.
"""

from collections import OrderedDict, namedtuple

from twisted.logger import Logger

log = Logger()
Snapshot = namedtuple("Snapshot", "meetings participants max_meetings max_participants")


class AtCapacity(Exception):
    """No slot: ``resource`` is ``"meetings"``, ``"participants"`` (the MC's
    caps) or ``"meeting"`` (one meeting's participant cap)."""

    def __init__(self, resource):
        super().__init__(f"at capacity: {resource}")
        self.resource = resource


class UnknownMeeting(KeyError):
    pass


#: Shared by every meeting nobody has joined yet: an empty dict costs 64 bytes
#: and an MC hosts thousands of meetings that are waiting for people. Never
#: mutated: the first admission gives the meeting a dict of its own.
_NOBODY = {}

#: ``ParticipantLeft`` reasons, named as in the signalling contract.
VOLUNTARY = "VOLUNTARY"
KICKED = "KICKED"
TIMEOUT = "TIMEOUT"

#: Media connections kept per meeting (MHs' reports), as the platform's MC keeps.
MAX_MEDIA_CONNECTIONS_PER_MEETING = 1000
#: ``Meeting.media_connected`` outcomes.
RECORDED = "recorded"
DUPLICATE = "duplicate"
FULL = "full"

#: ``RedirectToMc`` reasons.
DRAINING = "draining"
MOVED = "moved"


class _Event:
    """One thing a meeting tells its participants. The same object goes to
    every recipient of a fan-out, so the sink encodes it once (``frame``)."""

    __slots__ = ("frame",)

    def __init__(self):
        self.frame = None


class Joined(_Event):
    __slots__ = ("participant_id", "name", "joined_at_ms")

    def __init__(self, p):
        super().__init__()
        self.participant_id, self.name, self.joined_at_ms = p.participant_id, p.name, p.joined_at_ms


class Left(_Event):
    __slots__ = ("participant_id", "reason")

    def __init__(self, participant_id, reason):
        super().__init__()
        self.participant_id, self.reason = participant_id, reason


class MuteChanged(_Event):
    __slots__ = ("participant_id", "audio_muted", "video_muted")

    def __init__(self, p):
        super().__init__()
        self.participant_id = p.participant_id
        self.audio_muted, self.video_muted = p.audio_muted, p.video_muted


class Replaced(_Event):
    """The participant reconnected on another session: this one closes
    without the participant leaving."""

    __slots__ = ()


class Redirect(_Event):
    __slots__ = ("meeting_id", "reason")

    def __init__(self, meeting_id, reason):
        super().__init__()
        self.meeting_id, self.reason = meeting_id, reason


class Participant:
    """One person in a meeting. ``sink`` (an IParticipantSink) is None while
    the participant is disconnected and holds its place (the grace)."""

    __slots__ = ("participant_id", "user_id", "sub", "name", "joined_at_ms", "audio_muted",
                 "video_muted", "sink", "meeting", "correlation_id", "proof", "jti",
                 "media_connections")

    def __init__(self, meeting, participant_id, user_id, sub, name, joined_at_ms, sink,
                 jti=None):
        self.meeting = meeting
        self.participant_id = participant_id
        self.user_id = user_id
        self.sub = sub
        self.name = name
        self.joined_at_ms = joined_at_ms
        self.audio_muted = False
        self.video_muted = False
        self.sink = sink
        self.correlation_id = ""  # with the proof of its latest binding token:
        self.proof = None  # what a reconnect must prove
        self.jti = jti  # the meeting token whose place this is
        self.media_connections = None  # the MHs' handler ids it is connected to, as they say

    @property
    def muted(self):
        return self.audio_muted or self.video_muted

    def __repr__(self):
        return (f"<Participant {self.participant_id} user={self.user_id} of "
                f"{self.meeting.meeting_id}>")


class Meeting:
    """One hosted meeting, owned under ``generation`` (its fencing epoch), and
    the people in it. Methods that change who is in it take ``now`` (seconds)
    rather than reading a clock."""

    __slots__ = (
        "meeting_id", "generation", "mh_assignments", "created_at", "ending",
        "_idle_since", "_participants", "_by_jti", "_registry", "_next_user_id",
        "media_connection_count",
    )

    def __init__(self, registry, meeting_id, generation, mh_assignments, now):
        self._registry = registry
        self.meeting_id = meeting_id
        self.generation = generation
        self.mh_assignments = mh_assignments
        self.created_at = now
        self.ending = False  # its end is in flight: joins are refused
        self._idle_since = now
        self._participants = _NOBODY
        self._by_jti = _NOBODY  # meeting token jti -> the participant holding its place
        self._next_user_id = 1
        self.media_connection_count = 0

    @property
    def idle_since(self):
        """When the meeting was last left empty (or hosted, or assigned
        again); None while someone is in it."""
        return self._idle_since

    @idle_since.setter
    def idle_since(self, now):
        self._idle_since = now
        if self._registry is not None:
            self._registry._idle_changed(self)

    @property
    def hosted(self):
        """False once the registry stopped hosting it (ended, or lost to
        another MC); its participants may still be leaving."""
        return self._registry is not None

    @property
    def participants(self):
        """The participants, in the order they joined."""
        return tuple(self._participants.values())

    @property
    def participant_count(self):
        return len(self._participants)

    @property
    def media_servers(self):
        """The media handlers' URLs, primary first (the GC's order)."""
        return tuple(endpoint for _mh_id, endpoint, _role in self.mh_assignments)

    def participant(self, participant_id):
        return self._participants.get(participant_id)

    def holder_of(self, jti):
        """The participant (connected or in its grace) whose place the
        meeting token ``jti`` holds, or None."""
        return self._by_jti.get(jti)

    def bind_token(self, p, jti):
        """``p`` now holds its place with the meeting token ``jti`` (a
        reconnect's fresh token); False when another participant holds it."""
        holder = self._by_jti.get(jti)
        if holder is not None and holder is not p:
            return False
        if self._by_jti is _NOBODY:
            self._by_jti = {}
        if self._by_jti.get(p.jti) is p:
            del self._by_jti[p.jti]
        p.jti = jti
        self._by_jti[jti] = p
        return True

    def admit(self, sub, name, sink, now, new_id, jti=None):
        """Add a participant holding the place of meeting token ``jti`` and
        tell everyone else; raise AtCapacity when the meeting or the MC is
        full. ``new_id()`` makes a participant id; one already in use here
        is drawn again."""
        if self._registry is None:
            raise UnknownMeeting(self.meeting_id)
        self._registry.check_room(self)
        participant_id = new_id()
        while participant_id in self._participants:
            participant_id = new_id()
        p = Participant(self, participant_id, self._next_user_id, sub, name, int(now * 1000),
                        sink)
        self._next_user_id += 1
        if self._participants is _NOBODY:
            self._participants = {}
        self._participants[participant_id] = p
        if jti is not None:
            self.bind_token(p, jti)
        self.idle_since = None
        self._registry._participants_changed(1)
        self._fan_out(Joined(p), but=p)
        return p

    def media_connected(self, p, handler_id):
        """An MH reports ``p`` connected to it: RECORDED, DUPLICATE, or FULL
        when the meeting holds MAX_MEDIA_CONNECTIONS_PER_MEETING already."""
        if p.media_connections is not None and handler_id in p.media_connections:
            return DUPLICATE
        if self.media_connection_count >= MAX_MEDIA_CONNECTIONS_PER_MEETING:
            return FULL
        if p.media_connections is None:
            p.media_connections = set()
        p.media_connections.add(handler_id)
        self.media_connection_count += 1
        return RECORDED

    def media_disconnected(self, p, handler_id):
        """An MH reports ``p`` gone from it; False when it was not known connected."""
        if p.media_connections is None or handler_id not in p.media_connections:
            return False
        p.media_connections.discard(handler_id)
        self.media_connection_count -= 1
        return True

    def leave(self, p, reason, now):
        """Remove ``p`` (a no-op if already gone) and tell everyone else why."""
        if self._remove(p, now):
            self._fan_out(Left(p.participant_id, reason))

    def _remove(self, p, now):
        if self._participants.get(p.participant_id) is not p:
            return False
        del self._participants[p.participant_id]
        if self._by_jti.get(p.jti) is p:
            del self._by_jti[p.jti]
        p.sink = None
        if p.media_connections is not None:
            self.media_connection_count -= len(p.media_connections)
            p.media_connections = None
        if not self._participants:
            self.idle_since = now
        if self._registry is not None:
            self._registry._participants_changed(-1)
        return True

    def set_mute(self, p, audio_muted, video_muted):
        """Set ``p``'s self-mute state; everyone, ``p`` included, hears it."""
        if self._participants.get(p.participant_id) is not p:
            return
        p.audio_muted, p.video_muted = bool(audio_muted), bool(video_muted)
        self._fan_out(MuteChanged(p))

    def redirect_all(self, reason, now):
        """Tell every connected participant to join again elsewhere. They
        leave at once and nobody is told of each departure: all of them go,
        and a leave fanned out to the rest would cost O(n^2) frames."""
        event = Redirect(self.meeting_id, reason)
        for p in [p for p in self._participants.values() if p.sink is not None]:
            sink = p.sink
            self._remove(p, now)
            _deliver(sink, event)

    def _fan_out(self, event, but=None):
        for other in list(self._participants.values()):
            if other is not but and other.sink is not None:
                _deliver(other.sink, event)

    def __repr__(self):
        return (f"<Meeting {self.meeting_id} generation={self.generation} "
                f"participants={len(self._participants)}>")


def _deliver(sink, event):
    """One recipient of a fan-out: its failure never stops the others."""
    try:
        sink.deliver(event)
    except Exception:
        log.failure("delivering {event} failed", event=type(event).__name__)


class Reservation:
    """A slot taken for a meeting being accepted; committed or released once."""

    __slots__ = ("meeting_id", "done")

    def __init__(self, meeting_id):
        self.meeting_id = meeting_id
        self.done = False


class MeetingRegistry:
    """Owns one actor per hosted meeting and the slots being filled."""

    log = Logger()

    def __init__(self, max_meetings, max_participants, participant_estimate, clock,
                 max_participants_per_meeting=1000):
        self.max_meetings = max_meetings
        self.max_participants_per_meeting = max_participants_per_meeting
        self.max_participants = max_participants
        self.participant_estimate = participant_estimate
        self._clock = clock
        self._meetings = {}
        # The meetings nobody is in, oldest idle_since first (each is set to
        # "now" and moved to the end): finding the expired ones is O(expired).
        self._idle = OrderedDict()
        self._pending = {}
        self._participants = 0
        self._observers = []
        self._removal_observers = []
        self._was_full = False

    def snapshot(self):
        """Meetings and participants as of now, read together."""
        return Snapshot(len(self._meetings), self._participants,
                        self.max_meetings, self.max_participants)

    @property
    def full(self):
        """True when the GC should stop sending meetings here (a new meeting
        brings at least one participant)."""
        return (len(self._meetings) >= self.max_meetings
                or self._participants + max(self.participant_estimate, 1)
                > self.max_participants)

    def on_capacity_change(self, observer):
        """Call ``observer(full)`` whenever ``full`` flips."""
        self._observers.append(observer)

    def on_removed(self, observer):
        """Call ``observer(meeting)`` whenever a meeting stops being hosted
        (ended, or lost to another MC)."""
        self._removal_observers.append(observer)

    def get(self, meeting_id):
        return self._meetings.get(meeting_id)

    def pending(self, meeting_id):
        """True while an assignment of this meeting is being accepted."""
        return meeting_id in self._pending

    def __len__(self):
        return len(self._meetings)

    def __iter__(self):
        return iter(list(self._meetings.values()))

    def reserve(self, meeting_id):
        """Take a slot or raise AtCapacity, in one step. Pending slots count
        with the participant estimate until committed or released."""
        pending = len(self._pending)
        if len(self._meetings) + pending >= self.max_meetings:
            raise AtCapacity("meetings")
        est = self.participant_estimate
        if self._participants + (pending + 1) * est > self.max_participants:
            raise AtCapacity("participants")
        if meeting_id in self._pending or meeting_id in self._meetings:
            raise ValueError(f"meeting {meeting_id} already has a slot")
        r = Reservation(meeting_id)
        self._pending[meeting_id] = r
        return r

    def commit(self, reservation, generation, mh_assignments):
        """Turn a reservation into a hosted meeting actor."""
        self._finish(reservation)
        m = Meeting(self, reservation.meeting_id, generation, mh_assignments,
                    self._clock.seconds())
        self._meetings[m.meeting_id] = m
        self._idle[m.meeting_id] = m
        self._check_full()
        return m

    def release(self, reservation):
        """Give a reserved slot back (the accept failed)."""
        if not reservation.done:
            self._finish(reservation)

    def remove(self, meeting_id):
        """Stop hosting and counting a meeting; returns its actor."""
        m = self._meetings.pop(meeting_id, None)
        if m is None:
            raise UnknownMeeting(meeting_id)
        self._participants -= len(m._participants)
        self._idle.pop(meeting_id, None)
        m._registry = None  # its participants' leaves no longer count here
        self._check_full()
        for observer in list(self._removal_observers):
            try:
                observer(m)
            except Exception:
                self.log.failure("meeting removal observer failed")
        return m

    def media_connections(self):
        """MH connections reported open across the hosted meetings."""
        return sum(m.media_connection_count for m in self._meetings.values())

    def idle(self, idle_seconds):
        """Meetings whose last participant left at least ``idle_seconds`` ago
        (or that never had one), oldest first; costs O(those meetings)."""
        cutoff = self._clock.seconds() - idle_seconds
        expired = []
        for m in self._idle.values():
            if m._idle_since > cutoff:
                break
            expired.append(m)
        return expired

    def _idle_changed(self, m):
        if m._idle_since is None:
            self._idle.pop(m.meeting_id, None)
        else:
            self._idle[m.meeting_id] = m
            self._idle.move_to_end(m.meeting_id)

    def _finish(self, reservation):
        if reservation.done or self._pending.get(reservation.meeting_id) is not reservation:
            raise ValueError("reservation already finished")
        reservation.done = True
        del self._pending[reservation.meeting_id]

    def check_room(self, meeting):
        """Raise AtCapacity unless one more participant fits in ``meeting``
        and in the MC (participants in their grace hold their places)."""
        if self._participants + 1 > self.max_participants:
            raise AtCapacity("participants")
        if meeting.participant_count + 1 > self.max_participants_per_meeting:
            raise AtCapacity("meeting")

    def _participants_changed(self, delta):
        self._participants += delta
        self._check_full()

    def _check_full(self):
        full = self.full
        if full != self._was_full:
            self._was_full = full
            for observer in list(self._observers):
                try:
                    observer(full)
                except Exception:
                    self.log.failure("capacity observer failed")

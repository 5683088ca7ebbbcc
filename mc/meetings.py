"""The meeting registry and its actors: the one true count of meetings and
participants.

Capacity is checked and a slot taken in one synchronous step on the reactor
thread, so two concurrent assignments can never both take the last slot. The
registry knows nothing of Redis or gRPC; the assignment service drives it.
"""

from collections import namedtuple

from twisted.logger import Logger

Snapshot = namedtuple("Snapshot", "meetings participants max_meetings max_participants")


class AtCapacity(Exception):
    """No slot: ``resource`` is ``"meetings"`` or ``"participants"``."""

    def __init__(self, resource):
        super().__init__(f"at capacity: {resource}")
        self.resource = resource


class UnknownMeeting(KeyError):
    pass


#: Shared by every meeting nobody has joined yet: an empty set costs 216 bytes
#: and an MC hosts thousands of meetings that are waiting for people.
_NOBODY = frozenset()


class Meeting:
    """One hosted meeting, owned under ``generation`` (its fencing epoch)."""

    __slots__ = (
        "meeting_id", "generation", "mh_assignments", "created_at",
        "idle_since", "_participants", "_registry",
    )

    def __init__(self, registry, meeting_id, generation, mh_assignments, now):
        self._registry = registry
        self.meeting_id = meeting_id
        self.generation = generation
        self.mh_assignments = mh_assignments
        self.created_at = now
        self.idle_since = now
        self._participants = _NOBODY  # a set of its own from the first join

    @property
    def participants(self):
        return frozenset(self._participants)

    @property
    def participant_count(self):
        return len(self._participants)

    def join(self, participant_id):
        """Add a participant; joining twice is a no-op."""
        if participant_id in self._participants:
            return
        if self._participants is _NOBODY:
            self._participants = set()
        self._participants.add(participant_id)
        self.idle_since = None
        self._registry._participants_changed(1)

    def leave(self, participant_id):
        """Remove a participant; an unknown one is a no-op."""
        if participant_id not in self._participants:
            return
        self._participants.discard(participant_id)
        if not self._participants:
            self.idle_since = self._registry._clock.seconds()
        self._registry._participants_changed(-1)

    def __repr__(self):
        return (f"<Meeting {self.meeting_id} generation={self.generation} "
                f"participants={len(self._participants)}>")


class Reservation:
    """A slot taken for a meeting being accepted; committed or released once."""

    __slots__ = ("meeting_id", "done")

    def __init__(self, meeting_id):
        self.meeting_id = meeting_id
        self.done = False


class MeetingRegistry:
    """Owns one actor per hosted meeting and the slots being filled."""

    log = Logger()

    def __init__(self, max_meetings, max_participants, participant_estimate, clock):
        self.max_meetings = max_meetings
        self.max_participants = max_participants
        self.participant_estimate = participant_estimate
        self._clock = clock
        self._meetings = {}
        self._pending = {}
        self._participants = 0
        self._observers = []
        self._was_full = False

    def snapshot(self):
        """Meetings and participants as of now, read together."""
        return Snapshot(len(self._meetings), self._participants,
                        self.max_meetings, self.max_participants)

    @property
    def full(self):
        """True when the GC should stop sending meetings here."""
        return (len(self._meetings) >= self.max_meetings
                or self._participants + self.participant_estimate > self.max_participants)

    def on_capacity_change(self, observer):
        """Call ``observer(full)`` whenever ``full`` flips."""
        self._observers.append(observer)

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
        if m._participants:
            self._participants -= len(m._participants)
            m._participants = _NOBODY
        self._check_full()
        return m

    def idle(self, idle_seconds):
        """Meetings whose last participant left at least ``idle_seconds`` ago
        (or that never had one)."""
        cutoff = self._clock.seconds() - idle_seconds
        return [m for m in self._meetings.values()
                if m.idle_since is not None and m.idle_since <= cutoff]

    def _finish(self, reservation):
        if reservation.done or self._pending.get(reservation.meeting_id) is not reservation:
            raise ValueError("reservation already finished")
        reservation.done = True
        del self._pending[reservation.meeting_id]

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

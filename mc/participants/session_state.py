"""A participant session's life as one named state, and the one table of
the moves it may make.

The transport (``webtransport``) and signalling (``signaling``) share one
``SessionLife`` per session: the transport moves it through the CONNECT,
the stream's opening and the close; signalling through the join. Neither
keeps flags of its own about where the session is, so an order of events
nobody foresaw (a FIN, a reset and a STOP_SENDING in one packet) cannot
leave the two disagreeing: a move the table does not allow raises at once.
"""

from enum import Enum


class SessionState(Enum):
    #: The QUIC handshake of the connection, before HTTP/3: a connection's
    #: state before it has a session (``WebTransportConnection.state``).
    HANDSHAKE = "handshake"
    #: CONNECT answered 200; the client has not opened its stream.
    CONNECT = "connect"
    #: The client's stream is open; no JoinRequest yet.
    AWAITING_JOIN = "awaiting join"
    #: A JoinRequest arrived; its token (and the meeting) is being checked.
    JOINING = "joining"
    #: A participant of a meeting.
    JOINED = "joined"
    #: We finished the session; its CLOSE waits for the client to read.
    CLOSING = "closing"
    #: Over: nothing is written or read any more.
    CLOSED = "closed"


#: Each session starts at CONNECT (``SessionLife()``).
_MOVES = {
    SessionState.CONNECT: {SessionState.AWAITING_JOIN, SessionState.CLOSING,
                           SessionState.CLOSED},
    SessionState.AWAITING_JOIN: {SessionState.JOINING, SessionState.CLOSING,
                                 SessionState.CLOSED},
    SessionState.JOINING: {SessionState.JOINED, SessionState.CLOSING, SessionState.CLOSED},
    SessionState.JOINED: {SessionState.CLOSING, SessionState.CLOSED},
    SessionState.CLOSING: {SessionState.CLOSED},
    SessionState.CLOSED: set(),
}

#: States in which the session still takes frames from the client and
#: events for it.
LIVE = frozenset({SessionState.CONNECT, SessionState.AWAITING_JOIN, SessionState.JOINING,
                  SessionState.JOINED})


class InvalidMove(RuntimeError):
    """A move the table does not allow: a bug, never the client's doing."""


class SessionLife:
    """Where one session is; ``move`` is the only way to change it."""

    __slots__ = ("state",)

    def __init__(self, state=SessionState.CONNECT):
        self.state = state

    @property
    def live(self):
        return self.state in LIVE

    def move(self, state):
        if state not in _MOVES[self.state]:
            raise InvalidMove(f"{self.state.value} -> {state.value}")
        self.state = state

    def __repr__(self):
        return f"<SessionLife {self.state.value}>"

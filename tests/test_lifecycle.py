"""Drain and graceful shutdown by signal, driven by a memory reactor and clock."""

import signal
from types import SimpleNamespace

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from mc.binding import BindingKeys
from mc.joining import JoinService
from mc.meetings import MeetingRegistry, Redirect
from mc.ops.health import DRAINING, HEALTHY, Health
from mc.ops.lifecycle import Lifecycle
from mc.ops.metrics import Metrics
from mc.testing.doubles import TableTokenVerifier
from tests.configs import make_config


class Reactor(MemoryReactorClock):
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class Signals:
    SIGTERM, SIGINT, SIGUSR2 = signal.SIGTERM, signal.SIGINT, signal.SIGUSR2

    def __init__(self):
        self.handlers = {}

    def signal(self, signum, handler):
        previous = self.handlers.get(signum, signal.SIG_DFL)
        self.handlers[signum] = handler
        return previous

    def send(self, signum):
        self.handlers[signum](signum, None)


class Liaison:
    def __init__(self, health):
        self.health = health
        self.sent = []
        self.held = None

    def send_draining_heartbeat(self):
        self.sent.append(self.health.status)
        return defer.succeed(None) if self.held is None else self.held


class Person:
    """A participant's session: a redirect takes it out of the meeting; its
    session then closes at once, or (``leave_on_redirect=False``) lingers,
    its redirect unread, in ``lingering`` until ``done()``."""

    def __init__(self, lingering, leave_on_redirect=True):
        self.lingering = lingering
        self.leave_on_redirect = leave_on_redirect
        self.redirects = []
        self.p = None

    def deliver(self, event):
        if isinstance(event, Redirect):
            self.redirects.append(event.reason)
            if not self.leave_on_redirect:
                self.lingering.add(self)

    def done(self):
        self.lingering.discard(self)


class Grpc(Service):
    def __init__(self):
        self.stopped = 0

    def stopService(self):
        self.stopped += 1
        return super().stopService()


def make(grace=10):
    reactor = Reactor()
    cfg = make_config(shutdown_grace=grace)
    health = Health(lambda: True, 1.0)
    registry = MeetingRegistry(10, 100, 1, reactor)
    grpc = Grpc()
    grpc.startService()
    signals = Signals()
    joins = JoinService(registry, health, TableTokenVerifier(), reactor, Metrics(), 30,
                        BindingKeys(b"k" * 32))
    lingering = set()
    lc = Lifecycle(cfg, reactor, health, registry, Liaison(health), grpc, joins,
                   closing=lambda: len(lingering), signals=signals)
    lc.startService()
    for hook in reactor.whenRunningHooks:
        hook[0](*hook[1], **hook[2])
    return SimpleNamespace(reactor=reactor, health=health, registry=registry, grpc=grpc,
                           signals=signals, lc=lc, liaison=lc._liaison, joins=joins,
                           lingering=lingering)


def host(registry, meeting_id):
    return registry.commit(registry.reserve(meeting_id), 1, [])


def person(r, meeting, leave_on_redirect=True):
    who = Person(r.lingering, leave_on_redirect)
    who.p = meeting.admit("user", "Ann", who, r.reactor.seconds(), lambda: f"p{id(who)}")
    return who


def test_sigusr2_toggles_drain():
    r = make()
    r.signals.send(signal.SIGUSR2)
    assert r.health.draining and r.health.status == DRAINING
    r.signals.send(signal.SIGUSR2)
    assert not r.health.draining and r.health.status == HEALTHY
    assert not r.reactor.hasStopped


def test_sigterm_with_no_meetings_drains_heartbeats_stops_grpc_and_exits():
    r = make()
    r.signals.send(signal.SIGTERM)
    assert r.liaison.sent == [DRAINING]
    assert r.grpc.stopped == 1
    assert r.reactor.hasStopped


def test_drain_redirects_participants_after_the_draining_heartbeat():
    r = make()
    m = host(r.registry, "m1")
    ann = person(r, m)
    r.liaison.held = heartbeat = defer.Deferred()
    r.signals.send(signal.SIGUSR2)
    assert r.liaison.sent == [DRAINING] and ann.redirects == []
    heartbeat.callback(None)
    assert ann.redirects == ["draining"] and r.joins.connected() == 0
    assert r.registry.get("m1") is m  # the meeting stays until idle or claimed elsewhere


def test_undrain_before_the_heartbeat_answers_redirects_nobody():
    r = make()
    ann = person(r, host(r.registry, "m1"))
    r.liaison.held = heartbeat = defer.Deferred()
    r.signals.send(signal.SIGUSR2)
    r.signals.send(signal.SIGUSR2)
    heartbeat.callback(None)
    assert ann.redirects == [] and not r.health.draining


def test_sigterm_does_not_wait_for_meetings_only_for_participants():
    r = make(grace=10)
    host(r.registry, "m1")
    person(r, host(r.registry, "m2"))
    r.signals.send(signal.SIGTERM)
    assert r.reactor.hasStopped  # everyone left on the redirect
    assert r.registry.get("m1") is not None


def test_sigterm_waits_for_participants_that_linger():
    r = make(grace=10)
    ann = person(r, host(r.registry, "m1"), leave_on_redirect=False)
    r.signals.send(signal.SIGTERM)
    assert ann.redirects == ["draining"]
    r.reactor.advance(3)
    assert not r.reactor.hasStopped
    ann.done()
    r.reactor.advance(0.2)
    assert r.reactor.hasStopped


def test_sigterm_gives_up_after_grace_and_keeps_meetings():
    r = make(grace=5)
    person(r, host(r.registry, "m1"), leave_on_redirect=False)
    r.signals.send(signal.SIGINT)
    r.reactor.advance(4.9)
    assert not r.reactor.hasStopped
    r.reactor.advance(0.2)
    assert r.reactor.hasStopped
    assert r.registry.get("m1") is not None


def test_second_signal_skips_the_wait():
    r = make(grace=30)
    person(r, host(r.registry, "m1"), leave_on_redirect=False)
    r.signals.send(signal.SIGTERM)
    r.reactor.advance(1)
    assert not r.reactor.hasStopped
    r.signals.send(signal.SIGTERM)
    assert r.reactor.hasStopped
    assert r.liaison.sent == [DRAINING]


def test_drain_toggle_ignored_once_shutting_down():
    r = make(grace=30)
    host(r.registry, "m1")
    r.signals.send(signal.SIGTERM)
    r.signals.send(signal.SIGUSR2)
    assert r.health.draining


def test_stop_restores_previous_handlers():
    r = make()
    r.lc.stopService()
    assert r.signals.handlers[signal.SIGTERM] == signal.SIG_DFL


def test_after_a_signalled_shutdown_stop_keeps_the_stop_handlers():
    r = make()
    r.signals.send(signal.SIGTERM)
    r.lc.stopService()
    assert r.signals.handlers[signal.SIGUSR2] == signal.SIG_DFL
    r.signals.send(signal.SIGTERM)  # one more, while the tree stops: harmless
    assert r.lc.skip_wait


def test_second_signal_during_the_grpc_stop_still_skips_the_wait():
    r = make(grace=30)
    person(r, host(r.registry, "m1"), leave_on_redirect=False)
    stopping = defer.Deferred()
    r.grpc.stopService = lambda: stopping
    r.signals.send(signal.SIGTERM)
    r.signals.send(signal.SIGTERM)
    assert not r.reactor.hasStopped
    stopping.callback(None)
    assert r.reactor.hasStopped

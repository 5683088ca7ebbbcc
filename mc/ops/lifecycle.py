"""Operators' signals: SIGUSR2 toggles drain; SIGTERM/SIGINT drain and shut
down gracefully, and a second one cuts the wait short; SIGHUP reads the
secrets and certificates again (``mc.ops.reload``), and still reopens the
log as it did (``systemctl reload``).

Draining moves people, it does not end meetings: once the GC has heard
DRAINING (so it places the meeting elsewhere at the next join), every
participant is redirected to join again through the GC. A shutdown then waits
for the participants to go, not for the meetings to end.

Twisted's own SIGTERM handler makes twistd exit by re-raising the signal
(status 143); an operator asked to stop cleanly, so ours ends with status 0.
Handlers only schedule work with ``reactor.callFromThread``.
"""

import signal as signal_module

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger


class Lifecycle(Service):
    name = "lifecycle"
    log = Logger()

    def __init__(self, config, reactor, health, registry, liaison, grpc, joins, closing=None,
                 poll=0.1, signals=signal_module, reload=None):
        self._config = config
        self._reactor = reactor
        self._health = health
        self._registry = registry
        self._liaison = liaison
        self._grpc = grpc
        self._joins = joins
        # Sessions we closed whose clients may not have read everything yet.
        self._closing = closing or (lambda: 0)
        self._poll = poll
        self._signals = signals
        self._reload = reload
        self.shutting_down = False
        self.skip_wait = False
        self._cut_short = None
        self._previous = {}

    def startService(self):
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def stopService(self):
        """Put the previous handlers back; once a signal started the
        shutdown, ours stay for SIGTERM and SIGINT, so one more arriving
        while the tree stops cannot turn a clean exit into a killed one."""
        keep = (self._signals.SIGTERM, self._signals.SIGINT) if self.shutting_down else ()
        for signum, handler in self._previous.items():
            if signum not in keep:
                self._signals.signal(signum, handler)
        self._previous.clear()
        return super().stopService()

    def _install(self):
        if not self.running:
            return
        s = self._signals
        handlers = {s.SIGTERM: self._on_stop_signal, s.SIGINT: self._on_stop_signal,
                    s.SIGUSR2: self._on_drain_signal}
        if self._reload is not None:
            handlers[s.SIGHUP] = self._on_reload_signal
        for signum, handler in handlers.items():
            self._previous[signum] = s.signal(signum, handler)

    def _on_stop_signal(self, signum, frame):
        self._reactor.callFromThread(self.shutdown, signum)

    def _on_drain_signal(self, signum, frame):
        self._reactor.callFromThread(self.toggle_drain)

    def _on_reload_signal(self, signum, frame):
        self._reactor.callFromThread(self._reload)
        previous = self._previous.get(signum)
        if callable(previous):  # the log file's reopen, which only schedules it too
            previous(signum, frame)

    def toggle_drain(self):
        """Drain (or undrain). Draining redirects the participants once the
        DRAINING heartbeat has gone out; the Deferred fires after that."""
        if self.shutting_down:
            return defer.succeed(None)
        draining = not self._health.draining
        self.log.info("drain {state} by SIGUSR2", state="on" if draining else "off")
        self._health.set_draining(draining)
        if not draining:
            return defer.succeed(None)
        d = self._move_participants()
        d.addErrback(lambda f: self.log.failure("drain failed", f))
        return d

    @defer.inlineCallbacks
    def _move_participants(self):
        yield self._liaison.send_draining_heartbeat()
        if self._health.draining:  # not undrained meanwhile
            self._joins.redirect_everyone()

    def shutdown(self, signum=None):
        """First call: drain and stop gracefully. A later call skips the rest
        of the wait for hosted meetings."""
        if self.shutting_down:
            if not self.skip_wait:
                self.log.warn("second stop signal: not waiting for participants to move")
                self.skip_wait = True
                if self._cut_short is not None and not self._cut_short.called:
                    self._cut_short.callback(None)
            return
        self.shutting_down = True
        d = self._graceful()
        d.addErrback(lambda f: self.log.failure("graceful shutdown failed", f))
        d.addBoth(lambda _: self._reactor.stop())

    @defer.inlineCallbacks
    def _graceful(self):
        grace = self._config.shutdown_grace
        self.log.info("shutting down: draining, then waiting up to {grace:g}s for "
                      "{participants} participants to move", grace=grace,
                      participants=self._joins.connected())
        self._health.set_draining(True)
        yield self._move_participants()
        if self._grpc.running:
            yield self._grpc.stopService()
        yield self._wait_for_participants(grace)
        left = [m.meeting_id for m in self._registry]
        if left:
            self.log.warn("stopping with {count} meetings still hosted; their keys stay in "
                          "Redis for the next owner: {meeting_ids}", count=len(left),
                          meeting_ids=left[:100])

    def _wait_for_participants(self, grace):
        """Fires when no participant is connected (and every redirect was
        read), ``grace`` seconds pass, or a second stop signal arrives,
        whichever is first."""
        done = defer.Deferred()
        self._cut_short = done
        deadline = self._reactor.seconds() + grace

        def check():
            if done.called:
                return
            if (self.skip_wait or self._reactor.seconds() >= deadline
                    or not (self._joins.connected() or self._closing())):
                done.callback(None)
            else:
                self._reactor.callLater(min(self._poll, deadline - self._reactor.seconds()),
                                        check)

        check()
        return done

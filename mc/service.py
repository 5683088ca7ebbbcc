"""The root of the service tree: children start in dependency order and stop
one at a time in reverse, each stop awaited before the next begins.

Twisted's MultiService stops all children at once; here the liaison must be
quiet before the gRPC server goes, and Redis must stay until meetings are
settled, so order matters.
"""

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger


class OrderedMultiService(MultiService):
    log = Logger()

    def startService(self):
        """Start children in order; if one raises, stop the ones already
        started (a gRPC server thread would otherwise keep the process alive)
        and re-raise so twistd exits non-zero."""
        self.running = 1
        started = []
        for child in self:
            try:
                child.startService()
            except BaseException:
                self.log.failure("{service} failed to start", service=child.name)
                for s in reversed(started):
                    try:
                        s.stopService()
                    except Exception:
                        self.log.failure("{service} failed to stop", service=s.name)
                self.running = 0
                raise
            started.append(child)

    @defer.inlineCallbacks
    def stopService(self):
        self.running = 0
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("{service} failed to stop cleanly", service=child.name)
        self.log.info("all services stopped")

"""Rotation by file change: the secret and certificate files the MC was given
are watched, and a change makes the same reload SIGHUP makes.

Nothing sends SIGHUP when a Kubernetes Secret changes, and an operator who
updates a file should not have to. What counts as a change is what a fresh
read would see differently: the file's resolved path, inode, size and
times. That covers the kubelet's atomic swap of a mounted Secret (the
``..data`` symlink renamed onto a new directory), a file renamed into place,
and an in-place rewrite.

How the MC hears of it: inotify (``twisted.internet.inotify``) on the
directories of each path as given and as resolved, where the kernel has it;
else a stat of every file every POLL_INTERVAL seconds. Events only prompt a
look: the files are compared SETTLE seconds after the last event, so a
burst of writes makes one reload. Twisted's INotify closes itself when a
watched directory is deleted (the kubelet deletes the previous Secret
directory after each swap): the watches are rebuilt on a fresh INotify
after every look and whenever it closed.

The stats run on a thread, like the reads of the reload: the reactor never
waits on a disk.
"""

import os

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from mc.periodic import PeriodicCall

try:
    from twisted.internet import inotify
except ImportError:  # not Linux
    inotify = None

#: Seconds between stats when inotify is not available.
POLL_INTERVAL = 2.0
#: Seconds after the last event before the files are compared.
SETTLE = 0.2
#: What in a watched directory may mean a file changed: entries created,
#: renamed or deleted (symlink swaps, renames into place), writes, metadata.
WATCH_MASK = 0 if inotify is None else (
    inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_CLOSE_WRITE
    | inotify.IN_MODIFY | inotify.IN_ATTRIB | inotify.IN_DELETE)


def thd_fingerprints(paths):
    """``({path: fingerprint or None}, directories to watch)``: on a thread.
    A fingerprint changes whenever a fresh read could see other bytes."""
    prints, directories = {}, set()
    for path in paths:
        absolute = os.path.abspath(path)
        directories.add(os.path.dirname(absolute))
        real = os.path.realpath(absolute)
        directories.add(os.path.dirname(real))
        try:
            st = os.stat(real)
        except OSError:
            prints[path] = None
            continue
        prints[path] = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return prints, frozenset(d for d in directories if os.path.isdir(d))


def inotify_factory(reactor):
    """A function making a started ``twisted.internet.inotify.INotify`` (it
    raises INotifyError where the kernel has none), or None off Linux."""
    if inotify is None:
        return None

    def make():
        notifier = inotify.INotify(reactor)
        notifier.startReading()
        return notifier

    return make


class FileWatcher(Service):
    """Calls ``on_change()`` when any of ``paths`` changes. ``mode``:
    ``auto`` (inotify where available, else polling), ``inotify``, ``poll``
    or ``off``. ``in_thread(fn)`` runs ``fn`` off the reactor;
    ``make_inotify`` makes an INotify (tests give their own)."""

    name = "watch"
    log = Logger()

    def __init__(self, paths, on_change, reactor, mode="auto", in_thread=None,
                 make_inotify=None, poll_interval=POLL_INTERVAL, settle=SETTLE):
        self._paths = tuple(dict.fromkeys(paths))
        self._on_change = on_change
        self._reactor = reactor
        self._in_thread = in_thread or (
            lambda fn: threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn))
        self._settle = settle
        self._make_inotify = make_inotify
        if mode in ("auto", "inotify") and make_inotify is None:
            self._make_inotify = inotify_factory(reactor)
        if mode == "inotify" and self._make_inotify is None:
            raise RuntimeError("inotify is not available here")
        self.mode = "off" if mode == "off" or not self._paths else (
            "inotify" if mode != "poll" and self._make_inotify is not None else "poll")
        self._poll_interval = poll_interval
        self._poll = PeriodicCall(lambda: poll_interval, self._look, reactor, "file poll")
        self._notifier = None
        self._watched = frozenset()
        self._known = None
        self._pending = None
        self._looking = None
        self._again = False

    def startService(self):
        super().startService()
        if self.mode == "off":
            return
        self.log.info("watching {count} secret and certificate files ({mode}): a change "
                      "reloads them as SIGHUP does", count=len(self._paths), mode=self.mode)
        if self.mode == "poll":
            self._poll.start(now=True)
        else:
            self._look()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        yield self._poll.stop()
        if self._looking is not None:
            yield self._looking
        self._close_notifier()

    def _event(self, ignored, path, mask):
        """An inotify event: look once the burst it belongs to is over."""
        if self._pending is not None and self._pending.active():
            self._pending.reset(self._settle)
        elif self.running:
            self._pending = self._reactor.callLater(self._settle, self._look)

    def _look(self):
        """Compare the files with what was last seen; a difference calls
        ``on_change``. Never two looks at once: one asked for meanwhile
        runs after. The Deferred never fails."""
        if self._looking is not None:
            self._again = True
            return self._looking
        self._looking = done = defer.Deferred()
        d = self._in_thread(lambda: thd_fingerprints(self._paths))
        d.addCallback(self._compare)
        d.addErrback(lambda f: self.log.failure("looking at the watched files failed", f))
        d.addBoth(self._looked, done)
        return done

    def _looked(self, _, done):
        self._looking = None
        done.callback(None)
        if self._again and self.running:
            self._again = False
            self._look()

    def _compare(self, seen):
        prints, directories = seen
        known, self._known = self._known, prints
        if self.mode == "inotify" and self.running:
            self._rewatch(directories)
        if known is None or known == prints:
            return
        changed = [p for p in self._paths if known.get(p) != prints.get(p)]
        self.log.info("files changed: {paths}; reloading", paths=changed)
        self._on_change()

    def _rewatch(self, directories):
        """Watch ``directories`` on a live INotify (a fresh one when the
        last closed itself or the set changed)."""
        alive = self._notifier is not None and self._notifier.connected
        if alive and directories == self._watched:
            return
        self._close_notifier()
        try:
            self._notifier = notifier = self._make_inotify()
        except inotify.INotifyError:
            self.log.warn("inotify unavailable: polling the files every {interval:g}s instead",
                          interval=self._poll_interval)
            self.mode = "poll"
            self._poll.start()
            return
        notifier.connectionLost = self._notifier_lost(notifier, notifier.connectionLost)
        for directory in sorted(directories):
            try:
                notifier.watch(FilePath(directory), mask=WATCH_MASK, callbacks=[self._event])
            except Exception:
                self.log.failure("cannot watch {directory}", directory=directory)
        self._watched = directories

    def _notifier_lost(self, notifier, lost):
        """Wraps ``notifier.connectionLost``: a watched directory deleted
        closes the whole INotify; look again, which rebuilds it."""
        def connection_lost(reason):
            lost(reason)
            if self._notifier is notifier and self.running:
                self._notifier = None
                self._event(None, None, 0)
        return connection_lost

    def _close_notifier(self):
        notifier, self._notifier = self._notifier, None
        if notifier is not None and notifier.connected:
            notifier.loseConnection()

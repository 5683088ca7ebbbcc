"""The HTTP side of the doubles (the JWKS issuer, the Auth Controller): one
``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread, which can stop and
start again on the same port, as a peer that restarts does."""

import threading
from http.server import ThreadingHTTPServer


class LoopbackHttp:
    """Serves ``handler`` for ``owner`` (a request handler reaches it as
    ``self.server.owner``); start and stop from any thread."""

    def __init__(self, handler, owner, name):
        self._handler = handler
        self._owner = owner
        self._name = name
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self.port = 0

    @property
    def serving(self):
        return self._server is not None

    def start(self, port=None):
        """Serve; ``port`` None reuses the last one (0 the first time: any
        free port). Idempotent."""
        with self._lock:
            if self._server is not None:
                return
            server = ThreadingHTTPServer(("127.0.0.1", self.port if port is None else port),
                                         self._handler)
            server.daemon_threads = True
            server.owner = self._owner
            thread = threading.Thread(target=server.serve_forever,
                                      kwargs={"poll_interval": 0.05}, name=self._name,
                                      daemon=True)
            thread.start()
            self._server, self._thread = server, thread
            self.port = server.server_address[1]

    def stop(self):
        """Stop serving (the port may be taken again by ``start``)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            thread.join(5)

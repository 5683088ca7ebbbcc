"""A grpc future as a Twisted Deferred.

grpcio completes its futures on its own threads; the only way a result gets
back to the reactor is ``reactor.callFromThread``, so the reactor never blocks
on the network and no Twisted object is touched off the reactor thread.
Cancelling the Deferred cancels the future.
"""

import grpc
from twisted.internet import defer


def deferred_from_future(reactor, future, error):
    """A Deferred firing with ``future``'s result, or failing with
    ``error(code_name, details)`` for its ``grpc.RpcError`` (``"UNKNOWN"``
    and the exception's type name for anything else)."""
    d = defer.Deferred(lambda _d: future.cancel())

    def deliver(outcome, is_error):
        # A cancelled Deferred has already failed with CancelledError.
        if d.called:
            return
        if is_error:
            d.errback(outcome)
        else:
            d.callback(outcome)

    def thd_done(fut):
        if fut.cancelled():
            return
        try:
            outcome, is_error = fut.result(), False
        except grpc.RpcError as e:
            outcome, is_error = error(e.code().name, e.details() or ""), True
        except Exception as e:  # anything else must still reach the reactor
            outcome, is_error = error("UNKNOWN", type(e).__name__), True
        reactor.callFromThread(deliver, outcome, is_error)

    future.add_done_callback(thd_done)
    return d

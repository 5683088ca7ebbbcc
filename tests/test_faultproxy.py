"""The tests' own TCP fault proxy in front of a real redis-server: each
fault does what the fault tests rely on."""

import select
import socket
import time

import pytest

from mc.testing.faultproxy import FaultProxy
from mc.testing.redisproc import _encode, _read_reply


@pytest.fixture
def proxy(redis):
    p = FaultProxy(("127.0.0.1", redis.port))
    yield p
    p.close()


class Client:
    def __init__(self, port, timeout=2.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, *args):
        self.sock.sendall(_encode(args))

    def call(self, *args):
        self.send(*args)
        return _read_reply(self.file)

    def close(self):
        self.file.close()
        self.sock.close()


def test_pass_and_a_dropped_reply(proxy, redis):
    c = Client(proxy.port)
    assert c.call("SET", "k", "1") == "OK"
    proxy.drop_replies(lambda args: args[0].upper() == b"INCR")
    c.send("GET", "k")
    c.send("INCR", "k")  # runs in Redis; its reply never arrives, the connection is cut
    assert _read_reply(c.file) == "1", "what came before the lost reply arrives"
    with pytest.raises(ConnectionError):
        _read_reply(c.file)
    assert proxy.dropped == 1 and redis.command("GET", "k") == "2"
    again = Client(proxy.port)
    assert again.call("INCR", "k") == 3, "only one reply dropped"
    again.close()
    c.close()


def test_a_held_reply_waits_for_release_and_the_stream_stays_in_order(proxy, redis):
    c = Client(proxy.port)
    proxy.hold_replies(lambda args: args[0].upper() == b"INCR")
    c.send("INCR", "h")
    c.send("GET", "h")
    assert select.select([c.sock], [], [], 0.3)[0] == [], "nothing arrives"
    assert redis.command("GET", "h") == "1", "it ran; its reply waits"
    proxy.release()
    assert _read_reply(c.file) == 1 and _read_reply(c.file) == "1"
    proxy.drop_replies(lambda args: args[0].upper() == b"GET")
    c.send("INCR", "h")  # counted in order after the release: not held, not dropped
    assert _read_reply(c.file) == 2
    c.close()


def test_blackhole_holds_everything_until_it_heals(proxy, redis):
    c = Client(proxy.port, timeout=0.3)
    assert c.call("PING") == "PONG"
    proxy.blackhole()
    c.send("SET", "late", "1")
    with pytest.raises(TimeoutError):
        _read_reply(c.file)
    fresh = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)  # accepted
    assert redis.command("GET", "late") is None
    proxy.set_pass()
    deadline = time.monotonic() + 5
    while redis.command("GET", "late") != "1":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fresh.close()


def test_reset_and_delay(proxy, redis):
    c = Client(proxy.port)
    assert c.call("PING") == "PONG"
    proxy.reset()
    with pytest.raises(ConnectionError):
        c.call("PING")
    with pytest.raises(ConnectionError):
        Client(proxy.port).call("PING")
    proxy.delay(0.3)
    started = time.monotonic()
    assert Client(proxy.port).call("PING") == "PONG"
    assert time.monotonic() - started >= 0.6  # both ways

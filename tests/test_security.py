"""Every link encrypted: the GC-facing gRPC server over TLS and mutual TLS,
Redis over TLS (plain and under Sentinel) with an ACL user limited to what the
MC needs; what the configuration accepts and refuses, and the warning of a
plaintext server. Real grpcio, real redis-server, a test CA."""

import re
import shutil
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent

from mc.config import parse_redis_url
from mc.errors import ConfigError
from mc.gc.grpcserver import GrpcServerService, ServerTls
from mc.redis import scripts
from mc.redis.store import RedisFencedStore
from mc.testing.certs import CertificateAuthority
from mc.testing.daemon import wait_for
from mc.testing.doubles import static_token_check
from mc.testing.fakegc import assign_meeting
from mc.testing.redisproc import RedisProcess, SentinelProcess
from mc.tree import MeetingController
from tests.configs import TEST_GC_TOKEN, make_config
from tests.helpers import wait_until

MH = [("mh-1", "https://mh-1.example:4433", "")]
ASSIGNMENT = {"primary_mh_id": "mh-a", "primary_endpoint": "https://mh-a.example:4433",
              "backup_mh_id": None, "backup_endpoint": None, "assigned_at": 1700000000}
ACL_PASSWORD = "acl-pw-Vq93kd"
#: What the MC's Python side sends: the probe, txredisapi's SELECT, the
#: Sentinel role check, the scripts, plain reads and the marker, WAIT and
#: the subscription.
CLIENT_COMMANDS = {"ping", "select", "role", "evalsha", "script|load", "get", "wait",
                   "subscribe", "info"}
#: What the Lua scripts call, read from their source so the ACL follows them.
SCRIPT_COMMANDS = {c.lower() for script in scripts.ALL
                   for c in re.findall(r"redis\.p?call\('([A-Za-z]+)'", script.source)}
#: The ACL the README gives the MC's user: its keys, its one channel, and the
#: commands it and its scripts run, nothing more.
MC_ACL = ("on", f">{ACL_PASSWORD}", "resetkeys", "~meeting:*", "~mc:*", "resetchannels",
          "&mc:*:lost", "-@all", *sorted(f"+{c}" for c in CLIENT_COMMANDS | SCRIPT_COMMANDS))
README = Path(__file__).resolve().parent.parent / "README.md"


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs: ``ca`` signs the servers and the GC, ``other`` is a stranger."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(d, "ca"), CertificateAuthority(d, "other-ca")
    return {"ca": ca, "other": other, "server": ca.issue("server"), "gc": ca.issue("gc"),
            "stranger": other.issue("stranger")}


@pytest.fixture(scope="module")
def tls_redis(pki):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    server = pki["server"]
    redis = RedisProcess(tls=(server.cert_path, server.key_path, pki["ca"].cert_path)).start()
    redis.command("ACL", "SETUSER", "mc", *MC_ACL)
    yield redis
    redis.cleanup()


def acl_url(redis, user="mc", password=ACL_PASSWORD):
    return f"rediss://{user}:{password}@127.0.0.1:{redis.port}/0"


def logged(events, level=None):
    return [formatEvent(e) for e in events if level is None or e["log_level"] == level]


# --- configuration -------------------------------------------------------------


def test_grpc_tls_makes_the_advertised_url_https(pki):
    server = pki["server"]
    c = make_config(environ={"MC_GRPC_ADVERTISE_URL": ""}, grpc_tls_cert=server.cert_path,
                    grpc_tls_key=server.key_path)
    assert c.grpc_tls and c.grpc_advertise.startswith("https://")
    assert not make_config().grpc_tls


@pytest.mark.parametrize("flags, environ, option", [
    ({"grpc_tls_cert": "server"}, {"MC_GRPC_ADVERTISE_URL": ""}, "MC_GRPC_TLS_KEY_PATH"),
    ({"grpc_tls_key": "key"}, {}, "MC_GRPC_TLS_CERT_PATH"),
    ({"grpc_tls_client_ca": "ca"}, {}, "MC_GRPC_TLS_CLIENT_CA_PATH"),
    ({"grpc_tls_cert": "server", "grpc_tls_key": "key"}, {}, "MC_GRPC_ADVERTISE_URL"),
    ({"grpc_tls_cert": "server", "grpc_tls_key": "key",
      "grpc_advertise": "https://mc.example:1"}, {"MC_INSECURE_NO_TLS": "1"}, "--insecure-no-tls"),
    ({"redis_ca": "ca"}, {}, "MC_REDIS_CA_PATH"),
    ({"grpc_tls_cert": "/nonexistent.pem", "grpc_tls_key": "key"}, {}, "MC_GRPC_TLS_CERT_PATH"),
])
def test_tls_settings_that_make_no_sense_are_refused(pki, flags, environ, option):
    paths = {"server": pki["server"].cert_path, "key": pki["server"].key_path,
             "ca": pki["ca"].cert_path}
    flags = {k: paths.get(v, v) for k, v in flags.items()}
    # make_config advertises http://: TLS needs https:// unless the test says otherwise.
    with pytest.raises(ConfigError, match=f"^{option}"):
        make_config(environ=environ, **flags)


def test_redis_urls_with_tls_user_and_sentinel():
    t = parse_redis_url("REDIS_URL", "rediss://mc:pw@redis.example:6380/2")
    assert (t.tls, t.username, t.password.reveal(), t.port, t.db) == (True, "mc", "pw", 6380, 2)
    assert str(t) == "rediss://mc:<redacted>@redis.example:6380/2"
    s = parse_redis_url("REDIS_URL", "rediss+sentinel://mc:pw@h1,h2:26380/primary/1")
    assert s.tls and s.sentinels == (("h1", 26379), ("h2", 26380)) and s.service == "primary"
    assert str(s) == "rediss+sentinel://mc:<redacted>@h1:26379,h2:26380/primary/1"
    assert not parse_redis_url("REDIS_URL", "redis+sentinel://h1/primary").tls


@pytest.mark.parametrize("mode, warned", [("plaintext", True), ("meant", False),
                                          ("tls", False)])
def test_a_plaintext_grpc_server_warns_at_start_unless_meant(pki, events, mode, warned):
    environ, flags = {}, {}
    if mode == "meant":
        environ["MC_INSECURE_NO_TLS"] = "yes"
    elif mode == "tls":
        flags = dict(grpc_tls_cert=pki["server"].cert_path, grpc_tls_key=pki["server"].key_path,
                     grpc_advertise="https://mc.example:50052")
    root = MeetingController(make_config(environ=environ, **flags), reactor)
    root.startService()  # no children: only the start-up checks run
    warnings = [w for w in logged(events, LogLevel.warn) if "plaintext" in w]
    assert bool(warnings) == warned


# --- gRPC over TLS ---------------------------------------------------------------


class Assignments:
    """Accepts every assignment."""

    def assign(self, meeting_id, mh, gc_id):
        return defer.succeed((True, None))


@pytest_twisted.async_yield_fixture
async def grpc_server(pki):
    """``start(mutual=False)``: a started gRPC server with the CA's server
    certificate (mutual: the GC must show one of the CA's)."""
    started = []

    def start(mutual=False):
        server = pki["server"]
        tls = ServerTls(server.cert_path, server.key_path,
                        pki["ca"].cert_path if mutual else None)
        service = GrpcServerService("127.0.0.1:0", Assignments(),
                                    static_token_check(make_config().gc_tokens, reactor),
                                    reactor, grace=0.5,
                                    tls=tls)
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stopService()


def call(port, client=None, scheme="https", ca=None):
    """AssignMeetingWithMh as the GC makes it, in a thread; ``client``: the
    certificate the GC presents."""
    tls = {}
    if ca is not None:
        tls["root_certificates"] = read(ca)
    if client is not None:
        tls.update(private_key=read(client.key_path), certificate_chain=read(client.cert_path))
    return threads.deferToThread(assign_meeting, f"{scheme}://127.0.0.1:{port}", "m-1", MH,
                                 TEST_GC_TOKEN, timeout=5, **tls)


async def refused(d):
    with pytest.raises(grpc.RpcError) as info:
        await d
    return info.value.code()


@pytest_twisted.ensureDeferred
async def test_grpc_over_tls_and_never_in_plaintext(pki, grpc_server):
    server = grpc_server()
    assert (await call(server.port, ca=pki["ca"].cert_path)).accepted
    assert await refused(call(server.port, scheme="http")) == grpc.StatusCode.UNAVAILABLE
    # A GC that trusts another CA does not take this server for the MC.
    assert await refused(call(server.port, ca=pki["other"].cert_path)) == \
        grpc.StatusCode.UNAVAILABLE


@pytest_twisted.ensureDeferred
async def test_mutual_tls_asks_the_gc_for_a_certificate_of_its_ca(pki, grpc_server):
    server = grpc_server(mutual=True)
    ca = pki["ca"].cert_path
    assert (await call(server.port, client=pki["gc"], ca=ca)).accepted
    assert await refused(call(server.port, ca=ca)) == grpc.StatusCode.UNAVAILABLE
    assert await refused(call(server.port, client=pki["stranger"], ca=ca)) == \
        grpc.StatusCode.UNAVAILABLE


def test_bad_grpc_certificate_files_are_named_and_never_shown(pki, tmp_path):
    server, stranger = pki["server"], pki["stranger"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a pem SECRET-BYTES")
    cases = [
        (ServerTls(str(garbage), server.key_path), "MC_GRPC_TLS_CERT_PATH"),
        (ServerTls(server.cert_path, str(garbage)), "MC_GRPC_TLS_KEY_PATH"),
        (ServerTls(server.cert_path, stranger.key_path), "MC_GRPC_TLS_KEY_PATH"),
        (ServerTls(server.cert_path, server.key_path, str(garbage)),
         "MC_GRPC_TLS_CLIENT_CA_PATH"),
        (ServerTls(server.cert_path, str(tmp_path / "missing.pem")), "MC_GRPC_TLS_KEY_PATH"),
    ]
    key_pem = read(stranger.key_path).decode()
    for tls, option in cases:
        with pytest.raises(ConfigError) as info:
            tls.load()
        assert info.value.option == option
        assert "SECRET-BYTES" not in str(info.value) and key_pem[40:80] not in str(info.value)


# --- Redis over TLS, as an ACL user --------------------------------------------


@pytest_twisted.async_yield_fixture
async def tls_store(pki):
    """``await tls_store(url, ca=...)``: a started store; stopped at teardown."""
    stores = []

    async def make(url, ca=pki["ca"].cert_path, connect=True):
        target = replace(parse_redis_url("REDIS_URL", url), ca_path=ca)
        store = RedisFencedStore(target, reactor)
        stores.append(store)
        store.startService()
        if connect:
            await wait_until(lambda: store.connected, timeout=10, what="the store to connect")
        return store

    yield make
    for store in stores:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_redis_over_tls_as_a_user_limited_to_what_the_mc_needs(tls_redis, tls_store):
    tls_redis.command("FLUSHALL")
    a = await tls_store(acl_url(tls_redis))
    b = await tls_store(acl_url(tls_redis))
    heard = []
    a.listen("mc-a", lambda: heard.append(1))
    await wait_until(lambda: heard, timeout=5, what="the subscription")
    assert await a.news("mc-a") == (False, [])
    g = await a.claim_and_write("m1", "mc-a", ASSIGNMENT, {"n": 1})
    assert await a.write_state("m1", g, "mc-a", {"n": 2}) == g
    assert await a.write_assignment("m1", g, "mc-a", ASSIGNMENT) == g
    assert await a.reassert("m1", g, "mc-a", ASSIGNMENT, {"n": 3}) == g
    assert await a.read_generation("m1") == g
    assert await a.read_assignment("m1") == ASSIGNMENT
    b1 = await b.claim_and_write("m1", "mc-b", ASSIGNMENT, {})
    await wait_until(lambda: len(heard) == 2, timeout=5, what="the news of a lost meeting")
    intact, lost = await a.news("mc-a")
    assert intact and lost == [("m1", b1)]
    assert await a.forget_news("mc-a", lost) == 1
    assert await b.delete("m1", b1, "mc-b") == b1
    # And nothing more: no other key, no other command.
    for command in (("GET", "other:key"), ("FLUSHALL",), ("CONFIG", "GET", "*"),
                    ("KEYS", "*")):
        assert tls_redis.command("ACL", "DRYRUN", "mc", *command) != "OK", command


def test_the_readme_gives_the_acl_the_mc_needs():
    lines = [line for line in README.read_text().splitlines()
             if line.startswith("ACL SETUSER mc ")]
    assert len(lines) == 1, "the README's Security section gives the ACL"
    assert set(lines[0].split()[3:]) == set(MC_ACL) - {f">{ACL_PASSWORD}"} | {">PASSWORD"}


@pytest_twisted.ensureDeferred
async def test_tls_redis_is_verified_and_a_wrong_password_refused(tls_redis, tls_store,
                                                                  pki, events):
    unknown = await tls_store(acl_url(tls_redis), ca=pki["other"].cert_path, connect=False)
    wrong = await tls_store(acl_url(tls_redis, password="not-the-password"), connect=False)
    await wait_until(lambda: any("set-up failed" in m for m in logged(events)),
                     timeout=10, what="the refusal of a wrong password")
    await deferLater(reactor, 1.0, lambda: None)  # time enough to connect, were it allowed
    assert not unknown.connected and not wrong.connected
    assert not any("not-the-password" in m or ACL_PASSWORD in m for m in logged(events))


@pytest.fixture
def tls_sentinel(pki, tls_redis):
    tls = (pki["server"].cert_path, pki["server"].key_path, pki["ca"].cert_path)
    sentinel = SentinelProcess(tls_redis, quorum=1, tls=tls).start()
    wait_for(lambda: sentinel.primary_port() == tls_redis.port, 10, what="the sentinel")
    yield sentinel
    sentinel.cleanup()


@pytest_twisted.ensureDeferred
async def test_redis_over_tls_under_sentinel(tls_redis, tls_sentinel, tls_store):
    url = f"rediss+sentinel://mc:{ACL_PASSWORD}@127.0.0.1:{tls_sentinel.port}/mymaster/0"
    store = await tls_store(url)
    assert await store.claim_and_write("s1", "mc-a", ASSIGNMENT, {}) >= 1
    assert tls_redis.command("GET", "meeting:s1:generation") is not None

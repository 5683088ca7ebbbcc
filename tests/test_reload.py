"""SIGHUP reads every secret and certificate file again: new calls,
connections and sessions use the new ones, those in flight are not cut; a
file that no longer parses keeps the old value and is named in an error that
never shows its content; a rotated binding secret still verifies the
tokens it signed while participants hold them. Clock-driven units, the gRPC
server in-process on the real reactor, and a real ``twistd mc`` sent SIGHUP."""

import base64
import shutil
import signal
import time
from types import SimpleNamespace

import grpc
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent

from mc.binding import BindingKeys
from mc.config import Secret, SecretFile
from mc.errors import ConfigError
from mc.gc.auth import TokenCheck
from mc.gc.grpcserver import GrpcServerService, ServerTls
from mc.ops.lifecycle import Lifecycle
from mc.ops.metrics import Metrics
from mc.ops.reload import BindingRotation, Reloadable, Reloader
from mc.proto import gc_mc_pb2 as pb
from mc.proto import gc_mc_pb2_grpc
from mc.testing.certs import CertificateAuthority, write_self_signed
from mc.testing.daemon import wait_for
from mc.testing.doubles import static_token_check
from mc.testing.fakegc import FakeGc, assign_meeting
from mc.testing.participant import SyncParticipant
from mc.testing.wtclient import connect
from tests.configs import make_config
from tests.conftest import E2E_SERVICE_TOKEN
from tests.helpers import wait_until

MH = [("mh-1", "https://mh-1.example:4433", "")]
OLD, NEW = b"o" * 32, b"n" * 32


def b64(raw):
    return base64.b64encode(raw).decode()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def copy(pair, onto):
    """Rotate the certificate files of ``onto`` to ``pair``'s content."""
    shutil.copyfile(pair.cert_path, onto.cert_path)
    shutil.copyfile(pair.key_path, onto.key_path)


# --- the binding secret, on a Clock ----------------------------------------------


def test_a_rotated_binding_secret_signs_and_older_proofs_still_verify():
    joins = SimpleNamespace(binding=BindingKeys(OLD))
    rotation = BindingRotation(joins, Secret(OLD))
    token, proof = joins.binding.issue("m", "c", "p")
    before = joins.binding
    rotation.rotate(Secret(OLD))
    assert joins.binding is before, "the same secret is no rotation"
    rotation.rotate(Secret(NEW))
    rotation.rotate(Secret(b"3" * 32))
    assert proof.verify(token, "c", "p"), "a reconnect across any number of rotations"
    fresh, fresh_proof = joins.binding.issue("m", "c", "p")
    _, by_third = BindingKeys(b"3" * 32).issue("m", "c", "p")
    assert fresh_proof._key == by_third._key, "the newest signs"
    assert not fresh_proof.verify(token, "c", "p")
    assert "redacted" in repr(rotation) and "redacted" in repr(proof)


# --- the reloader, with reads made inline ---------------------------------------


def reloader_of(*reloadables, in_thread=defer.maybeDeferred):
    metrics = Metrics()
    reloader = Reloader(reloadables, Clock(), metrics, in_thread=in_thread)
    reloader.startService()
    return reloader, metrics


def count(metrics, outcome):
    return metrics.config_reloads.labels(outcome)._value.get()


def test_a_file_that_no_longer_parses_keeps_the_old_value(tmp_path, events):
    path = tmp_path / "tokens"
    path.write_text("first-token")
    source = SecretFile("gc_tokens", "MC_GC_TOKENS_FILE", str(path))
    applied = []
    reloader, metrics = reloader_of(Reloadable("MC_GC_TOKENS_FILE", source.read, applied.append))

    reloader.reload()
    assert [t.reveal() for t in applied[-1]] == ["first-token"]
    assert count(metrics, "ok") == 1

    path.write_bytes(b"\xff\xfe not-utf8 SECRET-CONTENT")
    reloader.reload()
    path.write_text("")
    reloader.reload()
    path.unlink()
    reloader.reload()
    assert len(applied) == 1 and count(metrics, "error") == 3
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 3 and all("MC_GC_TOKENS_FILE" in e for e in errors)
    assert not any("SECRET-CONTENT" in e or "first-token" in e for e in errors)


def test_each_setting_is_judged_alone_and_never_shows_its_content(events):
    applied = []

    def broken():
        raise UnicodeDecodeError("utf-8", b"SECRET-CONTENT", 0, 1, "bad")

    def refused():
        raise ConfigError("MC_TLS_KEY_PATH", "/x holds no unencrypted PEM private key")

    reloader, metrics = reloader_of(
        Reloadable("A", lambda: "a", applied.append), Reloadable("B", broken, applied.append),
        Reloadable("C", refused, applied.append), Reloadable("D", lambda: "d", applied.append))
    reloader.reload()
    assert applied == ["a", "d"] and count(metrics, "error") == 1
    text = "\n".join(formatEvent(e) for e in events)
    assert "B keeps its previous value: UnicodeDecodeError" in text
    assert "C keeps its previous value: MC_TLS_KEY_PATH: /x holds no" in text
    assert "2 of 4 secret and certificate settings read again" in text
    assert "SECRET-CONTENT" not in text


def test_a_reload_asked_for_during_one_runs_once_after_it():
    reads, stopped = [], []

    def in_thread(fn):
        reads.append(defer.Deferred())
        return reads[-1]

    reloader, metrics = reloader_of(
        Reloadable("A", lambda: "a", lambda value: None, stop=lambda: stopped.append(1)),
        in_thread=in_thread)
    first, second, third = reloader.reload(), reloader.reload(), reloader.reload()
    assert len(reads) == 1 and not first.called
    reads[0].callback([])
    assert len(reads) == 2 and not first.called, "one more for the two that came meanwhile"
    reads[1].callback([])
    assert first.called and second.called and third.called and len(reads) == 2
    assert count(metrics, "ok") == 2
    reloader.stopService()
    assert stopped == [1], "what a rotation left pending is cancelled at stop"


def test_sighup_reloads_and_still_reopens_the_log():
    """The lifecycle's handler only schedules the reload, then runs the
    handler it replaced (the log file's reopen, for ``systemctl reload``)."""
    reactor_ = MemoryReactorClock()
    reactor_.callFromThread = lambda f, *a, **kw: f(*a, **kw)
    reloads, reopened, handlers = [], [], {}

    def install(signum, handler):
        previous = handlers.get(signum, signal.SIG_DFL)
        handlers[signum] = handler
        return previous

    signals = SimpleNamespace(SIGTERM=signal.SIGTERM, SIGINT=signal.SIGINT,
                              SIGUSR2=signal.SIGUSR2, SIGHUP=signal.SIGHUP, signal=install)
    install(signal.SIGHUP, lambda signum, frame: reopened.append(signum))
    lifecycle = Lifecycle(make_config(), reactor_, None, None, None, None, None,
                          signals=signals, reload=lambda: reloads.append(1))
    lifecycle.startService()
    for hook in reactor_.whenRunningHooks:
        hook[0](*hook[1], **hook[2])
    handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert reloads == [1] and reopened == [signal.SIGHUP]
    lifecycle.stopService()
    handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert reloads == [1], "the previous handler is back once stopped"


# --- the gRPC server in-process: a call in flight across a rotation --------------


class Held:
    """Assignments held until the test says, while ``hold`` is true."""

    def __init__(self):
        self.hold = True
        self.calls = []

    def assign(self, meeting_id, mh, gc_id):
        d = defer.Deferred()
        self.calls.append(d)
        if not self.hold:
            d.callback((True, None))
        return d


def assignment(channel, token):
    request = pb.AssignMeetingWithMhRequest(
        meeting_id="m-1", requesting_gc_id="gc", mh_assignments=[
            pb.MhAssignment(mh_id="mh-1", webtransport_endpoint="https://mh-1.example:4433")])
    stub = gc_mc_pb2_grpc.MeetingControllerServiceStub(channel)
    return threads.deferToThread(stub.AssignMeetingWithMh, request, timeout=5,
                                 metadata=(("authorization", "Bearer " + token),))


def tls_channel(port, ca_path):
    return grpc.secure_channel(f"127.0.0.1:{port}",
                               grpc.ssl_channel_credentials(read(ca_path)))


async def code_of(d):
    with pytest.raises(grpc.RpcError) as info:
        await d
    return info.value.code()


@pytest_twisted.ensureDeferred
async def test_tokens_and_certificate_rotate_with_a_call_in_flight(tmp_path):
    ca, other = CertificateAuthority(tmp_path, "ca"), CertificateAuthority(tmp_path, "other")
    served = ca.issue("served")
    tokens = tmp_path / "gc-tokens"
    tokens.write_text("old-token")
    source = SecretFile("gc_tokens", "MC_GC_TOKENS_FILE", str(tokens))
    held = Held()
    tls = ServerTls(served.cert_path, served.key_path)
    server = GrpcServerService("127.0.0.1:0", held, static_token_check(source.read(), reactor),
                               reactor,
                               grace=0.5, tls=tls)
    reloader = Reloader([
        Reloadable("MC_GC_TOKENS_FILE", source.read,
                   lambda t: server.use_authorizer(server.authorizer.with_static(TokenCheck(t)))),
        Reloadable("MC_GRPC_TLS_CERT_PATH / MC_GRPC_TLS_KEY_PATH", tls.load,
                   server.use_certificates)], reactor, Metrics())
    server.startService()
    reloader.startService()
    before = tls_channel(server.port, ca.cert_path)
    try:
        in_flight = assignment(before, "old-token")
        await wait_until(lambda: held.calls, timeout=5, what="the call to reach the MC")

        tokens.write_text("new-token")
        copy(other.issue("rotated"), served)
        await reloader.reload()
        held.hold = False

        with tls_channel(server.port, other.cert_path) as after:
            assert (await assignment(after, "new-token")).accepted
            assert await code_of(assignment(after, "old-token")) == \
                grpc.StatusCode.UNAUTHENTICATED
        with tls_channel(server.port, ca.cert_path) as stale:
            assert await code_of(assignment(stale, "new-token")) == \
                grpc.StatusCode.UNAVAILABLE, "a new connection gets the new certificate"
        assert (await assignment(before, "new-token")).accepted, "an open connection stays"
        held.calls[0].callback((True, None))
        assert (await in_flight).accepted, "the call in flight was not cut"
    finally:
        before.close()
        reloader.stopService()
        await server.stopService()


# --- a real twistd mc, sent SIGHUP ------------------------------------------------

NEW_SERVICE_TOKEN = "rotated-service-token-X4"
OLD_GC_TOKEN, NEW_GC_TOKEN = "gc-token-before-R1", "gc-token-after-R2"


@pytest.fixture
def fake_gc():
    """A GC that accepts the MC's service token before and after rotation."""
    gc = FakeGc([E2E_SERVICE_TOKEN, NEW_SERVICE_TOKEN])
    gc.set_intervals(1000, 3000)
    gc.start()
    yield gc
    gc.stop()


class Files:
    """Every file SIGHUP reads, with their first contents; ``args`` and
    ``env`` point an MC at them."""

    def __init__(self, directory):
        self.dir = directory
        self.service_token = directory / "service-token"
        self.gc_tokens = directory / "gc-tokens"
        self.binding = directory / "binding-secret"
        self.service_token.write_text(E2E_SERVICE_TOKEN)
        self.gc_tokens.write_text(OLD_GC_TOKEN)
        self.binding.write_text(b64(OLD))
        self.grpc = write_self_signed(directory, name="grpc")
        self.args = ["--service-token-file", str(self.service_token),
                     "--gc-tokens-file", str(self.gc_tokens),
                     "--binding-token-secret-file", str(self.binding)]
        # SIGHUP alone: the watcher would reload as soon as a file is written
        # (tests/test_rotation.py tests that).
        self.env = {"MC_GRPC_TLS_CERT_PATH": self.grpc.cert_path,
                    "MC_GRPC_TLS_KEY_PATH": self.grpc.key_path, "MC_FILE_WATCH": "off"}


def assign(mc, token, ca_path, meeting_id="rl-1"):
    return assign_meeting(mc.grpc_url, meeting_id, MH, token, timeout=5,
                          root_certificates=read(ca_path))


def sighup_and_wait(mc, nth):
    mc.signal(signal.SIGHUP)
    wait_for(lambda: mc.log().count("secret and certificate settings read again") >= nth, 10,
             what="the reload")


def wt_handshake(loop, mc, ca_file):
    """A new QUIC connection that trusts only ``ca_file``."""
    async def handshake():
        client = await connect("127.0.0.1", mc.wt_port, ca_file=ca_file, timeout=2)
        await client.close(0, 2)
    loop.run(handshake, timeout=5)


def test_sighup_rotates_every_file_with_calls_and_sessions_in_flight(
        mc_procs, fake_gc, loop, tmp_path):
    files = Files(tmp_path)
    mc = mc_procs(args=files.args, env={**files.env, "MC_DISCONNECT_GRACE_PERIOD_SECONDS": "2"})
    wait_for(mc.ready, 20, what="MC ready")
    old_grpc, old_wt = tmp_path / "old-grpc.pem", tmp_path / "old-wt.pem"
    shutil.copyfile(files.grpc.cert_path, old_grpc)
    shutil.copyfile(mc.cert.cert_path, old_wt)
    assert assign(mc, OLD_GC_TOKEN, old_grpc).accepted
    ann = SyncParticipant.join(loop, mc.wt_url, "rl-1", fake_gc.issuer.mint("rl-1", "u-ann"),
                               "Ann")
    bob = SyncParticipant.join(loop, mc.wt_url, "rl-1", fake_gc.issuer.mint("rl-1", "u-bob"),
                               "Bob")
    ann.expect("participant_joined")
    # A heartbeat the GC holds is in flight while the files change.
    sent = len(fake_gc.heartbeats())
    fake_gc.set_delay(1.0)
    fake_gc.wait_for(lambda: len(fake_gc.heartbeats()) > sent)

    files.service_token.write_text(NEW_SERVICE_TOKEN)
    files.gc_tokens.write_text(NEW_GC_TOKEN)
    files.binding.write_text(b64(NEW))
    copy(write_self_signed(tmp_path, name="grpc-2"), files.grpc)
    copy(write_self_signed(tmp_path, name="wt-2"), mc.cert)
    sighup_and_wait(mc, 1)
    rotated = time.monotonic()
    fake_gc.set_delay(0)
    assert fake_gc.heartbeats()[sent].metadata["authorization"] == \
        "Bearer " + E2E_SERVICE_TOKEN

    # The GC's calls: the new token on new connections with the new certificate.
    assert assign(mc, NEW_GC_TOKEN, files.grpc.cert_path).accepted
    with pytest.raises(grpc.RpcError) as refused:
        assign(mc, OLD_GC_TOKEN, files.grpc.cert_path)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as stale:
        assign(mc, NEW_GC_TOKEN, old_grpc)
    assert stale.value.code() == grpc.StatusCode.UNAVAILABLE
    # The MC's calls: the new service token from the next one on; none failed.
    fake_gc.wait_for(lambda: any(h.metadata["authorization"] == "Bearer " + NEW_SERVICE_TOKEN
                                 for h in fake_gc.heartbeats()), timeout=5)
    assert mc.metric("mc_gc_heartbeat_consecutive_failures") == 0.0
    # Participants: new connections see the new certificate, sessions open stay,
    # and a reconnect with a binding token of the old secret still works, the
    # rotation older than the grace.
    wt_handshake(loop, mc, mc.cert.cert_path)
    with pytest.raises(ConnectionError):
        wt_handshake(loop, mc, str(old_wt))
    wait_for(lambda: time.monotonic() - rotated > 2.5, 5, what="the rotation to age past the grace")
    bob.vanish()
    placed = fake_gc.issuer.mint("rl-1", "u-bob")
    again = SyncParticipant.join(loop, mc.wt_url, "rl-1", placed, "Bob",
                                 correlation_id=bob.joined.correlation_id,
                                 binding_token=bob.joined.binding_token)
    assert again.joined is not None, [m.error for m in again.messages]
    assert again.joined.participant_id == bob.joined.participant_id
    carl = SyncParticipant.join(loop, mc.wt_url, "rl-1", fake_gc.issuer.mint("rl-1", "u-carl"),
                                "Carl")
    assert carl.joined is not None
    heard = ann.expect("participant_joined").participant_joined.participant.name
    assert heard == "Carl", "Ann's session, open across the rotation, still hears"
    assert mc.metric('mc_config_reloads_total{outcome="ok"}') == 1.0
    log = mc.log()
    assert "binding secret rotated" in log
    for secret in (E2E_SERVICE_TOKEN, NEW_SERVICE_TOKEN, OLD_GC_TOKEN, NEW_GC_TOKEN):
        assert secret not in log


def test_sighup_with_files_that_no_longer_parse_keeps_the_old_values(
        mc_procs, fake_gc, tmp_path):
    files = Files(tmp_path)
    mc = mc_procs(args=files.args, env=files.env)
    wait_for(mc.ready, 20, what="MC ready")
    grpc_ca = tmp_path / "grpc-ca.pem"
    shutil.copyfile(files.grpc.cert_path, grpc_ca)

    files.gc_tokens.write_text("GARBAGE with spaces and \x01 control")
    files.binding.write_text("GARBAGE-not-base64!")
    files.service_token.write_text("")
    with open(files.grpc.key_path, "w") as f:
        f.write("GARBAGE-KEY")
    with open(mc.cert.cert_path, "w") as f:
        f.write("GARBAGE-CERT")
    sighup_and_wait(mc, 1)

    assert assign(mc, OLD_GC_TOKEN, grpc_ca).accepted, "the old token and certificate serve"
    log = mc.log()
    refusals = [line for line in log.splitlines() if "keeps its previous value" in line]
    assert len(refusals) == 5, refusals
    for option in ("--gc-tokens-file", "--binding-token-secret-file", "--service-token-file",
                   "MC_GRPC_TLS_KEY_PATH", "MC_TLS_CERT_PATH"):
        assert any(option in line for line in refusals), option
    assert "GARBAGE" not in log
    assert mc.metric('mc_config_reloads_total{outcome="error"}') == 1.0
    fake_gc.wait_for(lambda: fake_gc.heartbeats()[-1:] and all(
        h.status == "OK" for h in fake_gc.heartbeats()[-2:]), timeout=5)

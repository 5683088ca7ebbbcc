"""A real browser in a real meeting: headless Chromium opens the participant
page, which joins ``twistd mc`` over WebTransport (the MC's test certificate
pinned with ``serverCertificateHashes``) with a token from the fake GC's join
flow, mutes and leaves while a Python participant watches, and the GC's
heartbeats count it."""

import datetime
import ipaddress
import os
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mc.proto import signaling_pb2 as pb
from mc.testing.browser import CHROMIUM, BrowserParticipant, decode, run_page
from mc.testing.certs import certificate_sha256
from mc.testing.participant import LoopThread
from mc.testing.redisproc import free_port
from tests.test_participants import assignable, join, participants_heartbeat


@pytest.fixture(scope="module", autouse=True)
def chromium():
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no Chromium at {CHROMIUM} (make test installs it)")


@pytest.fixture
def loop():
    thread = LoopThread()
    yield thread
    thread.stop()


def test_the_mc_certificate_fits_chromium_hash_pinning(mc_procs):
    mc = mc_procs()
    with open(mc.cert.cert_path, "rb") as f:
        c = x509.load_pem_x509_certificate(f.read())
    assert c.not_valid_after_utc - c.not_valid_before_utc < datetime.timedelta(days=14)
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert c.public_key().curve.name == "secp256r1"
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert mc.cert.sha256 == certificate_sha256(mc.cert.cert_path)
    assert os.stat(mc.cert.key_path).st_mode & 0o077 == 0


def test_a_browser_joins_mutes_and_leaves(mc_procs, fake_gc, loop):
    page_port = free_port()
    mc = mc_procs(env={"MC_WEBTRANSPORT_ALLOWED_ORIGINS": f"http://127.0.0.1:{page_port}"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "br-1", "Ann")
    placed = fake_gc.join("br-1", "user-zoe")
    name = "Zoë 🎧"  # UTF-8 through the page's hand-written protobuf
    with BrowserParticipant(placed.webtransport_endpoint, mc.cert.sha256, "br-1", placed.token,
                            name, page_port=page_port) as browser:
        response = decode(browser.wait_for("join_response")).join_response
        assert response.user_id == 2
        assert [p.name for p in response.existing_participants] == ["Ann"]
        joined = ann.expect("participant_joined", timeout=10).participant_joined.participant
        assert (joined.participant_id, joined.name) == (response.participant_id, name)
        participants_heartbeat(fake_gc, 2)  # the GC sees the browser's join

        browser.mute(audio=True, video=False)
        update = ann.expect("participant_mute_update", timeout=10).participant_mute_update
        assert (update.participant_id, update.audio_self_muted) == (response.participant_id, True)
        browser.leave()
        left = ann.expect("participant_left", timeout=10).participant_left
        assert (left.participant_id, left.reason) == (response.participant_id, pb.VOLUNTARY)
    participants_heartbeat(fake_gc, 1)


def test_a_browser_sees_the_error_before_the_close(mc_procs, fake_gc):
    """Chromium drops stream data its page has not read when the session
    closes: the MC's close waits until the error was delivered."""
    mc = mc_procs()
    assignable(fake_gc, mc)
    token = fake_gc.issuer.mint("br-nowhere", "user-1")
    result = run_page(mc.wt_url, mc.cert.sha256, "br-nowhere", token, "Di")
    assert result["kinds"] == ["error"]
    assert decode(result["messages"][0]).error.code == pb.NOT_FOUND
    assert result["closed"]["clean"] is True, result["closed"]

"""Headless Chromium speaks the signalling contract over WebTransport.

For now against a stand-in: a minimal aioquic WebTransport server in this
process (its own asyncio loop on a thread) that accepts the CONNECT, decodes
what the page sends with the MC's generated ``ClientMessage`` and answers a
``JoinResponse``. That proves the harness (certificate pinning, the page's
hand-encoded frames, event reporting, cleanup); pointing it at ``twistd mc``
needs only the MC's URL and certificate hash.
"""

import asyncio
import datetime
import functools
import hashlib
import ipaddress
import os
import shutil
import struct
import threading
import time

import pytest
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mc.proto import signaling_pb2 as pb
from mc.testing.browser import CHROMIUM, BrowserParticipant, decode, run_page
from mc.testing.certs import certificate_sha256, write_self_signed

# Seconds between the stand-in's ErrorMessage (and FIN) and its session close.
CLOSE_AFTER_ERROR = 0.05

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM}")


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` (state the stand-in's thread updates) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class _StandInProtocol(QuicConnectionProtocol):
    """One QUIC connection of the stand-in: HTTP/3 with WebTransport."""

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._http = None
        self._session_id = None
        self._buffers = {}

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated):
            self._http = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, ConnectionTerminated):
            self._owner.note("terminated", event.error_code)
        if self._http is not None:
            for h3_event in self._http.handle_event(event):
                self._h3_event(h3_event)
        self.transmit()

    def _h3_event(self, event):
        if isinstance(event, HeadersReceived):
            headers = dict(event.headers)
            if (headers.get(b":method") == b"CONNECT"
                    and headers.get(b":protocol") == b"webtransport"):
                self._owner.connects.append(headers)
                self._session_id = event.stream_id
                self._http.send_headers(event.stream_id, [
                    (b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")])
            else:
                self._http.send_headers(event.stream_id, [(b":status", b"404")],
                                        end_stream=True)
        elif isinstance(event, DataReceived):
            # Capsules on the CONNECT stream (Chromium sends a GREASE one): ignored.
            if event.stream_ended:
                self._owner.note("session_closed")
        elif isinstance(event, WebTransportStreamDataReceived):
            buf = self._buffers.get(event.stream_id, b"") + event.data
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
                n = struct.unpack("!I", buf[:4])[0]
                self._client_message(event.stream_id, pb.ClientMessage.FromString(buf[4:4 + n]))
                buf = buf[4 + n:]
            self._buffers[event.stream_id] = buf
            if event.stream_ended:
                self._owner.note("fin")

    def _client_message(self, stream_id, msg):
        self._owner.received.append(msg)
        kind = msg.WhichOneof("message")
        if kind == "join_request" and msg.join_request.meeting_id == "elsewhere":
            self._send(stream_id, pb.ServerMessage(error=pb.ErrorMessage(
                code=pb.NOT_FOUND, message="not hosted here")), end_stream=True)
            # Chromium drops stream data its page has not read yet when the
            # session close arrives with it (measured: the error is lost when
            # both leave in one flight), so the close comes a little later.
            self._loop.call_later(CLOSE_AFTER_ERROR, self._close_session)
            return
        if kind == "join_request":
            reply = pb.ServerMessage(join_response=pb.JoinResponse(participant_id="p-1"))
        elif kind == "mute_request":
            reply = pb.ServerMessage(participant_mute_update=pb.ParticipantMuteUpdate(
                participant_id="p-1", audio_self_muted=msg.mute_request.audio_muted,
                video_self_muted=msg.mute_request.video_muted))
        else:
            return
        self._send(stream_id, reply)

    def _close_session(self):
        """CLOSE_WEBTRANSPORT_SESSION capsule (code 0, reason "bye"), then FIN."""
        capsule = struct.pack("!I", 0) + b"bye"
        self._http.send_data(self._session_id, encode_uint_var(0x2843)
                             + encode_uint_var(len(capsule)) + capsule, end_stream=True)
        self.transmit()

    def _send(self, stream_id, msg, end_stream=False):
        payload = msg.SerializeToString()
        self._quic.send_stream_data(stream_id, struct.pack("!I", len(payload)) + payload,
                                    end_stream=end_stream)


class StandInServer:
    """A WebTransport server shaped like the MC's contract, on 127.0.0.1 and an
    ephemeral UDP port; records the CONNECT headers, every ``ClientMessage``
    and stream/session ends (``notes``). A join to meeting ``elsewhere`` gets
    ``ErrorMessage{NOT_FOUND}``, then the stream's FIN and the session's close,
    as the MC refuses a join."""

    def __init__(self, cert):
        self.cert = cert
        self.connects = []
        self.received = []
        self.notes = []
        self.port = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="stand-in-wt")
        self._server = None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}/"

    def note(self, what, detail=None):
        self.notes.append((what, detail))

    def start(self):
        config = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=False,
                                   max_datagram_frame_size=65536, idle_timeout=30.0)
        config.load_cert_chain(self.cert.cert_path, self.cert.key_path)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            serve("127.0.0.1", 0, configuration=config,
                  create_protocol=functools.partial(_StandInProtocol, owner=self)),
            self._loop).result(timeout=5)
        self.port = self._server._transport.get_extra_info("sockname")[1]
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return write_self_signed(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def server(cert):
    server = StandInServer(cert).start()
    yield server
    server.stop()


def test_certificate_fits_chromium_hash_pinning(cert):
    with open(cert.cert_path, "rb") as f:
        c = x509.load_pem_x509_certificate(f.read())
    assert c.not_valid_after_utc - c.not_valid_before_utc < datetime.timedelta(days=14)
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert c.public_key().curve.name == "secp256r1"
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    der = c.public_bytes(serialization.Encoding.DER)
    assert cert.sha256 == hashlib.sha256(der).digest() == certificate_sha256(cert.cert_path)
    assert os.stat(cert.key_path).st_mode & 0o077 == 0


def test_browser_joins(server, cert):
    name = "Zoë 🎧"  # UTF-8 through the page's hand-written protobuf
    started = time.monotonic()
    result = run_page(server.url, cert.sha256, "meeting-1", "tok.en.jws", name)
    elapsed = time.monotonic() - started

    assert result["errors"] == []
    assert result["kinds"] == ["join_response"]
    assert result["participant_id"] == "p-1"
    assert decode(result["messages"][0]).join_response.participant_id == "p-1"
    (join,) = server.received
    assert join.WhichOneof("message") == "join_request"
    assert (join.join_request.meeting_id, join.join_request.join_token,
            join.join_request.participant_name) == ("meeting-1", "tok.en.jws", name)
    (connect,) = server.connects
    assert connect[b":path"] == b"/"
    ready = next(e for e in result["events"] if e["type"] == "ready")
    assert connect[b"origin"].decode() == ready["origin"]
    assert elapsed < 15


def test_browser_mutes_then_leaves(server, cert):
    result = run_page(server.url, cert.sha256.hex(), "meeting-1", "t", "Ann",
                      actions=["mute", "wait_for:participant_mute_update", "leave"])

    assert result["errors"] == []
    assert result["kinds"] == ["join_response", "participant_mute_update"]
    update = decode(result["messages"][1]).participant_mute_update
    assert (update.audio_self_muted, update.video_self_muted) == (True, False)
    assert result["closed"]["clean"] is True
    assert [m.WhichOneof("message") for m in server.received] == ["join_request", "mute_request"]
    assert server.received[1].mute_request.audio_muted is True
    wait_for(lambda: ("session_closed", None) in server.notes, 5, what="the session close")


def test_browser_controlled_live(server, cert):
    with BrowserParticipant(server.url, cert.sha256, "m", "t", "Bo", correlation_id="c-1",
                            binding_token="b-1") as browser:
        assert browser.wait_for("join_response")["participant_id"] == "p-1"
        browser.mute(audio=False, video=True)
        update = decode(browser.wait_for("participant_mute_update")).participant_mute_update
        assert (update.audio_self_muted, update.video_self_muted) == (False, True)
        browser.perform("fin")
        wait_for(lambda: ("fin", None) in server.notes, 5, what="the stream's FIN")
    join = server.received[0].join_request
    assert (join.correlation_id, join.binding_token) == ("c-1", "b-1")


def test_server_error_then_close_is_reported(server, cert):
    result = run_page(server.url, cert.sha256, "elsewhere", "t", "Di", actions=["mute"])

    assert result["kinds"] == ["error"]
    error = decode(result["messages"][0]).error
    assert (error.code, error.message) == (pb.NOT_FOUND, "not hosted here")
    assert result["closed"]["clean"] is True
    assert (result["closed"]["code"], result["closed"]["reason"]) == (0, "bye")
    assert any(e["type"] == "stream_end" for e in result["events"])


def test_wrong_certificate_hash_is_reported(server, cert):
    result = run_page(server.url, bytes(32), "m", "t", "Cy", timeout=15)

    assert result["kinds"] == []
    assert [e["stage"] for e in result["errors"]] == ["ready"]
    assert server.received == []

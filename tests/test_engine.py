"""The engine seam: the private attributes the participant layer reads are
checked on real objects of the installed engine, once, at start-up."""

import pytest
from twisted.internet import reactor

from mc.config import Address
from mc.errors import ConfigError
from mc.participants import engine
from mc.participants.webtransport import WebTransportService
from mc.testing.certs import write_self_signed


def test_the_installed_engine_has_what_the_layer_reads():
    engine.check()  # raises if an attribute moved


def test_a_moved_attribute_is_named_with_the_engine_and_its_version():
    required = {**engine.REQUIRED[engine.NAME], "H3Connection": ("_stream", "_moved_away")}
    with pytest.raises(ConfigError) as e:
        engine.check(required)
    assert e.value.option == "MC_QUIC_ENGINE"
    assert f"{engine.NAME} {engine.VERSION} lacks H3Connection._moved_away" in str(e.value)
    assert "_stream," not in str(e.value)  # only what is missing


def test_start_up_stops_when_an_attribute_moved(tmp_path, monkeypatch):
    cert = write_self_signed(tmp_path)
    moved = {**engine.REQUIRED[engine.NAME], "QuicConnection": ("_streams_renamed",)}
    monkeypatch.setitem(engine.REQUIRED, engine.NAME, moved)
    service = WebTransportService(Address("127.0.0.1", 0), cert.cert_path, cert.key_path, "/",
                                  (), lambda peer: None, reactor)
    with pytest.raises(ConfigError, match="QuicConnection._streams_renamed"):
        service.startService()
    assert not service.running and service.endpoint is None

"""Configs for tests, built through the real loader so they obey every rule."""

import tempfile

from mc import config
from mc.testing.certs import write_self_signed

TEST_SERVICE_TOKEN = "svc-token-Zq81"
TEST_GC_TOKEN = "gc-token-Lm42"
#: One certificate for every test config of the session (the loader checks
#: that the files exist; the WebTransport service loads them).
_CERT_DIR = tempfile.TemporaryDirectory(prefix="mc-test-cert-")
TEST_CERT = write_self_signed(_CERT_DIR.name)
TEST_JWKS_URL = "file:///nonexistent/mc-test-jwks.json"
#: The participant side's required settings, for tests that build their own environment.
PARTICIPANT_ENV = {"MC_TLS_CERT_PATH": TEST_CERT.cert_path, "MC_TLS_KEY_PATH": TEST_CERT.key_path,
                   "AC_JWKS_URL": TEST_JWKS_URL}


def make_config(environ=None, **flags):
    """``make_config(max_meetings=3)`` -> Config; flag names use underscores."""
    env = {"MC_SERVICE_TOKEN": TEST_SERVICE_TOKEN, "MC_GC_TOKENS": TEST_GC_TOKEN,
           "MC_ID": "mc-test-1", "MC_GRPC_ADVERTISE_URL": "http://mc-test-1.example:50052",
           "MC_WEBTRANSPORT_ADVERTISE_URL": "https://mc-test-1.example:4433", **PARTICIPANT_ENV}
    env.update(environ or {})
    return config.load({k.replace("_", "-"): v for k, v in flags.items()}, env)

"""Configs for tests, built through the real loader so they obey every rule."""

from mc import config

TEST_SERVICE_TOKEN = "svc-token-Zq81"
TEST_GC_TOKEN = "gc-token-Lm42"


def make_config(environ=None, **flags):
    """``make_config(max_meetings=3)`` -> Config; flag names use underscores."""
    env = {"MC_SERVICE_TOKEN": TEST_SERVICE_TOKEN, "MC_GC_TOKENS": TEST_GC_TOKEN,
           "MC_ID": "mc-test-1", "MC_GRPC_ADVERTISE_URL": "http://mc-test-1.example:50052",
           "MC_WEBTRANSPORT_ADVERTISE_URL": "https://mc-test-1.example:4433"}
    env.update(environ or {})
    return config.load({k.replace("_", "-"): v for k, v in flags.items()}, env)

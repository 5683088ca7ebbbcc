"""Configuration: flags over environment over defaults, every rule, redaction."""

import re
import socket

import pytest
from twisted.python import usage

from mc import config as mcconfig
from mc.errors import ConfigError
from mc.tap import Options
from tests.configs import PARTICIPANT_ENV as P

BASE_ENV = {"MC_SERVICE_TOKEN": "s3cret-service", "MC_GC_TOKENS": "gc-one,gc-two", **P}


def parse(args=(), **env):
    o = Options(environ={**BASE_ENV, **env})
    o.parseOptions(list(args))
    return o.config


def test_defaults():
    c = parse()
    assert c.region == "us-east-1"
    assert c.gc_url == "http://localhost:50051" and not c.gc_tls
    assert str(c.redis) == "redis://127.0.0.1:6379/0"
    assert str(c.grpc_listen) == "0.0.0.0:50052"
    assert str(c.health_listen) == "0.0.0.0:8081"
    assert (c.max_meetings, c.max_participants) == (1000, 10000)
    assert (c.shutdown_grace, c.meeting_idle) == (30.0, 300.0)
    assert (c.log_format, c.log_level) == ("text", "info")
    assert c.quic_engine == "aioquic"
    assert c.python_gc_thresholds == (50_000, 20, 100)
    assert parse(["--python-gc-thresholds", "python"]).python_gc_thresholds is None
    assert c.service_token.reveal() == "s3cret-service"
    assert [t.reveal() for t in c.gc_tokens] == ["gc-one", "gc-two"]
    assert re.fullmatch(r"mc-[A-Za-z0-9_-]+", c.mc_id)
    assert mcconfig.ID_RE.fullmatch(c.mc_id)
    assert c.grpc_advertise.startswith("http://") and c.grpc_advertise.endswith(":50052")
    assert "0.0.0.0" not in c.grpc_advertise and "localhost" not in c.grpc_advertise
    assert c.webtransport_advertise.startswith("https://")
    assert c.webtransport_advertise.endswith(":4433")


def test_default_mc_id_is_valid_even_for_dotted_hostnames(monkeypatch):
    monkeypatch.setattr(mcconfig.socket, "gethostname", lambda: "node-7.eu.example.com")
    assert mcconfig.default_mc_id() == "mc-node-7"
    monkeypatch.setattr(mcconfig.socket, "gethostname", lambda: "node 8+x")
    assert mcconfig.default_mc_id() == "mc-node-8-x"


def test_default_mc_id_is_the_same_on_every_start_on_one_host():
    """A restarted MC must be the owner of its meetings in Redis, not a stranger."""
    assert parse().mc_id == parse().mc_id == mcconfig.default_mc_id()
    assert parse().mc_id == "mc-" + re.sub(r"[^A-Za-z0-9_-]", "-",
                                           socket.gethostname().split(".")[0])


def test_environment_and_flag_precedence():
    env = {"MC_MAX_MEETINGS": "50", "MC_REGION": "eu-west-1", "GC_GRPC_URL": "https://gc:443"}
    c = parse(["--max-meetings", "70"], **env)
    assert c.max_meetings == 70
    assert c.region == "eu-west-1"
    assert c.gc_tls and c.gc_target == "gc:443"


def test_advertise_default_follows_grpc_port():
    c = parse(["--grpc-listen", "127.0.0.1:6000"])
    assert c.grpc_advertise.endswith(":6000")


@pytest.mark.parametrize("args,env,message", [
    (["--max-meetings", "abc"], {}, "--max-meetings: 'abc' is not an integer"),
    ([], {"MC_MAX_MEETINGS": "0"}, "MC_MAX_MEETINGS: 0 is out of range"),
    ([], {"MC_MAX_PARTICIPANTS": str(2**31)}, "MC_MAX_PARTICIPANTS: 2147483648 is out of range"),
    (["--mc-id", "has.dots"], {}, "--mc-id: 'has.dots' is not a valid id"),
    ([], {"MC_ID": "x" * 256}, "MC_ID:"),
    ([], {"MC_REGION": "r" * 51}, "MC_REGION: must be 1-50 characters"),
    (["--gc-url", "ftp://gc:1"], {}, "--gc-url: 'ftp://gc:1' must start with http://"),
    (["--gc-url", "http://gc"], {}, "--gc-url: 'http://gc' must name a port"),
    (["--gc-url", "http://gc:99999"], {}, "--gc-url: 'http://gc:99999' is not a valid URL"),
    (["--redis-url", "http://r:1"], {}, "--redis-url: must look like redis://"),
    (["--redis-url", "redis://r:1/x"], {}, "--redis-url: database 'x' is not an integer"),
    (["--grpc-listen", "nohostport"], {}, "--grpc-listen: 'nohostport' is not host:port"),
    (["--health-listen", "0.0.0.0:70000"], {}, "--health-listen: port 70000 is out of range"),
    (["--grpc-advertise", "grpc://x:1"], {}, "--grpc-advertise:"),
    ([], {"MC_WEBTRANSPORT_ADVERTISE_URL": "https://"}, "MC_WEBTRANSPORT_ADVERTISE_URL:"),
    (["--shutdown-grace", "-1"], {}, "--shutdown-grace: -1 is out of range"),
    (["--meeting-idle", "soon"], {}, "--meeting-idle: 'soon' is not a number of seconds"),
    (["--log-format", "xml"], {}, "--log-format: 'xml' is not one of text, json"),
    (["--log-level", "verbose"], {}, "--log-level: 'verbose' is not one of debug, info, warn"),
    (["--gc-ca-file", "/nonexistent/ca.pem"], {}, "MC_GC_CA_FILE / --gc-ca-file: file does"),
    ([], {"MC_MH_CA_FILE": "/nonexistent/ca.pem"}, "MC_MH_CA_FILE / --mh-ca-file: file does"),
    ([], {"MC_QUIC_ENGINE": "quiche"}, "MC_QUIC_ENGINE: 'quiche' is not one of aioquic, qh3"),
    (["--python-gc-thresholds", "1,2"], {}, "--python-gc-thresholds: '1,2' is not g0,g1,g2"),
    ([], {"MC_PYTHON_GC_THRESHOLDS": "a,b,c"}, "MC_PYTHON_GC_THRESHOLDS: 'a,b,c' is not"),
    ([], {"MC_PYTHON_GC_THRESHOLDS": "0,10,10"}, "MC_PYTHON_GC_THRESHOLDS: g0 must be at"),
])
def test_bad_values_name_the_option(args, env, message):
    with pytest.raises(usage.UsageError) as e:
        parse(args, **env)
    assert str(e.value).startswith(message)


def test_service_token_required():
    with pytest.raises(usage.UsageError, match="MC_SERVICE_TOKEN .*is required"):
        Options(environ={"MC_GC_TOKENS": "a", **P}).parseOptions([])


def test_gc_tokens_required_unless_insecure():
    with pytest.raises(usage.UsageError, match="MC_GC_TOKENS .*unless AC_ENDPOINT .* --insecure"):
        Options(environ={"MC_SERVICE_TOKEN": "a", **P}).parseOptions([])
    o = Options(environ={"MC_SERVICE_TOKEN": "a", **P})
    o.parseOptions(["--insecure-no-auth"])
    assert o.config.insecure_no_auth and o.config.gc_tokens == ()


def test_secrets_from_files(tmp_path):
    svc = tmp_path / "svc"
    svc.write_text("file-token\n")
    gc = tmp_path / "gc"
    gc.write_text("t1\nt2\n")
    o = Options(environ=dict(P))
    o.parseOptions(["--service-token-file", str(svc), "--gc-tokens-file", str(gc)])
    assert o.config.service_token.reveal() == "file-token"
    assert [t.reveal() for t in o.config.gc_tokens] == ["t1", "t2"]
    c = mcconfig.load({}, {"MC_SERVICE_TOKEN_FILE": str(svc), "MC_GC_TOKENS_FILE": str(gc),
                                **P})
    assert c.service_token.reveal() == "file-token"


@pytest.mark.parametrize("env,message", [
    ({"MC_SERVICE_TOKEN": "   "}, "MC_SERVICE_TOKEN: is empty"),
    ({"MC_SERVICE_TOKEN": "a b"}, "MC_SERVICE_TOKEN: must be printable ASCII"),
    ({"MC_SERVICE_TOKEN": "x" * 8193}, "MC_SERVICE_TOKEN: is longer than 8192 bytes"),
    ({"MC_SERVICE_TOKEN_FILE": "/nonexistent"}, "MC_SERVICE_TOKEN_FILE: cannot read"),
    ({"MC_SERVICE_TOKEN": "a", "MC_SERVICE_TOKEN_FILE": "/x"},
     "MC_SERVICE_TOKEN / MC_SERVICE_TOKEN_FILE: set only one"),
    ({"MC_SERVICE_TOKEN": "a", "MC_GC_TOKENS": ", ,"}, "MC_GC_TOKENS: holds no token"),
])
def test_bad_secrets(env, message):
    with pytest.raises(ConfigError) as e:
        mcconfig.load({}, {**P, **env})
    assert str(e.value).startswith(message)
    assert "x" * 100 not in str(e.value)


def test_secrets_are_not_flag_values():
    names = {p[0] for p in Options.optParameters}
    assert "service-token" not in names and "gc-tokens" not in names


def test_repr_and_describe_redact_secrets():
    c = parse(REDIS_URL="redis://:hunter2-pw@redis.internal:6380/2")
    text = repr(c) + str(c.describe())
    for secret in ("s3cret-service", "gc-one", "gc-two", "hunter2-pw"):
        assert secret not in text
    assert c.redis.password.reveal() == "hunter2-pw"
    assert c.describe()["redis"] == "redis://:<redacted>@redis.internal:6380/2"


def test_help_documents_every_option():
    text = str(Options())
    for s in mcconfig.SETTINGS:
        assert f"--{s.flag}" in text and s.env in text
    for flag in ("--service-token-file", "--gc-tokens-file", "--insecure-no-auth"):
        assert flag in text


AC_ENV = {"AC_ENDPOINT": "https://ac.example:8443", "MC_CLIENT_ID": "mc-client-1",
          "MC_CLIENT_SECRET": "client-s3cret", **P}


def ac_config(**env):
    o = Options(environ={**AC_ENV, **env})
    o.parseOptions([])
    return o.config


def test_the_platform_settings_need_no_static_token():
    c = ac_config()
    assert c.service_identity_from_ac and c.service_token is None and c.gc_tokens == ()
    assert (c.ac_endpoint, c.client_id, c.client_secret.reveal()) == (
        "https://ac.example:8443", "mc-client-1", "client-s3cret")
    assert c.gc_api == "auto"
    assert "client-s3cret" not in repr(c) and "client-s3cret" not in str(c.describe())
    both = ac_config(MC_GC_TOKENS="gc-one")  # a fleet moving off static GC tokens
    assert [t.reveal() for t in both.gc_tokens] == ["gc-one"]


def test_the_client_secret_file_is_read_again_on_reload(tmp_path):
    secret = tmp_path / "client-secret"
    secret.write_text("first\n")
    env = {k: v for k, v in AC_ENV.items() if k != "MC_CLIENT_SECRET"}
    o = Options(environ={**env, "MC_CLIENT_SECRET_FILE": str(secret)})
    o.parseOptions([])
    c = o.config
    (source,) = c.secret_files
    assert (source.name, source.option) == ("client_secret", "MC_CLIENT_SECRET_FILE")
    secret.write_text("second")
    assert source.read().reveal() == "second"
    secret.write_text("has a space")
    with pytest.raises(ConfigError, match="MC_CLIENT_SECRET_FILE: must be"):
        source.read()


@pytest.mark.parametrize("env, message", [
    ({"MC_CLIENT_ID": ""}, "MC_CLIENT_ID / --client-id: is required with AC_ENDPOINT"),
    ({"MC_CLIENT_ID": "has space"}, "MC_CLIENT_ID / --client-id: is required with AC_ENDPOINT"),
    ({"MC_CLIENT_SECRET": ""}, "MC_CLIENT_SECRET: must be 1-1024"),
    ({"MC_CLIENT_SECRET": "x" * 1025}, "MC_CLIENT_SECRET: must be 1-1024"),
    ({"MC_SERVICE_TOKEN": "static"}, "MC_SERVICE_TOKEN: contradicts AC_ENDPOINT"),
    ({"AC_ENDPOINT": "ftp://ac.example"}, "AC_ENDPOINT: 'ftp://ac.example' must start"),
    ({"AC_ENDPOINT": "", "MC_SERVICE_TOKEN": "s", "MC_GC_TOKENS": "g"},
     "MC_CLIENT_ID / --client-id: is only used with AC_ENDPOINT"),
    ({"MC_GC_API": "v2"}, "MC_GC_API: 'v2' is not one of auto, v1, legacy"),
])
def test_bad_platform_settings_name_the_option(env, message):
    with pytest.raises(usage.UsageError) as e:
        ac_config(**env)
    assert str(e.value).startswith(message), str(e.value)


def test_a_client_secret_without_the_ac_is_refused():
    with pytest.raises(usage.UsageError, match="MC_CLIENT_SECRET.*only used with AC_ENDPOINT"):
        parse(MC_CLIENT_SECRET="orphan")


def test_the_client_secret_is_required_with_the_ac():
    env = {k: v for k, v in AC_ENV.items() if k != "MC_CLIENT_SECRET"}
    with pytest.raises(usage.UsageError, match=r"MC_CLIENT_SECRET \(or MC_CLIENT_SECRET_FILE "
                                               r"/ --client-secret-file\): is required with"):
        Options(environ=env).parseOptions([])

"""JSON and text log lines, the level and secrets filters, and how the log
settings reach twistd."""

import base64
import io
import json
import re
import signal
from datetime import UTC, datetime

import pytest
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    capturedLogs,
    formatEvent,
    textFileLogObserver,
)
from twisted.scripts.twistd import ServerOptions

from mc.ops import logs
from mc.tap import Options
from tests.configs import PARTICIPANT_ENV, TEST_GC_TOKEN, TEST_SERVICE_TOKEN, make_config

SECRET = "s3cret-Tok{en}"


class Opaque:
    def __repr__(self):
        return "<opaque>"


@pytest.fixture
def secrets(monkeypatch):
    """logs' module-level state, empty for the test (other tests' Options
    register their secrets there too) and restored after it, as is the
    SIGUSR1 and SIGHUP handlers the loggers install."""
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setattr(logs, "_destination", {"logfile": None, "nodaemon": True})
    monkeypatch.setattr(logs, "_level", {"level": LogLevel.info})
    handlers = {s: signal.getsignal(s) for s in logs.REOPEN_SIGNALS}
    yield logs._secrets
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def lines_for(emit, observer_factory=logs.json_observer):
    out = io.StringIO()
    emit(Logger(namespace="mc.test", observer=observer_factory(out)))
    text = out.getvalue()
    assert text.endswith("\n") and "\x1e" not in text
    return [json.loads(line) for line in text.splitlines()]


def test_one_plain_json_object_per_line_with_structured_fields():
    def emit(log):
        log.info("accepted {meeting_id} at generation {generation}", mc_id="mc-1",
                 meeting_id="m-1", generation=4, gc_id="gc-a", obj=Opaque())
        log.warn("slow {what}", what="heartbeat")

    first, second = lines_for(emit)
    assert first["message"] == "accepted m-1 at generation 4"
    assert (first["level"], first["namespace"]) == ("info", "mc.test")
    assert (first["mc_id"], first["meeting_id"], first["generation"], first["gc_id"]) == (
        "mc-1", "m-1", 4, "gc-a")
    assert "obj" not in first and not any(k.startswith("log_") for k in first)
    when = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert when.tzinfo == UTC and abs(when.timestamp() - datetime.now(UTC).timestamp()) < 60
    assert (second["level"], second["message"]) == ("warn", "slow heartbeat")


def test_failure_becomes_a_traceback_string():
    def emit(log):
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("assignment of {meeting_id} failed", meeting_id="m-2")

    (line,) = lines_for(emit)
    assert line["level"] == "critical"
    assert line["message"] == "assignment of m-2 failed"
    assert "ValueError: boom" in line["traceback"]


def test_captured_events_format_like_emitted_ones():
    with capturedLogs() as events:
        Logger(namespace="mc.gc.liaison").info("registered as {mc_id}", mc_id="mc-9")
    (line,) = [json.loads(logs.event_as_json(e)) for e in events]
    assert (line["message"], line["mc_id"], line["namespace"]) == (
        "registered as mc-9", "mc-9", "mc.gc.liaison")


def test_redact_replaces_every_occurrence_longest_first():
    assert logs.redact("a abc b abc", ["abc", "ab"]) == "a <redacted> b <redacted>"
    assert logs.redact("nothing here", ["abc"]) == "nothing here"


def filtered(secrets):
    seen = []
    return seen, logs.secrets_filter(seen.append, secrets)


def test_secrets_filter_redacts_message_fields_and_traceback():
    seen, observer = filtered([SECRET])
    log = Logger(namespace="mc.test", observer=observer)
    log.error("redis said {err}", err=f"auth failed for {SECRET}",
              nested={"url": f"redis://:{SECRET}@h", "n": [SECRET, 1]})
    try:
        raise ConnectionError(f"token {SECRET} rejected")
    except ConnectionError:
        log.failure("GC call failed")

    message_event, failure_event = seen
    assert formatEvent(message_event) == "redis said auth failed for <redacted>"
    assert message_event["nested"] == {"url": "redis://:<redacted>@h", "n": ["<redacted>", 1]}
    assert "log_failure" not in failure_event
    text = formatEvent(failure_event)
    assert text.startswith("GC call failed\n") and "token <redacted> rejected" in text
    assert SECRET not in json.dumps([logs.event_as_json(e) for e in seen])


def test_secrets_filter_passes_clean_events_unchanged_and_reads_secrets_late():
    secrets = set()
    seen, observer = filtered(secrets)
    event = {"log_format": "hello {who}", "who": SECRET, "log_level": LogLevel.info}
    observer(event)
    assert seen[-1] is event
    secrets.update({"", SECRET})
    observer(event)
    assert formatEvent(seen[-1]) == "hello <redacted>"
    assert event["who"] == SECRET


def test_json_logger_writes_stdout_provides_ilogobserver_and_redacts(monkeypatch, secrets):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    binding = base64.b64encode(b"b" * 32).decode()
    logs.register_secrets(make_config(environ={"REDIS_URL": "redis://:pw-Xy7@redis:6379/0",
                                               "MC_BINDING_TOKEN_SECRET": binding}))
    assert secrets == {TEST_SERVICE_TOKEN, TEST_GC_TOKEN, "pw-Xy7", binding}
    observer = logs.json_logger()
    assert ILogObserver.providedBy(observer)
    Logger(namespace="mc.test", observer=observer).info(
        "token {t} via {u}", t=TEST_SERVICE_TOKEN, u="redis://:pw-Xy7@redis")
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["message"] == "token <redacted> via redis://:<redacted>@redis"
    assert TEST_SERVICE_TOKEN not in out.getvalue() and "pw-Xy7" not in out.getvalue()


class FormatSpy:
    """A field that records being formatted."""

    def __init__(self):
        self.formatted = 0

    def __format__(self, spec):
        self.formatted += 1
        return "spy"


@pytest.mark.parametrize("level,written", [
    (LogLevel.info, ["info", "warn"]),
    (LogLevel.debug, ["debug", "info", "warn"]),
])
def test_level_filter_drops_events_below_the_level_before_formatting(
        monkeypatch, secrets, level, written):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    secrets.add(SECRET)  # the secrets filter formats every event it sees
    logs._level["level"] = level
    spy = FormatSpy()
    log = Logger(namespace="mc.test", observer=logs.json_logger())
    log.debug("per assignment {spy}", spy=spy)
    log.info("registered")
    log.warn("slow")
    assert [json.loads(x)["level"] for x in out.getvalue().splitlines()] == written
    assert bool(spy.formatted) == ("debug" in written)


def test_text_logger_writes_twistd_text_to_the_logfile_and_redacts(tmp_path, secrets):
    path = tmp_path / "mc.log"
    logs._destination.update(logfile=str(path), nodaemon=False)
    secrets.add(SECRET)
    log = Logger(namespace="mc.test", observer=logs.text_logger())
    log.info("token {t} refused", t=SECRET)
    log.debug("not at info")
    (line,) = path.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                        r"\[mc\.test#info\] token <redacted> refused", line)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)


def parse_twistd(args, environ):
    """Parse ``twistd [args] mc --log-format ...`` as twistd would, with mc's
    Options calling apply_log_settings from postOptions."""

    class McOptions(Options):
        def postOptions(self):
            super().postOptions()
            logs.apply_log_settings(self)

    class Twistd(ServerOptions):
        subCommands = [("mc", None, lambda: McOptions(environ={**PARTICIPANT_ENV, **environ}),
                        "mc")]

    options = Twistd()
    options.parseOptions(args)
    return options


ENV = {"MC_SERVICE_TOKEN": TEST_SERVICE_TOKEN, "MC_GC_TOKENS": TEST_GC_TOKEN,
       "MC_GRPC_ADVERTISE_URL": "http://mc.example:50052"}


@pytest.mark.usefixtures("secrets")
def test_log_settings_select_mc_logger_for_twistd():
    assert parse_twistd(["-n", "mc"], ENV)["logger"] is logs.text_logger
    assert logs._level["level"] is LogLevel.info
    assert parse_twistd(["-n", "mc", "--log-format", "json"], ENV)["logger"] is logs.json_logger
    assert parse_twistd(["-n", "mc"], {**ENV, "MC_LOG_FORMAT": "json"})["logger"] is (
        logs.json_logger)
    assert parse_twistd(["--syslog", "mc"], ENV)["logger"] is None
    explicit = parse_twistd(["--logger", "twisted.logger.textFileLogObserver", "--logfile",
                             "mc.log", "mc", "--log-format", "json", "--log-level", "debug"],
                            ENV)
    assert explicit["logger"] is textFileLogObserver
    assert logs._destination == {"logfile": "mc.log", "nodaemon": False}
    assert logs._level["level"] is LogLevel.debug
    assert TEST_SERVICE_TOKEN in logs._secrets

"""The logger twistd runs the MC with: level filter, secrets filter, then text or JSON.

``apply_log_settings`` (called from the plugin's options) names ``text_logger``
or, for ``--log-format json`` / ``MC_LOG_FORMAT=json``, ``json_logger`` as
twistd's ``--logger``; an operator's own ``--logger`` wins. Either drops events
below ``--log-level`` / ``MC_LOG_LEVEL`` before anything formats them: twistd
writes each event unbuffered, which under load costs a share of the reactor.
text_logger writes twistd's usual text lines; json_logger one plain JSON object
per event (time, level, namespace, the formatted message, the event's
JSON-serializable structured fields such as mc_id, meeting_id, generation, and
a failure's traceback). twistd calls the factory with no argument, so
``apply_log_settings`` remembers twistd's ``--logfile`` and ``--nodaemon`` for
it, and both write where twistd would: stdout in the foreground without
``--logfile``, else the file (``twistd.log`` by default), reopened on SIGUSR1
(logrotate) and SIGHUP (``systemctl reload``). A tac file gets the same
logger from ``tac_observer``.

Secrets are redacted in every repr already; the filter here is the second
line, for a secret that reaches a message through an exception or a peer.
"""

import base64
import json
import signal
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from twisted.python.reflect import fullyQualifiedName, namedAny
from zope.interface import provider

from mc.config import Secret
from mc.tracing import current_trace_id

REDACTED = "<redacted>"

# Secret values the loggers' filter redacts; filled by register_secrets
# (twistd builds the service, and so the config, before it starts logging).
_secrets = set()
# twistd's --logfile / --nodaemon, as seen by apply_log_settings.
_destination = {"logfile": None, "nodaemon": True}
# The least severe level the loggers write, set by apply_log_settings.
_level = {"level": LogLevel.info}


def redact(text, secrets):
    """``text`` with each secret replaced by REDACTED, longest first so a
    secret that contains another is replaced whole."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _redact_value(value, secrets):
    """Strings, also inside plain dicts, lists and tuples (what JSON output
    would show); other objects reach output only through the message."""
    if isinstance(value, str):
        return redact(value, secrets)
    if type(value) is dict:
        return {k: _redact_value(v, secrets) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_redact_value(v, secrets) for v in value)
    return value


def _escape(text):
    """``text`` as a log_format that formats to itself."""
    return text.replace("{", "{{").replace("}", "}}")


def _scrub(event, secrets):
    message = formatEvent(event)
    failure = event.get("log_failure")
    traceback = failure.getTraceback() if failure is not None else ""
    clean = {k: _redact_value(v, secrets) for k, v in event.items()}
    if redact(message, secrets) != message:
        clean["log_format"] = _escape(redact(message, secrets))
    if redact(traceback, secrets) != traceback:
        # A Failure cannot be redacted in place: carry its text in the message.
        del clean["log_failure"]
        clean["log_format"] = _escape(redact(f"{message}\n{traceback}", secrets))
    return clean


def secrets_filter(observer, secrets):
    """Wrap ``observer`` so no secret reaches it in a formatted message, a
    traceback or a string field. ``secrets`` is read at every event, so a set
    filled in later still takes effect; empty values are ignored."""

    @provider(ILogObserver)
    def filtered(event):
        values = [s for s in secrets if s]
        observer(_scrub(event, values) if values else event)

    return filtered


def trace_filter(observer, text=False):
    """Wrap ``observer`` so an event logged while a span is current (a join,
    an assignment, what they cause) carries its ``trace_id``; with ``text``,
    the line shows it too."""

    @provider(ILogObserver)
    def traced(event):
        trace_id = current_trace_id()
        if trace_id is not None and "trace_id" not in event:
            event = dict(event, trace_id=trace_id)
            if text and event.get("log_format") is not None:
                event["log_format"] += " [trace_id={trace_id}]"
        observer(event)

    return traced


def _jsonable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def event_as_json(event):
    """One event as one line of plain JSON (no record separator)."""
    level = event.get("log_level")
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and _jsonable(value):
            record[key] = value
    return json.dumps(record) + "\n"


def json_observer(out):
    """An observer writing ``event_as_json`` lines to the text file ``out``."""
    return FileLogObserver(out, event_as_json)


# logrotate's signal, and ``systemctl reload``'s (deploy/systemd/mc@.service).
REOPEN_SIGNALS = (signal.SIGUSR1, signal.SIGHUP)


def _reopen_on_signals(logfile):
    """Reopen ``logfile`` (None: stdout, nothing to reopen) on REOPEN_SIGNALS.
    The handler matters on stdout too: either signal's default action would
    kill the MC at once, skipping its graceful stop."""
    from twisted.internet import reactor

    reopen = logfile.reopen if logfile is not None else (lambda: None)
    for signum in REOPEN_SIGNALS:
        signal.signal(signum, lambda *_: reactor.callFromThread(reopen))


def _log_file():
    """Where twistd would write its log. No size-based rotation: logrotate
    moves the file and sends SIGUSR1."""
    path = _destination["logfile"]
    if path is None and not _destination["nodaemon"]:
        path = "twistd.log"
    if path in (None, "-"):
        _reopen_on_signals(None)
        return sys.stdout
    out = LogFile.fromFullPath(path, rotateLength=None)
    _reopen_on_signals(out)
    return out


def _filtered(observer, text=False):
    """``observer`` behind the level filter, the trace id, then the secrets
    filter: the level is checked first, so an event below it is dropped
    before any formatting."""
    return FilteringLogObserver(trace_filter(secrets_filter(observer, _secrets), text),
                                [LogLevelFilterPredicate(_level["level"])])


def json_logger():
    """A ``twistd --logger`` factory: JSON lines where twistd would write its
    log, at the configured level, secrets redacted."""
    return _filtered(json_observer(_log_file()))


def text_logger():
    """A ``twistd --logger`` factory: twistd's usual text lines where twistd
    would write its log, at the configured level, secrets redacted."""
    return _filtered(textFileLogObserver(_log_file()), text=True)


def register_secrets(config):
    """Remember the config's secret values for the loggers' filter (the
    binding secret as the base64 text an operator writes)."""
    binding = Secret(base64.b64encode(config.binding_secret.reveal()).decode("ascii"))
    register_secret_values(config.service_token, *config.gc_tokens, config.redis.password,
                           config.client_secret, binding)


def register_secret_values(*values):
    """Remember more Secrets (None is skipped) for the loggers' filter: a
    token rotated by SIGHUP is redacted like the first (the old stay too)."""
    _secrets.update(s.reveal() for s in values if s is not None)


def apply_log_settings(options):
    """Call from the mc plugin's ``Options.postOptions``, once ``.config`` is
    loaded: registers the secrets and the level, and names json_logger or
    text_logger as twistd's ``--logger`` unless one was given. This works
    because twistd parses the plugin's options before its own postOptions
    imports the named logger factory. A text log under twistd's ``--syslog``
    stays with twistd's syslog observer, which has no file to replace."""
    register_secrets(options.config)
    _level["level"] = LogLevel.levelWithName(options.config.log_level)
    parent = getattr(options, "parent", None)
    if parent is None:
        return
    _destination.update(logfile=parent.get("logfile"), nodaemon=bool(parent.get("nodaemon")))
    if parent.get("logger"):
        return
    if options.config.log_format == "json":
        parent["logger"] = fullyQualifiedName(json_logger)
    elif not parent.get("syslog"):
        parent["logger"] = fullyQualifiedName(text_logger)


def _twistd_options(argv):
    """``argv`` parsed by twistd's own parser, less the one side effect a
    second parse would repeat: twistd has installed its reactor already."""
    from twisted.scripts.twistd import ServerOptions

    class Reparsed(ServerOptions):
        def opt_reactor(self, name):
            self["reactor"] = name

        opt_r = opt_reactor

    options = Reparsed()
    options.parseOptions(argv)
    return options


def tac_observer(config, argv=None):
    """The observer ``twistd mc`` would log through, for a tac file to set as
    its application's ILogObserver (twistd uses that component unless given
    ``--logger``, which wins as it does over the plugin). twistd shows a tac
    none of its options, so its command line (``sys.argv``) is parsed again.
    None where twistd's own observer is to stay: an operator's ``--logger``,
    or a text log under ``--syslog``."""
    options = _twistd_options(sys.argv[1:] if argv is None else argv)
    operators = options["logger"]
    apply_log_settings(SimpleNamespace(config=config, parent=options))
    if operators is not None or options["logger"] is None:
        return None
    return namedAny(options["logger"])()

"""``twistd mc``: the options an operator gives and the service tree they build.

Options are validated in ``postOptions`` (a bad value is a UsageError naming
the option, so twistd exits non-zero before anything starts); ``makeService``
only wires.
"""

import os

from twisted.python import usage

from mc import config as mcconfig
from mc.errors import ConfigError
from mc.ops import logs


def _param_help(s):
    default = "" if s.default is None or "[default:" in s.help else f" [default: {s.default}]"
    return f"{s.help}{default} (env {s.env})"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a Meeting Controller: register with the Global Controller, heartbeat, and host "
        "the meetings it assigns, fenced in the fleet's shared Redis. Every option can also be "
        "set by the environment variable named in its help; a flag beats the environment. "
        "Secrets are read from the environment or files, never from flag values."
    )
    optFlags = [
        [mcconfig.INSECURE_NO_AUTH_FLAG, None,
         "Accept AssignMeetingWithMh calls without a bearer token (testing only)"],
        [mcconfig.INSECURE_NO_TLS_FLAG, None,
         "Serve the GC's calls in plaintext on purpose: no start-up warning (env "
         "MC_INSECURE_NO_TLS; TLS ends in front of the MC, or a test)"],
    ]
    optParameters = [[s.flag, None, None, _param_help(s)] for s in mcconfig.SETTINGS] + [
        [mcconfig.SERVICE_TOKEN[2], None, None,
         "File holding the bearer token sent to the GC (env MC_SERVICE_TOKEN or "
         "MC_SERVICE_TOKEN_FILE); required"],
        [mcconfig.GC_TOKENS[2], None, None,
         "File holding the tokens accepted from the GC, comma- or line-separated (env "
         "MC_GC_TOKENS or MC_GC_TOKENS_FILE); required unless --insecure-no-auth"],
        [mcconfig.BINDING_SECRET[2], None, None,
         "File holding the base64 secret (at least 32 bytes) that keys reconnect binding "
         "tokens (env MC_BINDING_TOKEN_SECRET or MC_BINDING_TOKEN_SECRET_FILE) [default: a "
         "random one per process]"],
    ]

    def __init__(self, environ=None):
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.config = None

    def postOptions(self):
        flags = {k: v for k, v in self.items() if v is not None}
        try:
            self.config = mcconfig.load(flags, self.environ)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        logs.apply_log_settings(self)


def makeService(options, reactor=None):
    """Build the root service from parsed Options (or a Config)."""
    from mc.tree import build_tree

    if reactor is None:
        from twisted.internet import reactor
    cfg = options if isinstance(options, mcconfig.Config) else options.config
    return build_tree(cfg, reactor)

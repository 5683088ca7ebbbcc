# The same service tree as `twistd mc`, configured from the environment alone:
#   MC_SERVICE_TOKEN=... MC_GC_TOKENS=... twistd -ny tac/mc.tac
import sys

from twisted.application.service import Application
from twisted.internet import reactor

from mc import config as mcconfig
from mc.errors import ConfigError
from mc.tap import makeService

try:
    config = mcconfig.load({})
except ConfigError as e:
    sys.exit(f"mc: {e}")

application = Application("mc")
makeService(config, reactor).setServiceParent(application)

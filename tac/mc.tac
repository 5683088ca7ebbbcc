# The same service tree and logging as `twistd mc`, configured from the environment alone:
#   MC_SERVICE_TOKEN=... MC_GC_TOKENS=... twistd -ny tac/mc.tac
import sys

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import ILogObserver

from mc import config as mcconfig
from mc.errors import ConfigError
from mc.ops import logs
from mc.tap import makeService

try:
    config = mcconfig.load({})
except ConfigError as e:
    sys.exit(f"mc: {e}")

application = Application("mc")
# twistd logs through this unless given --logger: format, level and secrets filter as `twistd mc`.
observer = logs.tac_observer(config)
if observer is not None:
    application.setComponent(ILogObserver, observer)
makeService(config, reactor).setServiceParent(application)

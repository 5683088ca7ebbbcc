"""The MC's service tree, wired from a Config: the one place that knows which
part needs which, and the order they start in (stop is the reverse)."""

from twisted.internet import defer
from twisted.logger import Logger

from mc.assignment import AssignmentService
from mc.gc.auth import AllowAll, TokenCheck
from mc.gc.gcclient import GrpcGcClient
from mc.gc.grpcserver import GrpcServerService
from mc.gc.liaison import GcLiaison
from mc.binding import BindingKeys
from mc.joining import JoinService
from mc.meetings import MeetingRegistry
from mc.ops.health import Health, HealthMonitor
from mc.ops.lifecycle import Lifecycle
from mc.ops.metrics import Metrics
from mc.ops.probe import SystemProbe
from mc.ops.web import HealthHttpService
from mc.participants.signaling import SignalingSession
from mc.participants.tokens import TokenVerifier
from mc.participants.webtransport import WebTransportService
from mc.redis.store import RedisFencedStore
from mc.service import OrderedMultiService

log = Logger(namespace="mc.tree")


class MeetingController(OrderedMultiService):
    """The root service; its attributes are the tree's shared parts, for the
    operations layer and for tests."""

    def __init__(self, config, reactor):
        super().__init__()
        self.setName("mc")
        self.config = config
        self.reactor = reactor

    def startService(self):
        self.log.info("starting MC {mc_id} with {settings}", mc_id=self.config.mc_id,
                      settings=self.config.describe())
        if self.config.insecure_no_auth:
            self.log.warn("--insecure-no-auth: AssignMeetingWithMh accepts calls without a "
                          "token; never run a production MC like this")
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        self.gc_client.close()


def build_tree(config, reactor):
    root = MeetingController(config, reactor)
    root.metrics = metrics = Metrics()
    root.store = store = RedisFencedStore(config.redis, reactor)
    store.setName("redis-store")
    root.registry = registry = MeetingRegistry(
        config.max_meetings, config.max_participants, config.participant_estimate, reactor,
        max_participants_per_meeting=config.max_participants_per_meeting)
    root.health = health = Health(lambda: store.connected, config.lag_threshold)
    root.monitor = HealthMonitor(health, SystemProbe(), reactor, on_lag=metrics.observe_lag)
    root.gc_client = gc_client = GrpcGcClient(config, reactor, deadline=config.gc_deadline)
    root.liaison = liaison = GcLiaison(config, gc_client, registry, health, reactor, metrics)
    root.assignment = assignment = AssignmentService(
        config, store, registry, health, gc_client, reactor, metrics,
        ownership_interval=lambda: liaison.comprehensive_interval)
    # A restarted MC hosts its meetings again before it first reports healthy.
    store.recover_on_connect(config.mc_id, assignment.recovered)
    root.tokens = tokens = TokenVerifier(
        config.jwks_url, config.token_audience, config.clock_skew, reactor,
        on_refresh=lambda outcome: metrics.jwks_refreshes.labels(outcome).inc())
    root.joins = joins = JoinService(registry, health, tokens, reactor, metrics,
                                     config.disconnect_grace,
                                     BindingKeys(config.binding_secret.reveal()))
    root.webtransport = WebTransportService(
        config.webtransport_listen, config.tls_cert, config.tls_key, config.webtransport_path,
        config.allowed_origins, lambda peer: SignalingSession(joins, reactor, peer), reactor,
        max_pending=config.max_pending_sessions)
    token_check = AllowAll() if config.insecure_no_auth else TokenCheck(config.gc_tokens)
    root.grpc = GrpcServerService(config.grpc_listen, assignment, token_check, reactor)
    # HTTP first: a bind failure stops start-up before anything else runs, and
    # /readyz keeps answering "draining" until the very end of a shutdown.
    root.http = HealthHttpService(config.health_listen, health, registry, liaison, metrics,
                                  reactor, idle_timeout=config.http_idle, tokens=tokens,
                                  webtransport=root.webtransport)
    root.lifecycle = Lifecycle(config, reactor, health, registry, liaison, root.grpc, joins)

    # Participants arrive only once the meetings' side and the JWKS are up,
    # and are cut off (stop is the reverse) before them.
    for service in (root.http, store, root.monitor, assignment, tokens, joins,
                    root.webtransport, root.grpc, liaison, root.lifecycle):
        service.setServiceParent(root)
    return root

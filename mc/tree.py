"""The MC's service tree, wired from a Config: the one place that knows which
part needs which, and the order they start in (stop is the reverse)."""

import os

from twisted.internet import defer, threads
from twisted.logger import Logger

from mc.ac.identity import AcIdentity, ClientCredentials, StaticIdentity
from mc.ac.service_tokens import AllowAll, ServiceTokenCheck
from mc.assignment import AssignmentService
from mc.binding import BindingKeys
from mc.gc.auth import TokenCheck
from mc.gc.gcclient import GrpcGcClient
from mc.gc.grpcserver import GrpcServerService, ServerTls
from mc.gc.liaison import GcLiaison
from mc.joining import JoinService
from mc.lease import MAX_DEFAULT_BOUND, Lease
from mc.meetings import MeetingRegistry
from mc.mh.client import GrpcMhClient
from mc.mh.coordination import MediaCoordination
from mc.mh.registration import MeetingRegistrar
from mc.ops.collector import CollectorService
from mc.ops.health import Health, HealthMonitor
from mc.ops.lifecycle import Lifecycle
from mc.ops.logs import register_secret_values
from mc.ops.metrics import Metrics
from mc.ops.probe import SystemProbe
from mc.ops.reload import BindingRotation, Reloadable, Reloader
from mc.ops.watch import FileWatcher
from mc.ops.web import HealthHttpService
from mc.ownership import OwnershipService
from mc.participants.engine import NAME as QUIC_ENGINE
from mc.participants.signaling import SignalingSession
from mc.participants.tokens import TokenVerifier
from mc.participants.webtransport import WebTransportService, server_configuration
from mc.redis.connection import probe_period
from mc.redis.store import RedisFencedStore
from mc.service import OrderedMultiService
from mc.tracing import Tracing

log = Logger(namespace="mc.tree")
#: At most this long at stop for the exporter's last spans.
TRACING_FLUSH_SECONDS = 5.0


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
        if not self.config.grpc_tls and not self.config.insecure_no_tls:
            self.log.warn("the gRPC server speaks plaintext: the GC's bearer tokens cross the "
                          "network in the clear. Set MC_GRPC_TLS_CERT_PATH and "
                          "MC_GRPC_TLS_KEY_PATH, or --insecure-no-tls (MC_INSECURE_NO_TLS) "
                          "when TLS ends in front of the MC")
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        self.gc_client.close()
        if self.tracing.exporting:
            # The exporter's last batch, in a thread and bounded: an OTLP
            # endpoint that does not answer must not hold the exit up.
            d = threads.deferToThread(self.tracing.shutdown)
            d.addTimeout(TRACING_FLUSH_SECONDS, self.reactor)
            yield d.addErrback(lambda f: log.warn("spans not exported at stop: {why}",
                                                  why=f.getErrorMessage()))


def build_tree(config, reactor):
    root = MeetingController(config, reactor)
    root.metrics = metrics = Metrics()
    # The SDK's standard OTEL_* variables configure the exporter, if any.
    root.tracing = tracing = Tracing(os.environ)
    metrics.set_build_info(QUIC_ENGINE)
    # Redis is probed at least once per fast heartbeat interval the GC dictates.
    root.store = store = RedisFencedStore(
        config.redis, reactor, reply_timeout=config.redis_timeout,
        replica_acks=config.redis_replica_acks,
        probe_every=lambda: probe_period(liaison.fast_interval))
    store.setName("redis-store")
    root.registry = registry = MeetingRegistry(
        config.max_meetings, config.max_participants, config.participant_estimate, reactor,
        max_participants_per_meeting=config.max_participants_per_meeting)
    # Hosting holds while Redis confirms ownership within the lease bound:
    # the GC's fast interval unless set, below the GC's 30 s staleness.
    root.lease = lease = Lease(
        reactor, lambda: config.ownership_lease or min(liaison.fast_interval, MAX_DEFAULT_BOUND))
    root.health = health = Health(lambda: store.connected, config.lag_threshold,
                                  hosting=lambda: lease.valid)
    lease.on_change(lambda valid: health.check())
    store.on_change(lambda connected: health.check())
    # CPU and memory averaged over the comprehensive interval: DEGRADED on load
    # that lasts, not on a burst.
    root.monitor = HealthMonitor(health, SystemProbe(), reactor, on_lag=metrics.observe_lag,
                                 window=lambda: liaison.comprehensive_interval)
    root.identity = identity = _identity(config, reactor, metrics)
    root.gc_client = gc_client = GrpcGcClient(
        config, identity, reactor, deadline=config.gc_deadline,
        on_call=lambda method, dialect, outcome: metrics.gc_calls.labels(
            method, dialect, outcome).inc())
    root.liaison = liaison = GcLiaison(config, gc_client, registry, health, reactor, metrics,
                                       identity=identity)
    root.ownership = ownership = OwnershipService(
        config, store, registry, gc_client, reactor, metrics,
        interval=lambda: liaison.comprehensive_interval, lease=lease)
    liaison.on_intervals(ownership.intervals_changed)
    liaison.on_intervals(store.probe_period_changed)
    root.assignment = assignment = AssignmentService(
        config, store, registry, health, ownership, reactor, metrics)
    # A restarted MC hosts its meetings again before it first reports healthy.
    store.recover_on_connect(config.mc_id, assignment.recovered)
    root.tokens = tokens = TokenVerifier(
        config.jwks_url, config.token_audience, config.clock_skew, reactor,
        on_refresh=lambda outcome: metrics.jwks_refreshes.labels(outcome).inc(),
        max_lifetime=config.max_token_lifetime)
    root.joins = joins = JoinService(registry, health, tokens, reactor, metrics,
                                     config.disconnect_grace,
                                     BindingKeys(config.binding_secret.reveal()))
    # Media handlers told of the meetings people join here, and heard.
    root.registrar = registrar = MeetingRegistrar(
        GrpcMhClient(reactor, config.mh_ca_file), identity, config.mc_id, config.grpc_advertise,
        reactor, metrics, tracing)
    joins.on_first_join(registrar.first_join)
    root.webtransport = WebTransportService(
        config.webtransport_listen, config.tls_cert, config.tls_key, config.webtransport_path,
        config.allowed_origins,
        lambda peer: SignalingSession(joins, reactor, peer, media=registrar, tracing=tracing),
        reactor,
        max_pending=config.max_pending_sessions,
        max_pending_per_host=config.max_pending_per_address)
    grpc_tls = ServerTls(config.grpc_tls_cert, config.grpc_tls_key,
                         config.grpc_tls_client_ca) if config.grpc_tls else None
    root.grpc = GrpcServerService(config.grpc_listen, assignment,
                                  _authorizer(config, tokens, reactor, metrics), reactor,
                                  tls=grpc_tls, tracing=tracing)
    root.grpc.add_handlers(MediaCoordination(registry, reactor, metrics).handler())
    # HTTP first: a bind failure stops start-up before anything else runs, and
    # /readyz keeps answering "draining" until the very end of a shutdown.
    root.http = HealthHttpService(config.health_listen, health, registry, liaison, metrics,
                                  reactor, idle_timeout=config.http_idle, tokens=tokens,
                                  webtransport=root.webtransport, identity=identity)
    root.reloader = reloader = Reloader(_reloadables(root, grpc_tls), reactor, metrics,
                                        pair_grace=config.cert_pair_grace)
    # A changed file reloads as SIGHUP does; whatever a Reloadable reads is watched.
    root.watcher = FileWatcher(reloader.paths, lambda: reloader.reload("file change"), reactor,
                               mode=config.file_watch)
    root.collector = CollectorService(config.python_gc_thresholds, metrics.observe_python_gc,
                                      reactor)
    root.lifecycle = Lifecycle(config, reactor, health, registry, liaison, root.grpc, joins,
                               closing=lambda: root.webtransport.closing_sessions,
                               reload=reloader.reload)

    # Participants arrive only once the meetings' side and the JWKS are up,
    # and are cut off (stop is the reverse) before them.
    services = (root.http, store, root.monitor, ownership, assignment, tokens, joins,
                registrar, root.webtransport, root.grpc, liaison, reloader, root.watcher,
                root.lifecycle, root.collector)
    if isinstance(identity, AcIdentity):
        # Asked for first, so the token may be there when the liaison starts.
        services = (root.http, identity) + services[1:]
    for service in services:
        service.setServiceParent(root)
    return root


def _identity(config, reactor, metrics):
    """The MC's service identity: from the Auth Controller, or the static token."""
    if not config.service_identity_from_ac:
        return StaticIdentity(config.service_token)
    identity = AcIdentity(
        config.client_id, config.client_secret,
        ClientCredentials(reactor, config.ac_endpoint).request, reactor,
        on_refresh=lambda outcome: metrics.service_token_refreshes.labels(outcome).inc())
    metrics.track_service_token_expiry(identity.expiry_seconds)
    return identity


def _authorizer(config, tokens, reactor, metrics):
    """The check of every call the gRPC server receives: the Auth Controller's
    service JWTs (by the meeting tokens' JWKS cache, ``tokens``), and the
    static GC tokens when set."""
    if config.insecure_no_auth:
        return AllowAll()
    return ServiceTokenCheck(
        tokens, reactor, config.clock_skew,
        static=TokenCheck(config.gc_tokens) if config.gc_tokens else None,
        on_outcome=lambda service, outcome: metrics.service_token_checks.labels(
            service, outcome).inc())


def _reloadables(root, grpc_tls):
    """What SIGHUP reads again and where each goes: the secrets that came
    from files (MC_CLIENT_SECRET_FILE among them), the WebTransport
    certificate, the gRPC server's certificates. Each one's ``paths`` are
    watched (mc.ops.watch): a change reloads as SIGHUP does."""
    config = root.config

    def service_token(token):
        register_secret_values(token)
        root.identity.use_token(token)

    def gc_tokens(tokens):
        register_secret_values(*tokens)
        root.grpc.use_authorizer(root.grpc.authorizer.with_static(TokenCheck(tokens)))

    def client_secret(secret):
        register_secret_values(secret)
        root.identity.use_client_secret(secret)

    apply = {"service_token": service_token, "gc_tokens": gc_tokens,
             "client_secret": client_secret}
    items = []
    for source in config.secret_files:
        if source.name == "binding_secret":
            rotation = BindingRotation(root.joins, config.binding_secret)
            items.append(Reloadable(source.option, source.read, rotation.rotate,
                                    paths=(source.path,)))
        elif source.name != "gc_tokens" or not config.insecure_no_auth:
            items.append(Reloadable(source.option, source.read, apply[source.name],
                                    paths=(source.path,)))
    items.append(Reloadable(
        "MC_TLS_CERT_PATH / MC_TLS_KEY_PATH",
        lambda: server_configuration(config.tls_cert, config.tls_key),
        root.webtransport.use_configuration, paths=(config.tls_cert, config.tls_key)))
    if grpc_tls is not None:
        setting = "MC_GRPC_TLS_CERT_PATH / MC_GRPC_TLS_KEY_PATH"
        if grpc_tls.mutual:
            setting += " / MC_GRPC_TLS_CLIENT_CA_PATH"
        paths = (grpc_tls.cert_path, grpc_tls.key_path, grpc_tls.client_ca_path)
        items.append(Reloadable(setting, grpc_tls.load, root.grpc.use_certificates,
                                paths=tuple(p for p in paths if p)))
    return items

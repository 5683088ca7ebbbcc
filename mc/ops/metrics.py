"""The Prometheus metrics, in one registry per MC (no module-level singletons,
so tests and several MCs in one process never share counters). Labels are
bounded enums only: never a meeting id, token or URL."""

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ASSIGNMENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                      1.0, 2.5, 5.0, 10.0)
JOIN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0)


class Metrics:
    def __init__(self, registry=None):
        self.registry = r = registry or CollectorRegistry()
        self.meetings_current = Gauge(
            "mc_meetings_current", "Meetings hosted now", registry=r)
        self.participants_current = Gauge(
            "mc_participants_current", "Participants across hosted meetings", registry=r)
        self.max_meetings = Gauge(
            "mc_meetings_max", "Configured meeting capacity", registry=r)
        self.max_participants = Gauge(
            "mc_participants_max", "Configured participant capacity", registry=r)
        self.assignments = Counter(
            "mc_meeting_assignments_total", "AssignMeetingWithMh answers",
            ["status", "rejection_reason"], registry=r)
        self.assignment_duration = Histogram(
            "mc_assignment_duration_seconds", "Time to answer AssignMeetingWithMh",
            buckets=ASSIGNMENT_BUCKETS, registry=r)
        self.heartbeats = Counter(
            "mc_gc_heartbeats_total", "Heartbeats sent to the GC, by the dialect of their last "
            "attempt (none: not sent, no service token)", ["kind", "outcome", "dialect"],
            registry=r)
        self.registrations = Counter(
            "mc_gc_registrations_total", "Registration attempts, by the dialect of their last "
            "attempt", ["outcome", "dialect"], registry=r)
        self.gc_calls = Counter(
            "mc_gc_calls_total", "Every attempt of a call to the GC (an UNIMPLEMENTED one "
            "retried in the other dialect counts twice), by dialect and gRPC status",
            ["method", "dialect", "outcome"], registry=r)
        self.service_token_refreshes = Counter(
            "mc_service_token_refresh_total", "Service token requests to the Auth Controller, "
            "by outcome (ok, rejected: credentials refused, invalid: no usable token, error)",
            ["outcome"], registry=r)
        self.service_token_checks = Counter(
            "mc_service_token_checks_total", "Service tokens of received gRPC calls, by "
            "service and outcome (ok, unauthenticated, permission_denied)",
            ["service", "outcome"], registry=r)
        self.registered = Gauge(
            "mc_gc_registered", "1 while registered with the GC", registry=r)
        self.fenced_out = Counter(
            "mc_fenced_out_total", "Meetings lost to another MC's newer generation", registry=r)
        self.meetings_ended = Counter(
            "mc_meetings_ended_total", "Meetings that ended here", ["reason"], registry=r)
        self.redis_up = Gauge(
            "mc_redis_up",
            "1 while Redis is available to this MC: answering, and with the online "
            "replicas a durable claim needs (MC_REDIS_REPLICA_ACKS)", registry=r)
        self.reactor_lag = Gauge(
            "mc_reactor_lag_seconds", "Lateness of the last health-monitor tick", registry=r)
        self.reactor_lag_hist = Histogram(
            "mc_reactor_lag_distribution_seconds", "Lateness of health-monitor ticks",
            buckets=LAG_BUCKETS, registry=r)
        self.health = Gauge(
            "mc_health_status", "1 for the current health status", ["status"], registry=r)
        self.draining = Gauge("mc_draining", "1 while draining", registry=r)
        self.heartbeat_failures = Gauge(
            "mc_gc_heartbeat_consecutive_failures",
            "Heartbeats failed in a row (not counting NOT_FOUND)", registry=r)
        self.last_ack_age = Gauge(
            "mc_gc_last_heartbeat_ack_age_seconds",
            "Seconds since the GC last acknowledged a heartbeat (-1: never)", registry=r)

        self.joins = Counter(
            "mc_joins_total", "JoinRequests answered, by outcome", ["outcome"], registry=r)
        self.join_duration = Histogram(
            "mc_join_duration_seconds", "JoinRequest to JoinResponse (accepted joins)",
            buckets=JOIN_BUCKETS, registry=r)
        self.reconnects = Counter(
            "mc_reconnects_total", "Reconnects with a binding token, by outcome", ["outcome"],
            registry=r)
        self.webtransport_sessions = Gauge(
            "mc_webtransport_sessions_current", "WebTransport sessions open now", registry=r)
        self.jwks_refreshes = Counter(
            "mc_jwks_refresh_total", "JWKS fetches, by outcome", ["outcome"], registry=r)
        self.config_reloads = Counter(
            "mc_config_reloads_total", "SIGHUP reloads of secrets and certificates, by outcome "
            "(error: a file was refused and its previous value kept)", ["outcome"], registry=r)
        self.jwks_age = Gauge(
            "mc_jwks_age_seconds", "Seconds since the JWKS was last loaded (-1: never)",
            registry=r)

        self.mh_registrations = Counter(
            "mc_mh_registrations_total", "RegisterMeeting with one MH, by what caused it "
            "(first_join, reported) and how it ended (accepted, refused, failed after the "
            "last attempt, abandoned: the meeting left)", ["trigger", "outcome"], registry=r)
        self.mh_register_attempts = Counter(
            "mc_mh_register_attempts_total", "RegisterMeeting calls, by result (accepted, "
            "refused, no_token, or the gRPC status code)", ["result"], registry=r)
        self.mh_reports = Counter(
            "mc_mh_reports_total", "MediaCoordinationService reports from MHs, by kind "
            "(connected, disconnected) and outcome", ["kind", "outcome"], registry=r)
        self.media_connections = Gauge(
            "mc_media_connections_current", "Participants' MH connections reported open, "
            "across hosted meetings", registry=r)
        self.client_media_statuses = Counter(
            "mc_client_media_statuses_total", "MH connection statuses in participants' "
            "MediaConnectionUpdates, by state (ignored: beyond the ones looked at)",
            ["state"], registry=r)

        self.python_gc_pause = Histogram(
            "mc_python_gc_pause_seconds", "Pauses of Python's cyclic garbage collector (the "
            "reactor stops meanwhile), by the oldest generation collected", ["generation"],
            buckets=GC_PAUSE_BUCKETS, registry=r)

        self.build_info = Gauge(
            "mc_build_info", "Always 1: what this MC runs (package version, Python, QUIC "
            "engine and its version)", ["version", "python", "quic_engine"], registry=r)

    def track_service_token_expiry(self, seconds):
        """``mc_service_token_expiry_seconds``, read from ``seconds()`` at each
        scrape; only an MC whose token comes from the Auth Controller has it
        (a static token has no expiry, and a 0 would look like an expired one)."""
        gauge = Gauge("mc_service_token_expiry_seconds", "Seconds until the current service "
                      "token from the Auth Controller expires (0: none held)",
                      registry=self.registry)
        gauge.set_function(seconds)

    def set_build_info(self, quic_engine):
        """``mc_build_info``: ``quic_engine`` is the engine's distribution
        name, labelled with its installed version (``aioquic-1.7.2``)."""
        self.build_info.labels(_installed("mc"), platform.python_version(),
                               f"{quic_engine}-{_installed(quic_engine)}").set(1)

    def observe_python_gc(self, generation, seconds):
        self.python_gc_pause.labels(str(generation)).observe(seconds)

    def observe_lag(self, lag):
        self.reactor_lag.set(lag)
        self.reactor_lag_hist.observe(lag)


def _installed(distribution):
    """The installed version of ``distribution``, or ``unknown`` (run from a
    checkout that was never installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"

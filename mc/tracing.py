"""W3C trace context through the MC, by OpenTelemetry's API, SDK and propagator.

A client's ``trace_parent`` / ``trace_state`` (signalling fields 20 and 21) or
a GC's ``traceparent`` / ``tracestate`` gRPC headers continue the caller's
trace: the MC opens a span of its own under it, the log lines written while
that span is current carry its ``trace_id`` (``mc.ops.logs``), and the calls
it causes carry a ``traceparent`` with that trace id and a span id of the
MC's. A malformed value is ignored (the propagator's own parser decides),
never an error: the MC then starts a trace of its own.

The SDK's tracer provider is always in place, because only the SDK makes span
ids of the MC's (the API alone would pass the caller's on). Spans leave the
process only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces-only
variant) is set: then over OTLP/gRPC, configured by the SDK's standard
``OTEL_*`` variables. One provider per tree, injected, never the global one,
so several MCs in one test process do not share it.
"""

import contextlib

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: Longer values are no W3C trace context; they are dropped unparsed.
MAX_TRACEPARENT_BYTES = 55 * 2
MAX_TRACESTATE_BYTES = 512
EXPORT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

SERVER = trace.SpanKind.SERVER
_propagator = TraceContextTextMapPropagator()


def exporting(environ):
    """True when the SDK's standard variables ask for spans to be exported."""
    return any(environ.get(name) for name in EXPORT_VARIABLES)


def carrier_context(traceparent, tracestate=""):
    """The OpenTelemetry context a caller's trace context continues, or None
    when ``traceparent`` is absent, oversized or malformed."""
    if not traceparent or len(traceparent) > MAX_TRACEPARENT_BYTES:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate and len(tracestate) <= MAX_TRACESTATE_BYTES:
        carrier["tracestate"] = tracestate
    ctx = _propagator.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def metadata_context(metadata):
    """``carrier_context`` of a gRPC call's ``traceparent`` and ``tracestate``
    headers (the first of each)."""
    found = {}
    for key, value in metadata or ():
        if key in ("traceparent", "tracestate") and isinstance(value, str):
            found.setdefault(key, value)
    return carrier_context(found.get("traceparent"), found.get("tracestate", ""))


def current_trace_id():
    """The current span's trace id as 32 hex digits, or None outside a span."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_metadata():
    """The ``traceparent`` (and ``tracestate``) headers of the current span,
    for a call made within it (a heartbeat an assignment nudged); empty
    outside any span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier = {}
    _propagator.inject(carrier)
    return tuple(carrier.items())


class Tracing:
    """The MC's tracer; ``shutdown`` flushes what the exporter holds."""

    def __init__(self, environ, exporter=None):
        self.provider = TracerProvider(resource=Resource.create({"service.name": "mc"}))
        if exporter is None and exporting(environ):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        if exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.exporting = exporter is not None
        self._tracer = self.provider.get_tracer("mc")

    def __repr__(self):
        return f"<Tracing exporting={self.exporting}>"

    @contextlib.contextmanager
    def span(self, name, parent=None, kind=trace.SpanKind.INTERNAL, end=True):
        """Make a span of the MC's under ``parent`` (a context, None: the
        current one, a new trace outside any span) the current one for the
        ``with`` block; the block gets the span (with ``end=False`` it ends
        it itself, e.g. when a Deferred fires)."""
        span = self._tracer.start_span(name, context=parent, kind=kind)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            if end:
                span.end()

    def continued(self, name, traceparent, tracestate="", end=True):
        """``span`` of kind SERVER continuing a caller's W3C trace context
        (a trace of the MC's own when it is absent or malformed)."""
        return self.span(name, carrier_context(traceparent, tracestate), trace.SpanKind.SERVER,
                         end)

    def client_metadata(self, name, parent=None):
        """``(span, metadata)`` for an outgoing call caused under ``parent`` (a
        context, None: the current one): a client span of the MC's and the
        ``traceparent`` (and ``tracestate``) headers naming it. The caller
        ends the span when the call is over."""
        span = self._tracer.start_span(name, context=parent, kind=trace.SpanKind.CLIENT)
        carrier = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, tuple(carrier.items())

    def shutdown(self):
        """Export what is held (bounded by the SDK's own timeouts); blocking."""
        self.provider.shutdown()

"""OpenTelemetry tracing: a span per RPC with database spans beneath, exported over OTLP.

Off unless the standard OTEL_* variables name an exporter endpoint; then the
SDK reads its own OTEL_* settings (service name, sampler, headers...) as usual.
Off means no interceptor and no instrumented driver: no cost on any call.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import server_interceptor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from memstore_server import __version__

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(environ: Mapping[str, str]) -> bool:
    """True when the environment asks for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(environ.get(name) for name in _ENDPOINT_VARIABLES)


def otlp_tracer_provider() -> TracerProvider:
    """A provider exporting over OTLP/gRPC to the endpoint the OTEL_* variables name."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: "memstore", "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def instrument(provider: trace.TracerProvider) -> grpc.ServerInterceptor:  # type: ignore[type-arg]
    """Trace database calls made from now on, and return the interceptor that traces RPCs.

    The interceptor extracts W3C trace context from the call's metadata, so a
    caller's trace continues into memstore.
    """
    instrumentor = Psycopg2Instrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    interceptor: grpc.ServerInterceptor = server_interceptor(  # type: ignore[type-arg,no-untyped-call]
        tracer_provider=provider
    )
    return interceptor


def uninstrument() -> None:
    Psycopg2Instrumentor().uninstrument()

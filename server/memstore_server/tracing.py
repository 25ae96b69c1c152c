"""OpenTelemetry tracing: a span per RPC with database spans beneath, exported over OTLP.

Off unless the standard OTEL_* variables name an exporter endpoint; then the
SDK reads its own OTEL_* settings (service name, sampler, headers...) as usual.
Off means no interceptor and no instrumented driver: no cost on any call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from memstore_server import __version__
from memstore_server.handlers import Behaviour, MethodInfo, Wrapper

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


def instrument(provider: trace.TracerProvider) -> Wrapper:
    """Trace database calls made from now on, and return the wrapper that gives each RPC a span.

    The span continues the caller's trace when the call's metadata carries W3C
    trace context (``traceparent``). It is made here rather than by
    opentelemetry-instrumentation-grpc's aio interceptor, which expects every
    response stream to be an async generator: memstore's streams are writers
    (streams.py needs to bound each write), and the interceptor breaks them.
    """
    instrumentor = Psycopg2Instrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    tracer = provider.get_tracer("memstore_server", __version__)

    def wrap(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
        attributes = {"rpc.system": "grpc", "rpc.service": info.service, "rpc.method": info.method}

        async def traced(request: Any, context: Any) -> Any:
            carrier = {
                key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
            }
            with tracer.start_as_current_span(
                info.full_method,
                context=propagate.extract(carrier),
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                # observe.py sets the status from the gRPC code, which is what callers see.
                record_exception=False,
                set_status_on_exception=False,
            ):
                return await behaviour(request, context)

        return traced

    return wrap


def uninstrument() -> None:
    Psycopg2Instrumentor().uninstrument()

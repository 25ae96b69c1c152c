"""Metrics scraped over HTTP, a real span tree, and JSON log lines, after real calls."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server import logs, metrics, tracing
from memstore_server.config import Settings
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import (
    TIMEOUT,
    MetricSamples,
    RunningServer,
    ServerAddress,
    eventually,
    free_port,
    scrape_metrics,
    unique,
    wait_for,
)

USER_SERVICE = "memstore.v1.UserService"


@pytest.fixture
def metrics_url(db: peewee.Database) -> Iterator[str]:
    listen = f"127.0.0.1:{free_port()}"
    http = metrics.serve_metrics(listen)
    yield f"http://{listen}/metrics"
    http.shutdown()


def sample(samples: MetricSamples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_calls_by_method_and_code(
    metrics_url: str, users: users_pb2_grpc.UserServiceStub
) -> None:
    before = scrape_metrics(metrics_url)
    user_id = unique("metric")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    for _ in range(3):
        users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            users.GetUser(users_pb2.GetUserRequest(user_id=unique("ghost")), timeout=TIMEOUT)
    chunks = list(
        users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(cursor=0, chunk_size=1000), timeout=TIMEOUT)
    )
    streamed = sum(len(chunk.users) for chunk in chunks)
    after = scrape_metrics(metrics_url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    unary = {"grpc_type": "unary", "grpc_service": USER_SERVICE}
    assert delta("grpc_server_started_total", grpc_method="GetUser", **unary) == 5
    assert delta("grpc_server_handled_total", grpc_method="GetUser", grpc_code="OK", **unary) == 3
    assert delta("grpc_server_handled_total", grpc_method="GetUser", grpc_code="NOT_FOUND", **unary) == 2
    assert delta("grpc_server_handled_total", grpc_method="CreateUser", grpc_code="OK", **unary) == 1
    assert delta("grpc_server_handling_seconds_count", grpc_method="GetUser", **unary) == 5
    assert delta("grpc_server_msg_received_total", grpc_method="GetUser", **unary) == 5
    stream = {"grpc_type": "server_stream", "grpc_service": USER_SERVICE, "grpc_method": "ListUsersChunked"}
    assert delta("grpc_server_handled_total", grpc_code="OK", **stream) == 1
    assert delta("grpc_server_msg_sent_total", **stream) == len(chunks)
    assert delta("memstore_users_streamed_total") == streamed
    assert sample(after, "memstore_build_info", version="0.1.0") == 1
    assert sample(after, "memstore_db_pool_max_connections", pool="primary") == 32
    assert sample(after, "memstore_db_pool_connections", pool="primary", state="in_use") == 0
    assert sample(after, "memstore_db_pool_connections", pool="primary", state="idle") >= 1
    # No read replica: nothing goes to one.
    assert sample(after, "memstore_db_replica_available") == 0
    assert delta("memstore_db_pool_wait_seconds_count") >= 6


@pytest.fixture
def traced(db: peewee.Database) -> Iterator[tuple[users_pb2_grpc.UserServiceStub, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from memstore_server.database import open_database

    # A pool of its own: only connections opened after instrumenting are traced.
    pool = open_database(db.connect_params.get("dsn", "") or _dsn_of(db), pool_size=2, pool_timeout=5)
    running = RunningServer(
        Settings(listen="127.0.0.1:0"), pool, tracer_provider=provider, database_health=False
    )
    with grpc.insecure_channel(running.target) as channel:
        yield users_pb2_grpc.UserServiceStub(channel), exporter
    running.stop()
    pool.close_all()
    tracing.uninstrument()


def _dsn_of(db: peewee.Database) -> str:
    params = {
        **{k: v for k, v in db.connect_params.items() if k != "connection_factory"},
        "dbname": db.database,
    }
    return " ".join(f"{key}={value}" for key, value in params.items())


def test_a_call_makes_a_server_span_with_database_spans_beneath_continuing_the_callers_trace(
    traced: tuple[users_pb2_grpc.UserServiceStub, InMemorySpanExporter],
) -> None:
    users, exporter = traced
    caller = TracerProvider().get_tracer("caller")
    with caller.start_as_current_span("caller-operation") as parent:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata = tuple(carrier.items())
        users.CreateUser(
            users_pb2.CreateUserRequest(user_id=unique("traced")), timeout=TIMEOUT, metadata=metadata
        )
    caller_trace = parent.get_span_context().trace_id

    spans = exporter.get_finished_spans()
    (server_span,) = [s for s in spans if s.name == f"/{USER_SERVICE}/CreateUser"]
    assert server_span.kind == trace.SpanKind.SERVER
    assert server_span.context.trace_id == caller_trace  # the caller's trace continues here
    assert server_span.parent is not None
    assert server_span.parent.span_id == parent.get_span_context().span_id
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.grpc.status_code"] == 0
    assert len(str(server_span.attributes["memstore.request_id"])) == 32
    children = [s for s in spans if s.parent is not None and s.parent.span_id == server_span.context.span_id]
    assert children, [s.name for s in spans]
    assert all(child.kind == trace.SpanKind.CLIENT for child in children)
    assert any("INSERT" in child.name or "INSERT" in str(child.attributes) for child in children)


def test_a_failed_call_marks_its_span_as_an_error(
    traced: tuple[users_pb2_grpc.UserServiceStub, InMemorySpanExporter],
) -> None:
    users, exporter = traced
    with pytest.raises(grpc.RpcError):
        users.GetUser(users_pb2.GetUserRequest(user_id=unique("ghost")), timeout=TIMEOUT)
    # The status reaches the caller before the server's span ends, so wait for the span.
    (span,) = eventually(lambda: [s for s in exporter.get_finished_spans() if s.name.endswith("/GetUser")])
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code == trace.StatusCode.ERROR


def test_a_traced_stream_is_answered_in_full_under_one_span(
    traced: tuple[users_pb2_grpc.UserServiceStub, InMemorySpanExporter],
) -> None:
    users, exporter = traced
    user_id = unique("streamed")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    chunks = list(users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=5), timeout=TIMEOUT))
    assert user_id in {user.user_id for chunk in chunks for user in chunk.users}
    assert chunks[-1].next_cursor == 0
    (span,) = eventually(
        lambda: [s for s in exporter.get_finished_spans() if s.name.endswith("/ListUsersChunked")]
    )
    assert span.kind == trace.SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 0


def test_tracing_is_off_without_an_endpoint() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"})


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("INFO", "json", stream)
    yield stream
    logs.shutdown()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_json_logs_carry_the_call_fields_and_never_the_token(
    json_log: io.StringIO, start_server: Callable[[Settings], RunningServer]
) -> None:
    secret_key = "key-" + unique("s")
    handle = start_server(Settings(listen="127.0.0.1:0", api_keys=(secret_key,)))
    with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        stub.CreateUser(
            users_pb2.CreateUserRequest(user_id=unique("logged")),
            timeout=TIMEOUT,
            metadata=(("authorization", f"Bearer {secret_key}"),),
        )
        with pytest.raises(grpc.RpcError):
            stub.GetUser(
                users_pb2.GetUserRequest(user_id="x"),
                timeout=TIMEOUT,
                metadata=(("authorization", "Bearer wrong-" + secret_key),),
            )

    # Lines are written by the log's own thread, the failed call's after its status was sent.
    def access_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
        return [line for line in lines if line["logger"] == "memstore_server.access"]

    assert wait_for(lambda: len(access_lines()) >= 2)
    access = access_lines()
    created = next(line for line in access if line["method"].endswith("/CreateUser"))
    assert created["code"] == "OK"
    assert created["level"] == "INFO"
    assert isinstance(created["duration_ms"], float)
    assert created["peer"].startswith("ipv4:127.0.0.1:")
    assert len(created["request_id"]) == 32
    assert "trace_id" in created
    assert "time" in created
    refused = next(line for line in access if line["method"].endswith("/GetUser"))
    assert refused["code"] == "UNAUTHENTICATED"
    assert secret_key not in json_log.getvalue()


def test_streams_are_logged_when_they_end_with_the_messages_they_sent(
    users: users_pb2_grpc.UserServiceStub, server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    """A health Watch is one line when the watcher goes, with its whole duration; never OK at open."""
    caplog.set_level(logging.INFO, logger="memstore_server.access")
    for _ in range(3):
        users.CreateUser(users_pb2.CreateUserRequest(user_id=unique("logged")), timeout=TIMEOUT)
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.4)
        assert not [r for r in caplog.records if "Health/Watch" in r.getMessage()], "logged while still open"
        watch.cancel()
    chunks = list(users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=1), timeout=TIMEOUT))

    def line(method: str) -> str | None:
        found = [r.getMessage() for r in list(caplog.records) if f"/{method} " in r.getMessage()]
        return found[-1] if found else None

    assert wait_for(lambda: line("Watch") is not None and line("ListUsersChunked") is not None)
    watched = line("Watch")
    assert watched is not None
    assert " CANCELLED " in watched
    assert " messages=1 " in watched
    assert float(watched.split()[2].removesuffix("ms")) >= 400
    streamed = line("ListUsersChunked")
    assert streamed is not None
    assert " OK " in streamed
    assert f" messages={len(chunks)} " in streamed

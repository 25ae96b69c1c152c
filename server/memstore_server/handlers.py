"""The table of every method the server answers, built once at start-up.

gRPC looks each call's method up in this table and nothing else: there is no
interceptor, so no code runs per call to find or build a handler, and a call to
a method that is not in the table is answered UNIMPLEMENTED by gRPC itself,
leaving nothing behind (no cache keyed by made-up paths).

Each method's behaviour is wrapped here, once, by every wrapper (observation,
error boundary, authentication...). A wrapper is a function from a behaviour to
a behaviour; a behaviour is ``async def (request, context)``. Streaming
responses are always written through ``context.write`` (an async generator is
turned into such a writer), so a wrapper can watch every message of a stream by
handing the behaviour a context of its own.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

Behaviour = Callable[[Any, Any], Awaitable[Any]]
Deserializer = Callable[[bytes], Any]
Handler = Any  # grpc.RpcMethodHandler; its stubs do not fit the four kinds of behaviour


@dataclass(frozen=True)
class MethodInfo:
    """What wrappers know of the method they wrap, worked out once per method."""

    full_method: str  # "/memstore.v1.UserService/GetUser"
    service: str
    method: str
    request_streaming: bool
    response_streaming: bool

    @property
    def rpc_type(self) -> str:
        """go-grpc-prometheus's grpc_type label: unary, server_stream, client_stream, bidi_stream."""
        if self.request_streaming:
            return "bidi_stream" if self.response_streaming else "client_stream"
        return "server_stream" if self.response_streaming else "unary"


Wrapper = Callable[[Behaviour, MethodInfo], Behaviour]
DeserializerWrapper = Callable[[Deserializer], Deserializer]


def _passing_bytes(message_class: type[Message]) -> Callable[[Message | bytes], bytes]:
    """A response serializer that also passes through a response already serialized (bytes)."""
    serialize = message_class.SerializeToString

    def to_bytes(response: Message | bytes) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return to_bytes


def _as_writer(behaviour: Callable[..., Any], info: MethodInfo) -> Behaviour:
    """The behaviour of a response-streaming method as a coroutine writing through ``context.write``."""
    if inspect.isasyncgenfunction(behaviour):

        async def write_all(request: Any, context: Any) -> None:
            # Closed here, not whenever the collector finds it: a cancelled stream's
            # ``finally`` blocks (a watcher's place, a listing's connection) run at once.
            async with contextlib.aclosing(behaviour(request, context)) as stream:
                async for message in stream:
                    await context.write(message)

        return write_all
    if inspect.iscoroutinefunction(behaviour):
        return behaviour
    raise TypeError(f"{info.full_method}: a handler must be async (an async def or async generator)")


_KINDS = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


def _is_async(handler: Handler) -> bool:
    """Whether the handler is async. A sync one is left out of the table, so gRPC answers
    UNIMPLEMENTED: that is what a library's servicer without an aio version of a method
    (the generated base method) would answer anyway, and no thread is spent on it."""
    behaviour = getattr(
        handler, _KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))][1]
    )
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


class HandlerTable:
    """Collects every service's method handlers, then registers them wrapped, once.

    Generated ``add_*Servicer_to_server`` functions (health, reflection) take an
    object of this class in place of the server, so their handlers are wrapped
    like memstore's own.
    """

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Handler]] = {}

    # The two methods generated add_*_to_server functions call on a server.
    def add_generic_rpc_handlers(self, generic_handlers: Sequence[Any]) -> None:
        """Ignored: generated code registers the same handlers by name just after."""

    def add_registered_method_handlers(self, service_name: str, handlers: Mapping[str, Handler]) -> None:
        self._services[service_name] = dict(handlers)

    def add_service(self, service: ServiceDescriptor, servicer: object) -> None:
        """``servicer``'s methods for ``service``, found by name as the generated code would,
        except that a handler may return its response already serialized (bytes)."""
        handlers = {}
        for method in service.methods:
            factory, _ = _KINDS[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = factory(
                getattr(servicer, method.name),
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=_passing_bytes(message_factory.GetMessageClass(method.output_type)),
            )
        self._services[service.full_name] = handlers

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(self._services)

    def register(
        self,
        server: grpc.aio.Server,
        wrappers: Sequence[Wrapper],
        *,
        deserializer: DeserializerWrapper | None = None,
    ) -> None:
        """Register every method on ``server``, its behaviour wrapped by ``wrappers`` (outermost
        first) and its request deserializer by ``deserializer``."""
        for service_name, handlers in self._services.items():
            wrapped = {
                name: self._wrap(f"/{service_name}/{name}", handler, wrappers, deserializer)
                for name, handler in handlers.items()
                if _is_async(handler)
            }
            # Registered methods are looked up in C, with no Python on the per-call path;
            # the stubs do not declare this grpc.aio.Server method yet.
            server.add_registered_method_handlers(service_name, wrapped)  # type: ignore[attr-defined]

    @staticmethod
    def _wrap(
        full_method: str,
        handler: Handler,
        wrappers: Sequence[Wrapper],
        deserializer: DeserializerWrapper | None,
    ) -> Handler:
        service, _, method = full_method[1:].rpartition("/")
        streaming = (bool(handler.request_streaming), bool(handler.response_streaming))
        info = MethodInfo(full_method, service, method, *streaming)
        factory, attribute = _KINDS[streaming]
        behaviour: Callable[..., Any] = getattr(handler, attribute)
        if info.response_streaming:
            behaviour = _as_writer(behaviour, info)
        elif not inspect.iscoroutinefunction(behaviour):
            raise TypeError(f"{full_method}: a handler must be async (an async def or async generator)")
        for wrapper in reversed(wrappers):
            behaviour = wrapper(behaviour, info)
        request_deserializer = handler.request_deserializer
        if deserializer is not None and request_deserializer is not None:
            request_deserializer = deserializer(request_deserializer)
        return factory(
            behaviour,
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )

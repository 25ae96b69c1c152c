"""What server reflection answers from: memstore's protos with their comments, methods findable.

gRPC's reflection service reads files from a descriptor pool and serializes them
with ``CopyToProto``, which never includes comments, and protobuf's pool finds no
method by its full name. So ``grpcurl describe memstore.v1.User`` showed no
documentation, and ``grpcurl describe memstore.v1.UserService.ListUsersChunked``
failed with "Symbol not found". This pool answers reflection's questions from the
default pool, but hands out memstore's files as the FileDescriptorProtos that
``make proto`` wrote with source info (memstore_v1.binpb), and resolves a method
name to its service's file.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

_DESCRIPTOR_SET = "memstore_v1.binpb"


def documented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """memstore's proto files, by name, with their comments.

    protoc writes each field's ``json_name`` (``userId``) into a descriptor set;
    the files reflection served before carried none, so grpcurl printed and took
    the proto field names (``user_id``), as the README and the reference page do.
    They are left out here too, so that stays so.
    """
    data = resources.files("memstore_server").joinpath(_DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    for file in files:
        _drop_json_names(file.message_type)
    return {file.name: file for file in files}


def _drop_json_names(messages: Any) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


class _DocumentedFile:
    """A file descriptor as reflection uses it (name, dependencies, CopyToProto), with comments."""

    def __init__(self, file: FileDescriptor, pool: DocumentedPool) -> None:
        self._file = file
        self._pool = pool
        self.name = file.name

    @property
    def dependencies(self) -> list[_DocumentedFile]:
        return [self._pool.wrap(dependency) for dependency in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802 - protobuf's name
        documented = self._pool.documented.get(self.name)
        if documented is None:
            self._file.CopyToProto(proto)
        else:
            proto.CopyFrom(documented)


class DocumentedPool:
    """The default descriptor pool, as grpc_reflection's servicer asks of it."""

    def __init__(self, documented: dict[str, descriptor_pb2.FileDescriptorProto] | None = None) -> None:
        self._pool = descriptor_pool.Default()
        self.documented = documented_files() if documented is None else documented

    def wrap(self, file: FileDescriptor) -> _DocumentedFile:
        return _DocumentedFile(file, self)

    def FindFileByName(self, name: str) -> _DocumentedFile:  # noqa: N802 - the pool interface
        return self.wrap(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _DocumentedFile:  # noqa: N802
        try:
            return self.wrap(self._pool.FindFileContainingSymbol(symbol))
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return self.wrap(service.file)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

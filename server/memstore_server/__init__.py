"""memstore server: the gRPC service that owns the Users and Sessions of a memory store."""

__version__ = "0.1.0"

"""Generated protobuf and gRPC code for the memstore.v1 API; produced by ``make proto``."""

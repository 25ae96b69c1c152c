"""gRPC servicers, one per service: request -> validated arguments -> store call -> response."""

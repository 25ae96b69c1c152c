"""memstore: generated API packages (``memstore.v1``)."""

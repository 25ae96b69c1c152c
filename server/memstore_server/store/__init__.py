"""Queries and transactions, one module per resource; rows leave here as proto messages."""

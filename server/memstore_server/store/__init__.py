"""Queries and transactions, one module per resource; they return data, never response messages."""

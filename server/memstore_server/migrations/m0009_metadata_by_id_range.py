"""A GIN index of each user's metadata under its id range, so a filtered page reads one page's worth.

The plain GIN index on ``metadata`` (m0007) answers "which users contain this" with
every match in the table: a page of a filter that 1% of users match first reads
all of that 1% (10,000 rows at a million users, more as the table grows), then sorts
them by id to keep 100. Walking the primary key instead reads 100 rows per match.
Neither bounds a page's work by the page.

This index keys each user's metadata by the range of 2,048 ids it falls in:
``{"<id >> 11>": metadata}``. With ``jsonb_path_ops`` every key path then starts
with the range, so ``... @> '{"219": {"plan": "pro"}}'`` finds only the matches
of ids 448,512 to 450,559, and a page asks for the few ranges after its cursor
that hold enough matches (store/id_ranges.py). Its cost: a second GIN index to
keep up on each write of a user.

``memstore_metadata_in_id_range`` is the indexed expression. It is plain SQL
over immutable built-ins (``jsonb_set``, not the stable ``jsonb_build_object``),
and not STRICT, so the planner inlines it both here and in queries: the query's
expression then matches the index's, and rechecking a row costs no function call.
"""

from __future__ import annotations

from memstore_server.migrations import Migration, run_in_order

# Keep in step with store/id_ranges.py's RANGE_BITS.
STATEMENTS = (
    """
    CREATE FUNCTION memstore_metadata_in_id_range(id bigint, metadata jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT jsonb_set('{}'::jsonb, ARRAY[(id >> 11)::text], metadata) $$
    """,
    "CREATE INDEX users_metadata_in_id_range_idx ON users "
    "USING gin (memstore_metadata_in_id_range(id, metadata) jsonb_path_ops)",
)


MIGRATION = Migration(version=9, name="metadata_by_id_range", apply=run_in_order(STATEMENTS))

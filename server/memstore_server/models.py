"""The schema as Peewee models: what the migrations build, described for queries.

The tables are created by ``migrations/``, never by ``create_table``; a test checks
that every model field exists in the migrated database with the expected type.
"""

from __future__ import annotations

import peewee
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

database_proxy = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class User(BaseModel):
    id = peewee.BigAutoField()
    uuid = peewee.UUIDField()
    user_id = peewee.TextField(unique=True)
    email = peewee.TextField(default="")
    first_name = peewee.TextField(default="")
    last_name = peewee.TextField(default="")
    metadata = BinaryJSONField(default=dict)
    session_count = peewee.BigIntegerField(default=0)
    created_at = DateTimeTZField()
    updated_at = DateTimeTZField()
    # The serialized memstore.v1.User, kept fresh by store/user_messages.py.
    message = peewee.BlobField(null=True)

    class Meta:
        table_name = "users"


class Session(BaseModel):
    id = peewee.BigAutoField()
    uuid = peewee.UUIDField()
    session_id = peewee.TextField(unique=True)
    user = peewee.ForeignKeyField(
        User, field=User.user_id, column_name="user_id", null=True, on_delete="CASCADE", backref="sessions"
    )
    metadata = BinaryJSONField(default=dict)
    created_at = DateTimeTZField()
    updated_at = DateTimeTZField()

    class Meta:
        table_name = "sessions"
        indexes = ((("user", "id"), False),)

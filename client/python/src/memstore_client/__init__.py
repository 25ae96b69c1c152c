"""memstore-client: the Python client of memstore, sync and async.

from memstore_client import MemstoreClient, CreateUserRequest

with MemstoreClient("localhost:50051") as client:
    user = client.user.add(CreateUserRequest(user_id="user123", metadata={"foo": "bar"}))
"""

from memstore_client._transport import ResumePolicy
from memstore_client.aio import AsyncMemstoreClient
from memstore_client.client import MemstoreClient
from memstore_client.errors import (
    AlreadyExistsError,
    AuthError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    MemstoreError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    UnavailableError,
)
from memstore_client.models import (
    CreateSessionRequest,
    CreateUserRequest,
    Session,
    UpdateSessionRequest,
    UpdateUserRequest,
    User,
    UserEvent,
    WatchUsersResponse,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "AsyncMemstoreClient",
    "AuthError",
    "CancelledError",
    "CreateSessionRequest",
    "CreateUserRequest",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "MemstoreClient",
    "MemstoreError",
    "NotFoundError",
    "OutOfRangeError",
    "ResourceExhaustedError",
    "ResumePolicy",
    "Session",
    "UnavailableError",
    "UpdateSessionRequest",
    "UpdateUserRequest",
    "User",
    "UserEvent",
    "WatchUsersResponse",
]

"""Bearer-token authentication: API keys (kept as SHA-256 digests) and HS256 JWTs.

Off unless keys or a JWT secret are configured. A caller learns only that its
credentials were missing or invalid, never which part failed; the log says more.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from memstore_server.errors import Unauthenticated
from memstore_server.handlers import Behaviour, MethodInfo

logger = logging.getLogger(__name__)

# Health checks answer without credentials: load balancers and probes carry none.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_HASHED_PREFIX = "sha256:"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_keys_file(path: Path) -> list[bytes]:
    """Digests of the keys in ``path``: one per line, either the key or ``sha256:<hex digest>``.

    Blank lines and lines starting with ``#`` are skipped, so the file can be
    commented and can hold digests only, never a key in clear.
    """
    digests = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(_HASHED_PREFIX):
            try:
                value = bytes.fromhex(line.removeprefix(_HASHED_PREFIX))
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not a hex SHA-256 digest") from error
            if len(value) != hashlib.sha256().digest_size:
                raise ValueError(f"{path}:{number}: a SHA-256 digest has 64 hex digits")
            digests.append(value)
        else:
            digests.append(digest(line))
    return digests


@dataclass(frozen=True)
class JwtRules:
    """What an HS256 bearer JWT must satisfy besides its signature."""

    secret: str = field(repr=False)
    # A token without "exp" never expires, so it is refused unless this is set.
    allow_no_exp: bool = False
    # When given, the token's "aud" must include it / its "iss" must equal it.
    audience: str | None = None
    issuer: str | None = None


class Authenticator:
    """Decides whether a bearer token is valid."""

    def __init__(self, key_digests: Iterable[bytes], jwt_rules: JwtRules | None) -> None:
        self._key_digests = tuple(key_digests)
        self._jwt = jwt_rules
        required = [] if jwt_rules is None or jwt_rules.allow_no_exp else ["exp"]
        if jwt_rules is not None:
            required += [
                claim for claim, value in (("aud", jwt_rules.audience), ("iss", jwt_rules.issuer)) if value
            ]
        self._required_claims = required

    @property
    def enabled(self) -> bool:
        return bool(self._key_digests) or self._jwt is not None

    @property
    def mode(self) -> str:
        """The credentials enforced, as the start-up log states them."""
        kinds = [f"{len(self._key_digests)} API key(s)"] if self._key_digests else []
        if self._jwt is not None:
            kinds.append("HS256 JWTs" + ("" if self._jwt.allow_no_exp else " with exp"))
        return "on: " + " or ".join(kinds) if kinds else "off"

    def is_valid(self, token: str) -> bool:
        presented = digest(token)
        # Compare against every key, always, so timing tells nothing about which matched.
        matched = False
        for stored in self._key_digests:
            matched |= hmac.compare_digest(presented, stored)
        if matched:
            return True
        if self._jwt is not None and token.count(".") == 2:
            try:
                jwt.decode(
                    token,
                    self._jwt.secret,
                    algorithms=["HS256"],
                    audience=self._jwt.audience,
                    issuer=self._jwt.issuer,
                    options={"require": self._required_claims, "verify_aud": self._jwt.audience is not None},
                )
            except jwt.InvalidTokenError as error:
                logger.info("rejected a JWT: %s", error)
                return False
            return True
        return False


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def authentication(authenticator: Authenticator) -> Callable[[Behaviour, MethodInfo], Behaviour]:
    """A wrapper refusing every RPC but health checks unless it carries a valid bearer token."""

    def wrap(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
        if info.full_method.startswith(_OPEN_PREFIXES):
            return behaviour

        async def authenticated(request: Any, context: Any) -> Any:
            token = bearer_token(context.invocation_metadata() or ())
            if token is None or not authenticator.is_valid(token):
                logger.info(
                    "refused %s: %s credentials", info.full_method, "no" if token is None else "invalid"
                )
                raise Unauthenticated(
                    "missing or invalid credentials: send 'authorization: Bearer <token>'",
                    reason="UNAUTHENTICATED",
                )
            return await behaviour(request, context)

        return authenticated

    return wrap

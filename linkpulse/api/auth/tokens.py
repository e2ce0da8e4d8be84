"""JWTs from an identity provider, verified with PyJWT (no hand-written crypto).

The signature is checked against a configured PEM public key or a JWKS file
(the key picked by the token's ``kid``); ``exp``, ``aud`` and ``iss`` are
required and checked; then three claims (names configurable) give the role,
the tenant and, for sellers, the seller. Every refusal says what is wrong.

>>> v = JwtVerifier(keys=None, algorithms=["RS256"], audience="a", issuer="i")
>>> v.verify("not-a-jwt")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.api.auth.tokens.TokenError: no JWT verification key is configured (set ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt

from linkpulse.api.auth.roles import Principal, parse_role
from linkpulse.config import Settings
from linkpulse.errors import ConfigError, LinkpulseError

__all__ = ["ClaimNames", "JwtVerifier", "TokenError", "looks_like_jwt"]


class TokenError(LinkpulseError):
    """A bearer token was refused; the message says why (shown to the client)."""


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: a JWT rather than an API key.

    >>> looks_like_jwt("a.b.c"), looks_like_jwt("lp_0123abcd_xyz")
    (True, False)
    """
    return token.count(".") == 2


@dataclass(frozen=True)
class ClaimNames:
    """Which claims carry the role, the tenant and the seller."""

    role: str = "role"
    tenant: str = "tenant"
    seller: str = "seller"


class JwtVerifier:
    """Verify tokens with a PEM key or a JWKS set; map their claims to a ``Principal``."""

    def __init__(
        self,
        *,
        keys: Any | None,
        algorithms: list[str],
        audience: str | None,
        issuer: str | None,
        claims: ClaimNames | None = None,
        leeway_s: float = 30,
    ) -> None:
        self._keys = keys  # a PEM public key (str) or a jwt.PyJWKSet
        self._algorithms = algorithms
        self._audience = audience
        self._issuer = issuer
        self._claims = claims or ClaimNames()
        self._leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        """Load the key or JWKS file the settings name (ConfigError if unreadable)."""
        keys: Any | None = None
        path: Path | None = settings.auth_jwt_public_key_file or settings.auth_jwt_jwks_file
        try:
            if settings.auth_jwt_public_key_file is not None:
                keys = settings.auth_jwt_public_key_file.read_text()
            elif settings.auth_jwt_jwks_file is not None:
                keys = jwt.PyJWKSet.from_dict(json.loads(settings.auth_jwt_jwks_file.read_text()))
        except (OSError, ValueError, jwt.PyJWTError) as e:
            msg = f"cannot load the JWT verification key from {path}: {e}"
            raise ConfigError(msg) from e
        return cls(
            keys=keys,
            algorithms=[a.strip() for a in settings.auth_jwt_algorithms.split(",") if a.strip()],
            audience=settings.auth_jwt_audience,
            issuer=settings.auth_jwt_issuer,
            claims=ClaimNames(
                settings.auth_jwt_role_claim,
                settings.auth_jwt_tenant_claim,
                settings.auth_jwt_seller_claim,
            ),
        )

    def _key_for(self, token: str) -> Any:
        if self._keys is None:
            msg = (
                "no JWT verification key is configured (set LINKPULSE_AUTH_JWT_PUBLIC_KEY_FILE"
                " or LINKPULSE_AUTH_JWT_JWKS_FILE)"
            )
            raise TokenError(msg)
        if isinstance(self._keys, str):
            return self._keys
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as e:
            msg = f"malformed JWT: {e}"
            raise TokenError(msg) from e
        for key in self._keys.keys:
            if key.key_id == kid:
                return key.key
        msg = f"JWT signed with key id {kid!r}, which is not in the configured JWKS"
        raise TokenError(msg)

    def verify(self, token: str) -> Principal:
        """The principal a valid token names, or ``TokenError`` saying what is wrong."""
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", *(["aud"] if self._audience else [])]},
            )
        except jwt.ExpiredSignatureError as e:
            msg = "the JWT has expired (exp is in the past)"
            raise TokenError(msg) from e
        except jwt.InvalidAudienceError as e:
            msg = f"the JWT's audience (aud) is not {self._audience!r}"
            raise TokenError(msg) from e
        except jwt.InvalidIssuerError as e:
            msg = f"the JWT's issuer (iss) is not {self._issuer!r}"
            raise TokenError(msg) from e
        except jwt.MissingRequiredClaimError as e:
            msg = f"the JWT lacks the required claim {e.claim!r}"
            raise TokenError(msg) from e
        except jwt.PyJWTError as e:
            msg = f"JWT refused: {e}"
            raise TokenError(msg) from e
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = self._claims
        role_claim, tenant, seller = (
            claims.get(names.role),
            claims.get(names.tenant),
            claims.get(names.seller),
        )
        if not isinstance(role_claim, str):
            msg = f"JWT claim {names.role!r} (the role) is missing or not a string"
            raise TokenError(msg)
        if not isinstance(tenant, str) or not tenant:
            msg = f"JWT claim {names.tenant!r} (the tenant) is missing or not a string"
            raise TokenError(msg)
        if seller is not None and not isinstance(seller, str):
            msg = f"JWT claim {names.seller!r} (the seller) must be a string"
            raise TokenError(msg)
        try:
            role = parse_role(role_claim)
            return Principal(
                id=f"jwt:{claims.get('sub', '?')}",
                role=role,
                tenant=tenant,
                seller=seller if role.value == "seller" else None,
                kind="jwt",
                expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
            )
        except ValueError as e:
            msg = f"JWT claims refused: {e}"
            raise TokenError(msg) from e

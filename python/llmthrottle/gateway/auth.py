"""Who is calling: a virtual key (`Authorization: Bearer ltk_...` as the OpenAI SDK sends it,
or `x-api-key` as the Anthropic SDK does), or a JWT whose claims name the tenant, team, user
and tier: HS256 with the gateway's secret, or RS256/ES256 with a key of a JWKS file, chosen by
the token's `kid` (PyJWT verifies those). `exp`, `nbf` and `aud` are checked the same way for
all. Nothing presented is ever logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from .._native import LlmthrottleError
from .keys import Caller, KeyStore

__all__ = ["Authenticator", "Refused"]


class Refused(LlmthrottleError):
    """The caller is not let in: `status` 401 (who are you?) or 403 (not this)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def presented_credential(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key") or None


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class Authenticator:
    def __init__(
        self,
        keys: KeyStore,
        *,
        jwt_secret: bytes | None = None,
        jwt_audience: str | None = None,
        jwks_file: str | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        self.keys = keys
        self.jwt_secret = jwt_secret
        self.jwt_audience = jwt_audience
        self.leeway_s = leeway_s
        self.jwks: dict[str, Any] | None = _load_jwks(jwks_file) if jwks_file is not None else None

    def caller(self, headers: Mapping[str, str]) -> Caller:
        presented = presented_credential(headers)
        if presented is None:
            raise Refused(401, "no API key: send Authorization: Bearer <key> (or x-api-key)")
        if presented.count(".") == 2 and (self.jwt_secret is not None or self.jwks is not None):
            return self._jwt(presented)
        caller = self.keys.caller(presented)
        if caller is None:
            raise Refused(401, "invalid, revoked or expired API key")
        return caller

    def _jwt(self, token: str) -> Caller:
        header_b64, payload_b64, signature_b64 = token.split(".")
        try:
            header = json.loads(_b64(header_b64))
            claims = json.loads(_b64(payload_b64))
            signature = _b64(signature_b64)
        except (ValueError, TypeError):
            raise Refused(401, "malformed bearer token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Refused(401, "malformed bearer token")
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.jwt_secret is not None:
            expected = hmac.new(self.jwt_secret, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, signature):
                raise Refused(401, "bearer token signature does not match")
        elif algorithm in ("RS256", "ES256") and self.jwks is not None:
            self._verify_with_jwks(token, header, str(algorithm))
        else:
            accepted = ["HS256"] if self.jwt_secret is not None else []
            accepted += ["RS256", "ES256"] if self.jwks is not None else []
            raise Refused(401, f"unsupported bearer token algorithm {algorithm!r} (accepted: {', '.join(accepted)})")
        now = time.time()
        if not _number(claims.get("exp")) or claims["exp"] + self.leeway_s < now:
            raise Refused(401, "bearer token expired (or has no exp)")
        if _number(claims.get("nbf")) and claims["nbf"] - self.leeway_s > now:
            raise Refused(401, "bearer token not valid yet")
        if self.jwt_audience is not None:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self.jwt_audience not in audiences:
                raise Refused(401, "bearer token is for another audience")
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise Refused(403, "bearer token names no tenant")
        models = claims.get("models")
        subject = claims.get("sub")
        return Caller(
            key_id=f"jwt:{subject if isinstance(subject, str) else tenant}",
            tenant=tenant,
            team=_text(claims.get("team")),
            user=_text(claims.get("user")),
            tier=_text(claims.get("tier")) or "default",
            models=tuple(models) if isinstance(models, list) else None,
        )

    def _verify_with_jwks(self, token: str, header: dict[str, Any], algorithm: str) -> None:
        import jwt

        assert self.jwks is not None
        key = (
            self.jwks.get(str(header.get("kid")))
            if header.get("kid") is not None
            else (next(iter(self.jwks.values())) if len(self.jwks) == 1 else None)
        )
        if key is None:
            raise Refused(401, "bearer token names no key of the JWKS file (kid)")
        try:
            # Only the signature here: exp, nbf and aud are checked below as for every token.
            jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options={"verify_exp": False, "verify_nbf": False, "verify_aud": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise Refused(401, "bearer token signature does not match") from None


def _load_jwks(path: str) -> dict[str, Any]:
    """kid -> public key of a JWKS file (RS256 and ES256 keys)."""
    from .._native import ConfigError

    try:
        import jwt
    except ImportError:
        raise ConfigError("gateway.jwks_file needs PyJWT with its crypto extra: pip install 'pyjwt[crypto]'") from None
    try:
        with open(path, encoding="utf-8") as file:
            keys = jwt.PyJWKSet.from_json(file.read()).keys
    except (OSError, ValueError, jwt.PyJWTError) as error:
        raise ConfigError(f"gateway.jwks_file {path}: {error}") from None
    return {str(key.key_id): key.key for key in keys}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None

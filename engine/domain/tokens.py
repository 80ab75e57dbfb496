"""User tokens and vended tokens: how each is minted and checked.

Two kinds, two keys.  *User tokens* are HS256 JWTs signed with the shared JWT secret, which
the mobile app holds and uses to mint its own.  *Vended tokens* are what one credit buys; they
are signed with a server-only key (`Settings.vend_secret`) and carry `kid: vend`, a unique
`jti` and `token_use: vended`, so a client holding the JWT secret still cannot forge one, and
neither kind is accepted where the other is required.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import time
from typing import Any

import jwt
import msgspec

from engine.config import Settings
from engine.domain.ids import is_valid_id
from engine.errors import Forbidden, Unauthorized

TRANSCRIBE_SCOPE = "ttt:transcribe"
VEND_KID = "vend"
VEND_ISSUER = "pluct-engine"
VEND_AUDIENCE = "pluct-engine:ttt"
VERIFIED_CACHE_SIZE = 50_000
# Bytes of token text the verified-token cache may hold (the count bound alone let 50,000
# tokens of up to MAX_TOKEN_BYTES each pin ~400 MB); the whole cache is dropped past it.
VERIFIED_CACHE_BYTES = 16 * 1024 * 1024
# Far above any real token (the app's are ~250 bytes), refused before any decoding.
MAX_TOKEN_BYTES = 8 * 1024
# NumericDates are integers from the epoch to the end of year 9999: an `exp` of 10**400 made
# `float()` overflow (a 500), and PyJWT's own check took `"exp": "1700000000"` as a date.
MAX_NUMERIC_DATE = 253_402_300_799
_DATE_CLAIMS = ("exp", "iat", "nbf")


class UserPrincipal(msgspec.Struct, frozen=True):
    user_id: str
    scopes: frozenset[str]


class VendedPrincipal(msgspec.Struct, frozen=True):
    user_id: str
    jti: str
    expires_at: int


class MintedToken(msgspec.Struct, frozen=True):
    token: str
    jti: str
    issued_at: int
    expires_at: int


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _base64url(data: bytes) -> bytes:
    """Unpadded base64url, as JWS wants it, in one C call and one translate."""
    return binascii.b2a_base64(data, newline=False).translate(_URL_SAFE).rstrip(b"=")


class _HS256Signer:
    """HS256 compact JWS, its key checked and its header encoded once.

    `jwt.encode` re-validates the key, re-encodes the same header and keys a new HMAC on every
    call; a vend mints on every request, so here the key is checked (by PyJWT) and keyed into
    an HMAC once, and each token copies that keyed state.  The output is byte-identical to
    `PyJWS.encode`, which a test checks.
    """

    def __init__(self, key: bytes, headers: dict[str, str]) -> None:
        checked = jwt.PyJWS().get_algorithm_by_name("HS256").prepare_key(key)
        self._keyed = hmac.new(checked, digestmod=hashlib.sha256)
        self._header = _base64url(msgspec.json.encode({"alg": "HS256", **headers}))

    def sign(self, claims: bytes) -> str:
        signing_input = self._header + b"." + _base64url(claims)
        mac = self._keyed.copy()
        mac.update(signing_input)
        signature = mac.digest()
        return (signing_input + b"." + _base64url(signature)).decode()


def _scopes(raw: Any) -> frozenset[str]:
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return frozenset(raw)
    return frozenset()


def _refuse_oversized(token: str) -> None:
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthorized(
            f"Token is longer than {MAX_TOKEN_BYTES} bytes",
            code="invalid_token",
            details={"maxTokenBytes": MAX_TOKEN_BYTES},
        )


def _numeric_dates(claims: dict[str, Any]) -> dict[str, int]:
    """The claims' NumericDates, each an integer in range (`bool` is an int in Python)."""
    dates: dict[str, int] = {}
    for name in _DATE_CLAIMS:
        value = claims.get(name)
        if value is None and name not in claims:
            continue
        if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
            raise Unauthorized(
                f"Token claim {name!r} is not an integer NumericDate", code="invalid_token"
            )
        dates[name] = value
    return dates


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_valid_id(sub):
        raise Unauthorized("Token subject is not a valid user id", code="invalid_token")
    return sub


class TokenAuthority:
    """Mints and verifies both kinds of token for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self._user_key = settings.jwt_secret.encode()
        self._vend_key = settings.vend_secret.encode()
        self._leeway = settings.jwt_leeway_seconds
        self._audience = settings.jwt_audience
        self._vend_ttl = settings.vend_token_ttl_seconds
        self._jwt = jwt.PyJWT()
        self._vend_signer = _HS256Signer(self._vend_key, {"kid": VEND_KID, "typ": "JWT"})
        self._verified: dict[str, tuple[UserPrincipal, float]] = {}
        self.cached_bytes = 0  # token text held by `_verified`

    # -- minting -------------------------------------------------------------------------
    def mint_user(self, user_id: str, scopes: str, ttl_seconds: int, now: float) -> str:
        """A user token like the mobile app makes; for local use, tests and notebooks."""
        issued = int(now)
        claims = {
            "sub": user_id,
            "aud": self._audience,
            "scope": scopes,
            "iat": issued,
            "exp": issued + ttl_seconds,
        }
        return jwt.encode(claims, self._user_key, algorithm="HS256")

    def mint_vended(self, user_id: str, now: float) -> MintedToken:
        issued = int(now)
        jti = os.urandom(16).hex()  # what `secrets.token_hex` does, minus its Python layers
        expires_at = issued + self._vend_ttl
        return MintedToken(
            self.vended_token(user_id, jti, issued, expires_at), jti, issued, expires_at
        )

    def vended_token(self, user_id: str, jti: str, issued_at: int, expires_at: int) -> str:
        """The vended token with these claims: the same bytes every time (HS256 is
        deterministic), which is how a replayed vend returns its first token."""
        claims = {
            "iss": VEND_ISSUER,
            "aud": VEND_AUDIENCE,
            "sub": user_id,
            "scope": TRANSCRIBE_SCOPE,
            "token_use": "vended",
            "jti": jti,
            "iat": issued_at,
            "exp": expires_at,
        }
        return self._vend_signer.sign(msgspec.json.encode(claims))

    # -- verification --------------------------------------------------------------------
    def _decode(
        self, token: str, key: bytes, *, check_iat: bool = False, **options: Any
    ) -> dict[str, Any]:
        """Signature and claims; the dates are checked here rather than by PyJWT, which
        converts them with `int()` (a string passes) and fails on one too large for a float.
        """
        flags: Any = {
            **options.pop("options", {}),
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token, key, algorithms=["HS256"], options=flags, **options
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(
                f"Token lacks the {exc.claim!r} claim", code="invalid_token"
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid or expired token", code="invalid_token") from None
        dates = _numeric_dates(claims)
        now = time.time()
        if "exp" in dates and dates["exp"] <= now - self._leeway:
            raise Unauthorized("Token has expired", code="token_expired")
        if "nbf" in dates and dates["nbf"] > now + self._leeway:
            raise Unauthorized("Token is not valid yet", code="invalid_token")
        if check_iat and "iat" in dates and dates["iat"] > now + self._leeway:
            raise Unauthorized("Token is not valid yet", code="invalid_token")
        return claims

    def verify_user(self, token: str) -> UserPrincipal:
        """A user token: `sub` and `exp` required, `aud` absent or the app's, any `iat`.

        The real app sends `aud` and, in old builds, an `iat` hours in the future; both pass.
        A client sends the same token for many calls, so a verified token is remembered (by
        its exact bytes, signature included) until its own expiry.
        """
        cached = self._verified.get(token)
        if cached is not None and time.time() < cached[1] + self._leeway:
            return cached[0]
        _refuse_oversized(token)
        principal, expires = self._verify_user(token)
        if (
            len(self._verified) >= VERIFIED_CACHE_SIZE
            or self.cached_bytes + len(token) > VERIFIED_CACHE_BYTES
        ):
            self._verified.clear()
            self.cached_bytes = 0
        self._verified[token] = (principal, expires)
        self.cached_bytes += len(token)
        return principal

    def _verify_user(self, token: str) -> tuple[UserPrincipal, float]:
        claims = self._decode(
            token,
            self._user_key,
            options={"require": ["exp", "sub"], "verify_aud": False, "verify_iat": False},
        )
        audience = claims.get("aud")
        if (
            audience is not None
            and audience != self._audience
            and not (isinstance(audience, list) and self._audience in audience)
        ):
            raise Unauthorized("Token audience is not this engine", code="invalid_token")
        if claims.get("token_use") == "vended":
            raise Unauthorized("A vended token is not a user token", code="invalid_token")
        principal = UserPrincipal(_subject(claims), _scopes(claims.get("scope")))
        return principal, float(claims["exp"])

    def verify_vended(self, token: str) -> VendedPrincipal:
        _refuse_oversized(token)
        claims = self._decode(
            token,
            self._vend_key,
            check_iat=True,
            audience=VEND_AUDIENCE,
            issuer=VEND_ISSUER,
            options={"require": ["exp", "sub", "jti", "iat"]},
        )
        jti = claims.get("jti")
        if claims.get("token_use") != "vended" or not isinstance(jti, str):
            raise Unauthorized("Not a vended token", code="invalid_token")
        return VendedPrincipal(_subject(claims), jti, int(claims["exp"]))

    def is_vended(self, token: str) -> bool:
        """Which key to try, from the unverified header; the signature decides the rest."""
        if len(token) > MAX_TOKEN_BYTES:
            return False  # refused by `verify_user`, before any decoding
        try:
            return jwt.get_unverified_header(token).get("kid") == VEND_KID
        except jwt.InvalidTokenError:
            return False

    def verify_either(self, token: str) -> UserPrincipal | VendedPrincipal:
        return self.verify_vended(token) if self.is_vended(token) else self.verify_user(token)


def require_scope(principal: UserPrincipal, scope: str) -> None:
    if scope not in principal.scopes:
        raise Forbidden(f"Token lacks the {scope} scope", code="insufficient_scope")

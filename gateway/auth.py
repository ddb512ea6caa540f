"""Who is calling: API keys mapped to a tenant (and an admin flag), checked on every request.

Keys are looked up by their SHA-256, so the configuration can hold digests instead of secrets and the
comparison does not depend on how much of a key matches. With no keys configured the gateway is open
and every caller is anonymous: no tenant, no admin rights needed (a local, single-team setup).
The tenant always comes from here, never from a request body: it is what isolates tenants' documents.

May import: ``gateway.config``, ``gateway.errors``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.config.model import AuthConfig, QuotaConfig
from gateway.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str | None
    admin: bool
    key_id: str | None = None  # the key's digest, shortened: how quotas and logs name it, never the key
    quota: QuotaConfig | None = None  # what the key may use

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDenied("this needs an admin API key")


ANONYMOUS = Identity(tenant=None, admin=True)  # an open gateway has no one to refuse


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._keys = {
            key.digest(): Identity(key.tenant, key.admin, key.digest()[:12], key.quota) for key in config.keys
        }

    def identify(self, authorization: str | None) -> Identity:
        if not self._keys:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer YOUR_KEY'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer YOUR_KEY'")
        identity = self._keys.get(hashlib.sha256(key.strip().encode()).hexdigest())
        if identity is None:
            raise Unauthenticated("invalid API key")
        return identity

"""A development token issuer (`extauthz dev token`), and DPoP proofs for demos and tests.

<run_dir>/dev-issuer/
    keys/<kid>.jwk    ES256 signing keys, private (0600)
    current           the kid that signs new tokens
    jwks.json         the public keys of every kid (what the service reads as its JWKS)

`rotate()` adds a key and makes it current; the old public keys stay in jwks.json, so tokens
they signed stay valid until they expire (the service picks the new kid up on first sight).
Not a production issuer: it exists so the stack can be tried without an identity provider.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, JWKRegistry, Key, OKPKey, RSAKey

from extauthz.authn.jwt import b64url
from extauthz.clock import Clock, system_clock
from extauthz.dev.certs import write_private, write_public


def new_device_key() -> Key:
    """A DPoP key pair (EC P-256), as a client device would hold it."""
    return ECKey.generate_key("P-256", private=True)


def load_private_jwk(path: Path) -> Key:
    return JWKRegistry.import_key(json.loads(path.read_text()))


def save_private_jwk(path: Path, key: Key) -> None:
    write_private(path, json.dumps(key.as_dict(private=True), sort_keys=True).encode())


def device_key_file(path: Path) -> Key:
    """The private JWK in `path`, created (0600) if the file does not exist yet."""
    if path.exists():
        return load_private_jwk(path)
    key = new_device_key()
    save_private_jwk(path, key)
    return key


def make_proof(
    key: Key,
    method: str,
    url: str,
    access_token: str | None = None,
    *,
    nonce: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
    alg: str = "ES256",
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A DPoP proof JWT (RFC 9449 §4.2) signed by `key`; `header`/`claims` override fields."""
    body: dict[str, Any] = {
        "jti": jti or uuid.uuid4().hex,
        "htm": method,
        "htu": url,
        "iat": int(time.time() if iat is None else iat),
    }
    if access_token is not None:
        body["ath"] = b64url(hashlib.sha256(access_token.encode()).digest())
    if nonce is not None:
        body["nonce"] = nonce
    body.update(claims or {})
    protected = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    protected.update(header or {})
    # an override of None removes the member (tests forge incomplete proofs with it)
    body = {k: v for k, v in body.items() if v is not None}
    protected = {k: v for k, v in protected.items() if v is not None}
    return jwt.encode(protected, body, key, algorithms=[protected["alg"]])


class DevIssuer:
    def __init__(
        self, directory: Path, issuer: str, audience: str, clock: Clock = system_clock
    ) -> None:
        self.dir = directory
        self.issuer = issuer
        self.audience = audience
        self._clock = clock

    @property
    def jwks_file(self) -> Path:
        return self.dir / "jwks.json"

    def ensure(self) -> None:
        if not (self.dir / "current").exists() or not self.jwks_file.exists():
            self.rotate()

    def rotate(self, alg: str = "ES256") -> str:
        """A new signing key (ES256, RS256 or EdDSA), made current; every earlier public key
        stays published, so the tokens it signed stay valid until they expire."""
        kid = f"dev-{int(self._clock())}-{secrets.token_hex(3)}"
        params: dict[str, Any] = {"kid": kid, "alg": alg, "use": "sig"}
        generators = {
            "ES256": lambda: ECKey.generate_key("P-256", parameters=params),
            "RS256": lambda: RSAKey.generate_key(2048, parameters=params),
            "EdDSA": lambda: OKPKey.generate_key("Ed25519", parameters=params),
        }
        key = generators[alg]()
        save_private_jwk(self.dir / "keys" / f"{kid}.jwk", key)
        write_public(self.dir / "current", kid.encode())
        self._publish()
        return kid

    def _publish(self) -> None:
        keys = [
            load_private_jwk(path).as_dict(private=False)
            for path in sorted((self.dir / "keys").glob("*.jwk"))
        ]
        write_public(self.jwks_file, json.dumps({"keys": keys}, indent=2).encode())

    def signing_key(self) -> Key:
        self.ensure()
        kid = (self.dir / "current").read_text().strip()
        return load_private_jwk(self.dir / "keys" / f"{kid}.jwk")

    def mint(
        self,
        subject: str,
        roles: tuple[str, ...] = (),
        projects: tuple[str, ...] = (),
        tier: str = "standard",
        ttl: int = 600,
        dpop_jkt: str = "",
        claims: dict[str, Any] | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        """A signed access token; `claims`/`header` override fields (tests forge with them)."""
        key = self.signing_key()
        now = int(self._clock())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
            "projects": list(projects),
            "tier": tier,
        }
        if dpop_jkt:
            body["cnf"] = {"jkt": dpop_jkt}
        body.update(claims or {})
        protected = {"typ": "at+jwt", "alg": key.alg or "ES256", "kid": key.kid}
        protected.update(header or {})
        with warnings.catch_warnings():  # joserfc flags EdDSA (RFC 9864); chosen on purpose
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(protected, body, key, algorithms=[protected["alg"]])

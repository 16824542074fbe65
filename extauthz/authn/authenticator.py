"""Stage 2: find the credential a request presents and turn it into a Principal."""

from __future__ import annotations

from extauthz.authn.apikeys import ApiKeyAuthenticator, credential_from_headers
from extauthz.types import Denied, Principal, Reason, RequestView, Status

# Credentials never travel past the gateway.
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


class Authenticator:
    """Dispatches on the credential kind. API keys now; JWT, DPoP and mTLS plug in here."""

    def __init__(self, api_keys: ApiKeyAuthenticator) -> None:
        self._api_keys = api_keys

    async def authenticate(self, view: RequestView) -> Principal:
        key = credential_from_headers(view.headers)
        if key is None:
            reason = (
                Reason.MALFORMED_CREDENTIAL
                if "authorization" in view.headers
                else Reason.NO_CREDENTIAL
            )
            raise Denied(Status.UNAUTHENTICATED, reason)
        return await self._api_keys.authenticate(key)

"""Send a DPoP-signed V2 inference request through Envoy (RFC 9449), the way a client does it.

    TOKEN=$(.venv/bin/extauthz dev token --subject bob --roles clinician --projects clinical \\
            --dpop-key bob-device.jwk)
    .venv/bin/extauthz devices enroll --subject bob --jwk-file bob-device.jwk --trust managed
    .venv/bin/python examples/dpop_client.py --token "$TOKEN" --key bob-device.jwk \\
            --url http://127.0.0.1:10000/v2/models/diabetes/infer

For every request the client signs a fresh proof with its device key: a new `jti`, the method
(`htm`) and URL without query (`htu`), the time (`iat`) and the hash of the access token
(`ath`). The token says which key may use it (`cnf.jkt`, the key's RFC 7638 thumbprint). If the
server answers 401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"`, the client signs again
with the `DPoP-Nonce` it was given. Only the standard library and joserfc are used.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from joserfc import jwt
from joserfc.jwk import JWKRegistry

# load_diabetes()[0]: ten standardised features of one patient
DIABETES_ROW = [0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199, -0.0176]


def proof(key, method: str, url: str, token: str, nonce: str | None = None) -> str:  # type: ignore[no-untyped-def]
    parts = urlsplit(url)
    claims = {
        "jti": uuid.uuid4().hex,
        "htm": method,
        "htu": urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        "iat": int(time.time()),
        "ath": base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest())
        .rstrip(b"=")
        .decode(),
    }
    if nonce:
        claims["nonce"] = nonce
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def send(url: str, token: str, key, body: bytes, nonce: str | None = None):  # type: ignore[no-untyped-def]
    request = urllib.request.Request(  # noqa: S310 - the URL is the user's own
        url,
        data=body,
        method="POST",
        headers={
            "authorization": f"DPoP {token}",
            "dpop": proof(key, "POST", url, token, nonce),
            "content-type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:10000/v2/models/diabetes/infer")
    parser.add_argument("--token", required=True, help="a DPoP-bound access token")
    parser.add_argument("--key", required=True, help="the device's private JWK file")
    parser.add_argument("--data", help="request body (JSON); default: one diabetes row")
    args = parser.parse_args(argv)

    key = JWKRegistry.import_key(json.loads(Path(args.key).read_text()))
    body = (
        args.data.encode()
        if args.data
        else json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": DIABETES_ROW}]}
        ).encode()
    )
    status, headers, payload = send(args.url, args.token, key, body)
    headers = {k.lower(): v for k, v in headers.items()}
    if status == 401 and "use_dpop_nonce" in headers.get("www-authenticate", ""):
        status, headers, payload = send(args.url, args.token, key, body, headers["dpop-nonce"])
        headers = {k.lower(): v for k, v in headers.items()}
    print(f"HTTP {status}  x-request-id: {headers.get('x-request-id', '-')}")
    print(payload.decode(errors="replace"))
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())

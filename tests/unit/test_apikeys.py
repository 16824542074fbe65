import pytest

from extauthz.authn import apikeys
from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyRecord, credential_from_headers, hash_key
from extauthz.types import Denied, Reason, Status

PEPPER = b"test-pepper"


class FakeStore:
    def __init__(self, records: dict[str, KeyRecord]) -> None:
        self.records = records
        self.gets = 0

    async def get(self, key_id: str) -> KeyRecord | None:
        self.gets += 1
        return self.records.get(key_id)


def make_record(key: str, *, status: str = "active", expires: int = 0) -> KeyRecord:
    return KeyRecord(
        key_id=apikeys.split_key(key) or "",
        key_hash=hash_key(PEPPER, key),
        subject="alice",
        roles=("analyst",),
        projects=("vision",),
        tier="standard",
        created=1000,
        expires=expires,
        status=status,
    )


def test_new_key_is_well_formed_and_long() -> None:
    key_id, key = apikeys.new_key()
    assert apikeys.split_key(key) == key_id
    secret = key.split(".", 1)[1]
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert apikeys.new_key()[1] != key


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "eak_",
        "eak_0123456789ab",
        "eak_0123456789ab.short",
        "eak_XYZ456789abc.aaaaaaaaaaaaaaaaaaaaaaaa",
        "sk_0123456789ab.aaaaaaaaaaaaaaaaaaaaaaaa",
        "eak_0123456789ab." + "a" * 200,
    ],
)
def test_split_key_rejects_malformed(bad: str) -> None:
    assert apikeys.split_key(bad) is None


def test_hash_is_keyed() -> None:
    assert hash_key(b"a", "k") != hash_key(b"b", "k")
    assert len(hash_key(b"a", "k")) == 64


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ({"authorization": "Bearer eak_x"}, "eak_x"),
        ({"authorization": "bearer  eak_x "}, "eak_x"),
        ({"x-api-key": "eak_y"}, "eak_y"),
        ({"authorization": "Basic abc"}, None),
        ({}, None),
    ],
)
def test_credential_from_headers(headers: dict[str, str], found: str | None) -> None:
    assert credential_from_headers(headers) == found


def authenticator(store: FakeStore, now: float = 2000.0) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(store, PEPPER, cache_ttl=10, clock=lambda: now)  # type: ignore[arg-type]


async def test_valid_key_gives_principal_and_is_cached() -> None:
    _, key = apikeys.new_key()
    store = FakeStore({apikeys.split_key(key): make_record(key)})
    auth = authenticator(store)
    p1 = await auth.authenticate(key)
    p2 = await auth.authenticate(key)
    assert p1 == p2
    assert p1.subject == "alice" and p1.credential == "api_key"
    assert p1.state_key == apikeys.key_record_name(p1.credential_id)
    assert store.gets == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ("wrong_secret", Reason.BAD_KEY_SECRET),
        ("unknown", Reason.UNKNOWN_KEY),
        ("revoked", Reason.KEY_REVOKED),
        ("expired", Reason.KEY_EXPIRED),
        ("malformed", Reason.MALFORMED_CREDENTIAL),
    ],
)
async def test_every_bad_key_is_the_same_401(mutate: str, reason: Reason) -> None:
    key_id, key = apikeys.new_key()
    record = make_record(key)
    presented = key
    if mutate == "wrong_secret":
        presented = f"eak_{key_id}.{'A' * 43}"
    elif mutate == "unknown":
        record = None
    elif mutate == "revoked":
        record = make_record(key, status="revoked")
    elif mutate == "expired":
        record = make_record(key, expires=1999)
    elif mutate == "malformed":
        presented = "eak_nope"
    store = FakeStore({key_id: record} if record else {})
    with pytest.raises(Denied) as info:
        await authenticator(store).authenticate(presented)
    assert info.value.status is Status.UNAUTHENTICATED
    assert info.value.reason is reason

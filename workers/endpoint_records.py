"""Signed endpoint records: how a process proves, through an untrusted store, where its inbox is.

Every process of a run spread over machines publishes "my inbox is at ENDPOINT (with PUBLIC_KEY)" in a store
that anyone on the network can read and write. A record carries an HMAC-SHA256 of both under the run's
secret, which reaches each node out of band (launch/elastic.py), so a peer verifies a record before it
connects and a forged or altered one is refused. `sign`/`verify` have the signature issue 12's transport work
(CURVE keys) provides; until that lands, `public_key` is empty and links are plain ZeroMQ tcp.

The two seams where encrypted links plug in later: `link_from_record` (a verified record -> a `Link` to
connect to) and `bind_inbox` (the receiving end, bound on a routable address).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from workers.messages import Codec
from workers.transport import Link, Receiver


class RecordRefused(ValueError):
    """A published record failed its HMAC or does not parse: never connected to."""


def _mac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def seal(secret: str, payload: bytes) -> bytes:
    """`payload` with an HMAC-SHA256 under `secret` (a JSON envelope; the payload travels as text)."""
    return json.dumps({"payload": payload.decode(), "mac": _mac(secret, payload)}).encode()


def unseal(secret: str, record: bytes) -> bytes:
    """The payload of a sealed record; RecordRefused when it is not one or its HMAC fails."""
    try:
        envelope = json.loads(record)
        payload, mac = envelope["payload"].encode(), envelope["mac"]
        if not isinstance(mac, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RecordRefused("not a sealed record (expected {payload, mac}); refused") from None
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise RecordRefused("its HMAC does not match the run secret (another run, or forged); refused")
    return payload


def sign(secret: str, endpoint: str, public_key: bytes) -> bytes:
    """A record of `endpoint` and `public_key`, sealed under the run `secret`."""
    return seal(secret, json.dumps({"endpoint": endpoint, "public_key": public_key.hex()}).encode())


def verify(secret: str, record: bytes) -> tuple[str, bytes]:
    """(endpoint, public_key) of a record `sign` wrote with the same secret; RecordRefused otherwise."""
    try:
        fields = json.loads(unseal(secret, record))
        return str(fields["endpoint"]), bytes.fromhex(fields["public_key"])
    except RecordRefused:
        raise
    except (ValueError, KeyError, TypeError):
        raise RecordRefused("a sealed record without endpoint and public_key; refused") from None


def codec_secret(secret: str, run_id: str) -> str:
    """The message secret of one attempt, derived from the run secret, so it never has to be published."""
    return _mac(secret, f"codec:{run_id}".encode())


def link_from_record(secret: str, record: bytes, window: int) -> Link:
    """The link to the inbox a verified record names (the seam where CURVE keys join the link)."""
    endpoint, _public_key = verify(secret, record)
    return Link(endpoint, window)


def bind_inbox(address: str, codec: Codec, name: str, window: int) -> Receiver:
    """Bind a receiving end on a routable `address` (tcp://HOST:0 picks a free port; the seam where the
    CURVE server key and its authenticator join)."""
    return Link(address, window).receiver(codec, name, allow_remote=True)

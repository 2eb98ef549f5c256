"""Values sealed under the run secret: what ranks read from a store that anyone on the network can write.

Rank 0's TCPStore (launch/backends/elastic/store.py) carries the attempt token, worker specs and counters besides the
endpoint records; a rank acts on none of them unless its MAC verifies under the run secret. The MAC is the
one of workers/wire/endpoint_record.py (`mac`), with the purpose "sealed" as its first field, so a sealed value
never passes for an endpoint record or the reverse. A failed seal raises EndpointRecordError, as a failed
record does: callers refuse both the same way.
"""

from __future__ import annotations

import hmac

import msgpack
from auglocal.workers.wire.endpoint_record import EndpointRecordError, mac

MAX_SEALED_BYTES = 64 << 20   # a spec is a few KB; resume files travel unsealed (their SHA-256 is sealed)


def seal(secret: str, payload: bytes) -> bytes:
    """`payload` with its MAC under `secret` (msgpack {"payload": bytes, "mac": bytes})."""
    return msgpack.packb({"payload": bytes(payload), "mac": mac(secret, "sealed", bytes(payload))},
                         use_bin_type=True)


def unseal(secret: str, sealed: bytes) -> bytes:
    """The payload of a value `seal` made with the same secret; EndpointRecordError otherwise."""
    try:
        fields = msgpack.unpackb(sealed, raw=False, strict_map_key=True, max_bin_len=MAX_SEALED_BYTES,
                                 max_str_len=16, max_array_len=0, max_map_len=2, max_ext_len=0)
        payload, tag = fields["payload"], fields["mac"]
        if set(fields) != {"payload", "mac"} or not isinstance(payload, bytes) or not isinstance(tag, bytes):
            raise TypeError
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        raise EndpointRecordError("not a sealed value (expected msgpack {payload, mac}); refused") from None
    if not hmac.compare_digest(tag, mac(secret, "sealed", payload)):
        raise EndpointRecordError("its MAC does not match the run secret (another run, or forged); refused")
    return payload


def codec_secret(secret: str, run_id: str) -> str:
    """The message secret of one attempt, derived from the run secret, so it never has to be published."""
    return mac(secret, "codec", run_id).hex()

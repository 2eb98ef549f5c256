"""Signed endpoint records: a process's address and CURVE public key, authenticated by the run secret.

Across hosts, each receiving process publishes where it listens and its ephemeral CURVE public key in a store
that every rank reads (part B: the TCPStore rank 0 hosts); each sending process publishes its own public key
the same way, so receivers can put it on their allow-list. Anyone who can write to that store could publish a
record, so a record carries an HMAC-SHA256 of its contents under the run's secret (which reaches every node out
of band, never through the store), and peers act only on records that `verify` accepts: a forged or altered
endpoint is refused before anything connects to it, and an unknown key is never admitted.

A record is msgpack (never pickle): ``{"v": 1, "endpoint": str, "public_key": str, "mac": bytes}``; the MAC
covers the version, the endpoint and the key as one msgpack array, so no field can be swapped or re-split.
"""

from __future__ import annotations

import hashlib
import hmac

import msgpack

RECORD_VERSION = 1
MAX_RECORD_BYTES = 4096
_KEYS = frozenset({"v", "endpoint", "public_key", "mac"})


class EndpointRecordError(ValueError):
    """A record that is malformed or whose HMAC does not verify under this run's secret: never act on it."""


def mac(secret: str | bytes, *fields) -> bytes:
    """HMAC-SHA256 under `secret` of `fields` packed as one msgpack array: the run's one MAC (endpoint records
    here, sealed store values in workers/wire/sealed.py); callers put a distinct first field in (a version number,
    a purpose string), so a MAC made for one use never passes for another."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, msgpack.packb(list(fields), use_bin_type=True), hashlib.sha256).digest()


def _mac(secret: str | bytes, endpoint: str, public_key: str) -> bytes:
    return mac(secret, RECORD_VERSION, endpoint, public_key)


def _text(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def sign(secret: str | bytes, endpoint: str, public_key: str | bytes) -> bytes:
    """A record of `endpoint` (e.g. tcp://10.0.0.2:5555, or a sender's name) and its z85 `public_key`."""
    if not secret:
        raise ValueError("sign needs the run's non-empty secret")
    key = _text(public_key)
    if not endpoint or len(endpoint) > 1024 or len(key) > 128:
        raise ValueError(f"endpoint must be 1..1024 characters and the key at most 128, got {endpoint!r}, {key!r}")
    record = {"v": RECORD_VERSION, "endpoint": endpoint, "public_key": key, "mac": _mac(secret, endpoint, key)}
    return msgpack.packb(record, use_bin_type=True)


def verify(secret: str | bytes, record: bytes) -> tuple[str, str]:
    """(endpoint, z85 public key) of a record signed under `secret`; raises EndpointRecordError otherwise.

    The MAC is compared in constant time (hmac.compare_digest) before the caller sees any field.
    """
    if not isinstance(record, bytes | bytearray) or len(record) > MAX_RECORD_BYTES:
        raise EndpointRecordError(f"an endpoint record is at most {MAX_RECORD_BYTES} bytes of msgpack")
    try:
        fields = msgpack.unpackb(record, raw=False, strict_map_key=True, max_str_len=1024, max_bin_len=64,
                                 max_array_len=0, max_map_len=8, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EndpointRecordError(f"endpoint record is not valid msgpack ({exc})") from exc
    if not isinstance(fields, dict) or set(fields) != _KEYS or fields["v"] != RECORD_VERSION:
        raise EndpointRecordError(f"endpoint record must be a version-{RECORD_VERSION} map of {sorted(_KEYS)}")
    endpoint, key, mac = fields["endpoint"], fields["public_key"], fields["mac"]
    if not isinstance(endpoint, str) or not isinstance(key, str) or not isinstance(mac, bytes):
        raise EndpointRecordError("endpoint record fields have the wrong types")
    if not hmac.compare_digest(mac, _mac(secret, endpoint, key)):
        raise EndpointRecordError(
            f"endpoint record for {endpoint!r} fails its HMAC: not signed with this run's secret "
            "(a stale run, a wrong secret file, or a forgery); refusing to connect to it"
        )
    return endpoint, key

"""Signed endpoint records: a record verifies under the run secret only; tampered or foreign ones are refused."""

import json

import pytest

from workers.endpoint_records import RecordRefused, codec_secret, link_from_record, seal, sign, unseal, verify


def test_a_signed_record_verifies_and_names_its_endpoint_and_key():
    record = sign("run-secret", "tcp://127.0.0.2:5555", b"\x01\x02")
    assert verify("run-secret", record) == ("tcp://127.0.0.2:5555", b"\x01\x02")
    link = link_from_record("run-secret", record, window=2)
    assert (link.address, link.window) == ("tcp://127.0.0.2:5555", 2)


def test_another_secret_is_refused():
    with pytest.raises(RecordRefused, match="HMAC"):
        verify("other-secret", sign("run-secret", "tcp://127.0.0.1:1", b""))


def test_an_altered_endpoint_is_refused():
    envelope = json.loads(sign("s", "tcp://127.0.0.1:1", b""))
    envelope["payload"] = envelope["payload"].replace("127.0.0.1:1", "10.6.6.6:1")
    with pytest.raises(RecordRefused, match="HMAC"):
        link_from_record("s", json.dumps(envelope).encode(), 2)


@pytest.mark.parametrize("junk", [b"", b"not json", b"[]", b'{"payload": "x"}', b'{"payload": 1, "mac": "0"}'])
def test_junk_is_refused_not_crashed_on(junk):
    with pytest.raises(RecordRefused):
        unseal("s", junk)


def test_a_sealed_payload_without_an_endpoint_is_refused():
    with pytest.raises(RecordRefused, match="endpoint"):
        verify("s", seal("s", b'{"x": 1}'))


def test_codec_secrets_differ_per_attempt_and_per_run_secret():
    assert codec_secret("s", "run1") == codec_secret("s", "run1")
    assert len({codec_secret("s", "run1"), codec_secret("s", "run2"), codec_secret("t", "run1")}) == 3

"""Values sealed under the run secret (workers/wire/sealed.py): they verify under that secret only; tampered,
foreign or junk values are refused, and a sealed value never passes for an endpoint record or the reverse."""

import msgpack
import pytest
from auglocal.workers.wire.endpoint_record import EndpointRecordError, sign, verify
from auglocal.workers.wire.sealed import codec_secret, seal, unseal


def test_a_sealed_value_unseals_under_its_secret_only():
    sealed = seal("run-secret", b'{"spec": 1}')
    assert unseal("run-secret", sealed) == b'{"spec": 1}'
    with pytest.raises(EndpointRecordError, match="MAC"):
        unseal("other-secret", sealed)


def test_an_altered_payload_is_refused():
    fields = msgpack.unpackb(seal("s", b"tcp://127.0.0.1:1"))
    fields["payload"] = b"tcp://10.6.6.6:1"
    with pytest.raises(EndpointRecordError, match="MAC"):
        unseal("s", msgpack.packb(fields))


@pytest.mark.parametrize("junk", [b"", b"not msgpack", msgpack.packb([]), msgpack.packb({"payload": b"x"}),
                                  msgpack.packb({"payload": 1, "mac": b"0"}),
                                  msgpack.packb({"payload": b"x", "mac": b"0", "more": b""})])
def test_junk_is_refused_not_crashed_on(junk):
    with pytest.raises(EndpointRecordError):
        unseal("s", junk)


def test_a_sealed_value_and_an_endpoint_record_never_pass_for_each_other():
    record = sign("s", "tcp://127.0.0.1:1", "k" * 40)
    with pytest.raises(EndpointRecordError):
        unseal("s", record)
    with pytest.raises(EndpointRecordError):
        verify("s", seal("s", record))


def test_codec_secrets_differ_per_attempt_and_per_run_secret():
    assert codec_secret("s", "run1") == codec_secret("s", "run1")
    assert len({codec_secret("s", "run1"), codec_secret("s", "run2"), codec_secret("t", "run1")}) == 3

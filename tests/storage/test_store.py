"""batchrun.storage.store against a moto S3 server on loopback (and the local filesystem)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from batchrun.errors import RunStopped, UserError
from batchrun.storage import store
from batchrun.storage.runlock import RunLock
from batchrun.storage.store import (
    S3Settings,
    put_whole,
    remove,
)

from ..s3server import BUCKET, FAKE_SECRET, aws_env

SCHEMA = pa.schema([("position", pa.int64()), ("text", pa.string())])


@pytest.fixture
def prefix(s3: str) -> str:
    """A fresh prefix in the bucket (bucket/prefix), so that tests share the server and
    nothing else."""
    return f"{BUCKET}/{uuid.uuid4().hex}"


def _fs(prefix: str) -> pafs.S3FileSystem:
    return store.Remote(prefix).fs


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


# -- reaching S3 ---------------------------------------------------------------------------


def test_the_aws_variables_say_where_s3_is(s3: str, prefix: str) -> None:
    remote = store.Remote.of_url(f"s3://{prefix}/out.parquet/", store.S3Spec())
    assert remote.path == prefix + "/out.parquet"
    settings = S3Settings.of(remote.fs)
    assert (settings.endpoint, settings.scheme) == (s3.removeprefix("http://"), "http")
    assert settings.region == "us-east-1"
    put_whole(remote.fs, remote.path, b"reached")  # the endpoint is moto's: it lands there
    assert _read(remote.fs, remote.path) == b"reached"


def test_a_job_may_name_its_own_variables_region_and_endpoint() -> None:
    spec = store.S3Spec(
        region="eu-west-1",
        endpoint_url="http://127.0.0.1:9000",
        access_key_id_env="LABELS_KEY_ID",
        secret_access_key_env="LABELS_SECRET",
    )
    environ = {
        "LABELS_KEY_ID": "labels-id",
        "LABELS_SECRET": "labels-secret",
        "AWS_ACCESS_KEY_ID": "not-this-one",
        "AWS_SECRET_ACCESS_KEY": "nor-this",
        "AWS_REGION": "us-east-1",
    }
    settings = spec.settings(environ)
    assert (settings.access_key, settings.secret_key) == ("labels-id", "labels-secret")
    assert (settings.region, settings.endpoint, settings.scheme) == (
        "eu-west-1",
        "127.0.0.1:9000",
        "http",
    )


def test_settings_never_show_the_credentials(s3: str) -> None:
    settings = S3Settings.from_env({**aws_env(s3), "AWS_SESSION_TOKEN": "tok-CANARY"})
    assert FAKE_SECRET not in repr(settings) and "tok-CANARY" not in repr(settings)
    assert settings.session_token == "tok-CANARY"
    remote = store.Remote("bucket/key", store.S3Spec())
    assert FAKE_SECRET not in repr(remote)  # what a Ray worker is handed holds no secret


@pytest.mark.parametrize("url", ["s3:///key", "s3://bucket", "s3://bucket/"])
def test_a_url_without_an_object_is_refused(url: str) -> None:
    with pytest.raises(UserError, match="names no object"):
        store.Remote.of_url(url, store.S3Spec())


def test_half_the_credentials_is_a_user_error() -> None:
    with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID is set but AWS_SECRET") as caught:
        store.S3Spec().settings({"AWS_ACCESS_KEY_ID": "fake-key-id"})
    assert "fake-key-id" not in str(caught.value)


def test_an_endpoint_with_a_path_is_refused() -> None:
    with pytest.raises(UserError, match="AWS_ENDPOINT_URL"):
        store.S3Spec().settings({"AWS_ENDPOINT_URL": "http://127.0.0.1:1/x"})


# -- files ---------------------------------------------------------------------------------


def _segment(rows: int) -> bytes:
    table = pa.table({"position": list(range(rows)), "text": [f"row {i}" for i in range(rows)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=100, compression="zstd")
    return sink.getvalue().to_pybytes()


def test_a_parquet_file_goes_up_whole_and_reads_back_by_row_group(prefix: str) -> None:
    remote = store.Remote(prefix + "/ckpt")
    put_whole(remote.fs, remote.child("seg-000000000001-000000000001.parquet"), _segment(250))
    put_whole(remote.fs, remote.child("seg-000000000002-000000000002.parquet"), _segment(3))
    put_whole(remote.fs, remote.child("gateway.json"), b"{}")

    names = sorted(remote.names("seg-*.parquet"))
    assert names == [
        "seg-000000000001-000000000001.parquet",
        "seg-000000000002-000000000002.parquet",
    ]
    parquet = pq.ParquetFile(remote.fs.open_input_file(remote.child(names[0])))
    assert (parquet.metadata.num_rows, parquet.metadata.num_row_groups) == (250, 3)
    assert parquet.schema_arrow.equals(SCHEMA)
    last = parquet.read_row_group(2)
    assert last.column("position").to_pylist() == list(range(200, 250))

    remove(remote.fs, remote.child(names[0]))
    remove(remote.fs, remote.child(names[0]))  # gone already: no error
    assert sorted(remote.names("seg-*.parquet")) == names[1:]
    assert store.Remote(prefix + "/nothing-here").names() == {}


def test_a_write_that_fails_midway_publishes_nothing(prefix: str) -> None:
    """A segment is serialised whole in memory before it goes up: a producer that fails
    part-way never reaches the store."""
    remote = store.Remote(prefix)
    table = pa.table({"position": [1, 2], "text": ["a", "b"]})

    def segment() -> bytes:
        sink = pa.BufferOutputStream()
        with pq.ParquetWriter(sink, SCHEMA) as writer:
            writer.write_table(table)  # a row group is written, then the producer fails
            raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        put_whole(remote.fs, remote.child("seg-000000000001-000000000001.parquet"), segment())
    assert remote.names() == {}


def test_pyarrow_stream_publishes_a_partial_object(prefix: str) -> None:
    """The hazard put_whole avoids (apache/arrow#40502). Should pyarrow stop publishing
    here, this fails: then streaming a segment straight to S3 may be reconsidered."""
    fs = _fs(prefix)
    with pytest.raises(RuntimeError), fs.open_output_stream(f"{prefix}/partial") as stream:
        stream.write(b"half of a file")
        raise RuntimeError("interrupted")
    assert _read(fs, f"{prefix}/partial") == b"half of a file"


# -- the lease -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_until_release(prefix: str) -> None:
    fs, folder = _fs(prefix), prefix
    clock = FakeClock()
    first = RunLock(fs, f"{folder}/lease", "host-a:101", ttl_s=60, clock=clock).acquire()
    assert first.held
    clock.now += 30
    with pytest.raises(UserError) as caught:
        RunLock(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock).acquire()
    message = str(caught.value)
    assert "(host-a:101) has held" in message
    assert "since 2027-01-15 08:00:00 UTC" in message
    assert message.endswith("wait for it to finish or stop it.")
    assert FAKE_SECRET not in message

    first.release()
    assert not first.held
    with RunLock(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock) as second:
        assert second.held
    assert fs.get_file_info(f"{folder}/lease").type == pafs.FileType.NotFound


def test_a_renewed_lease_stays_a_lapsed_one_is_taken_over(prefix: str) -> None:
    fs, folder = _fs(prefix), prefix
    clock = FakeClock()
    first = RunLock(fs, f"{folder}/lease", "host-a:101", ttl_s=60, clock=clock).acquire()
    clock.now += 50
    first.renew()
    clock.now += 50  # 100 s after acquiring, 50 s after renewing: still held
    with pytest.raises(UserError, match="host-a:101"):
        RunLock(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock).acquire()

    clock.now += 11  # host-a stopped renewing: the lease lapsed
    second = RunLock(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock).acquire()
    assert second.held
    first.release()  # no longer its own: leaves host-b's lease alone
    with pytest.raises(UserError, match="host-b:202"):
        RunLock(fs, f"{folder}/lease", "host-c:303", ttl_s=60, clock=clock).acquire()

    clock.now += 61
    third = RunLock(fs, f"{folder}/lease", "host-c:303", ttl_s=60, clock=clock).acquire()
    with pytest.raises(RunStopped, match=r"lost its lease .* to another run \(host-c:303\)"):
        second.renew()
    assert not second.held
    third.release()
    assert fs.get_file_info(f"{folder}/lease").type == pafs.FileType.NotFound


def test_a_lease_is_for_s3(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="flock"):
        RunLock(pafs.LocalFileSystem(), str(tmp_path / "lease"), "me", ttl_s=60)


# -- large files, and local copies ---------------------------------------------------------


def test_a_large_file_goes_up_in_parts_whole_or_not_at_all(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "PART_BYTES", 5 << 20)  # S3's smallest part
    local = tmp_path / "big.bin"
    data = os.urandom(11 << 20)  # three parts
    local.write_bytes(data)
    fs, folder = _fs(prefix), prefix
    store.upload_file(fs, f"{folder}/big.bin", local)
    assert _read(fs, f"{folder}/big.bin") == data
    # A failure after the first part: nothing is published, and the upload is aborted.
    client = S3Settings.from_env(os.environ).client()
    real = client.upload_part
    calls = []

    def failing(**arguments: object) -> object:
        calls.append(arguments["PartNumber"])
        if len(calls) == 2:
            raise OSError("the connection dropped")
        return real(**arguments)

    monkeypatch.setattr(client, "upload_part", failing)
    monkeypatch.setattr(S3Settings, "client", lambda self: client)
    with pytest.raises(OSError, match="connection dropped"):
        store.upload_file(fs, f"{folder}/torn.bin", local)
    assert fs.get_file_info(f"{folder}/torn.bin").type == pafs.FileType.NotFound
    bucket, _, key = f"{folder}/torn.bin".partition("/")
    pending = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    assert pending == []


def test_a_pull_makes_the_copy_the_remote_s(prefix: str, tmp_path: Path) -> None:
    fs, folder = _fs(prefix), prefix
    remote = store.Remote(folder)
    put_whole(fs, f"{folder}/seg-a.parquet", b"one")
    put_whole(fs, f"{folder}/seg-b.parquet", b"two")
    put_whole(fs, f"{folder}/other.json", b"{}")  # not a segment: not pulled
    copy = tmp_path / "copy"
    assert store.pull(remote, copy, "seg-*.parquet")
    assert sorted(p.name for p in copy.iterdir()) == ["seg-a.parquet", "seg-b.parquet"]
    assert not store.pull(remote, copy, "seg-*.parquet")  # nothing new: nothing fetched
    remove(fs, f"{folder}/seg-a.parquet")  # merged away elsewhere
    put_whole(fs, f"{folder}/seg-b.parquet", b"two, rewritten")
    (copy / "seg-c.parquet").write_bytes(b"a copy of what never went up")
    assert store.pull(remote, copy, "seg-*.parquet")
    assert sorted(p.name for p in copy.iterdir()) == ["seg-b.parquet"]
    assert (copy / "seg-b.parquet").read_bytes() == b"two, rewritten"


def test_a_renewal_whose_answer_was_lost_is_taken_for_the_success_it_was(prefix: str) -> None:
    """botocore sends a PUT again when its answer is lost; the retry then fails its
    condition against the write that landed, which carries this lease's nonce."""
    fs, folder = _fs(prefix), prefix
    lease = RunLock(fs, f"{folder}/lease", "host-a:101", ttl_s=60).acquire()
    real = lease._call

    def landed_but_lost(operation: str, **arguments: object) -> object:
        answer = real(operation, **arguments)
        return None if operation == "put_object" else answer  # as a 412 to the retry

    lease._call = landed_but_lost  # type: ignore[method-assign]
    lease.renew()  # no RunStopped: the lease is still this one's
    assert lease.held
    lease._call = real  # type: ignore[method-assign]
    lease.renew()
    lease.release()


# -- what passes and what does not (store.s3_errors) ---------------------------------------


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        (
            "When uploading object with key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION "
            "during PutObject operation: curlCode: 7, Could not connect to server",
            True,
        ),
        (
            "When uploading object with key 'x' in bucket 'b': AWS Error SLOW_DOWN during "
            "PutObject operation: Please reduce your request rate.",
            True,
        ),
        ("AWS Error UNKNOWN (HTTP status 503) during PutObject operation: Unable to parse", True),
        ("AWS Error SERVICE_UNAVAILABLE during HeadObject operation: ", True),
        ("AWS Error REQUEST_TIMEOUT during PutObject operation: ", True),
        ("AWS Error ACCESS_DENIED during PutObject operation: Access Denied", False),
        ("AWS Error NO_SUCH_BUCKET during PutObject operation: The bucket does not exist", False),
        ("AWS Error INVALID_ACCESS_KEY_ID during PutObject operation: ", False),
    ],
)
def test_pyarrow_s_s3_errors_are_told_passing_or_not(message: str, transient: bool) -> None:
    with pytest.raises(store.S3Error) as caught, store.s3_errors("S3 upload of s3://b/x"):
        raise OSError(message)
    assert caught.value.transient is transient
    assert str(caught.value).startswith("S3 upload of s3://b/x failed: AWS Error")


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("RequestTimeout", 400, True),
        ("Throttling", 400, True),
        ("SomethingNew", 502, True),
        ("AccessDenied", 403, False),
        ("NoSuchBucket", 404, False),
        ("InvalidAccessKeyId", 403, False),
        ("SignatureDoesNotMatch", 403, False),
    ],
)
def test_botocore_s_s3_errors_are_told_passing_or_not(
    code: str, status: int, transient: bool
) -> None:
    from botocore.exceptions import ClientError

    answer: Any = {
        "Error": {"Code": code, "Message": "the store says so"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    with pytest.raises(store.S3Error) as caught, store.s3_errors("S3 put_object of s3://b/x"):
        raise ClientError(answer, "PutObject")
    assert caught.value.transient is transient
    assert code in str(caught.value)


def test_no_answer_at_all_passes_and_no_credentials_do_not() -> None:
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    for error in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/x"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9/b/x"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/x"),
    ):
        with pytest.raises(store.S3Error) as caught, store.s3_errors("S3 get_object"):
            raise error
        assert caught.value.transient, error
    with pytest.raises(store.S3Error) as caught, store.s3_errors("S3 get_object"):
        raise NoCredentialsError()
    assert not caught.value.transient


def test_local_errors_and_missing_objects_go_through_as_they_are() -> None:
    import errno

    with pytest.raises(OSError) as caught, store.s3_errors("S3 download"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(caught.value, store.S3Error) and caught.value.errno == errno.ENOSPC
    with pytest.raises(FileNotFoundError), store.s3_errors("S3 download"):
        raise FileNotFoundError("gone")


def test_an_object_gone_between_pyarrow_s_look_and_its_read_is_missing_too() -> None:
    """A pull lists again when a segment it listed is missing (a merge elsewhere removed
    it); pyarrow says so in words when the object went after its HEAD, before its GET."""
    gone = "AWS Error RESOURCE_NOT_FOUND during GetObject operation: "
    with pytest.raises(FileNotFoundError) as caught, store.s3_errors("S3 download of s3://b/x"):
        raise OSError(gone)
    assert str(caught.value).endswith("S3 download of s3://b/x failed: " + gone.strip())


def test_an_s3_error_names_no_secret(prefix: str) -> None:
    """What a failure says is the store's answer and the object's URL, never a credential."""
    fs = store.S3Settings.from_env(
        {**aws_env("http://127.0.0.1:9"), "AWS_REGION": "us-east-1"}
    ).filesystem()
    with pytest.raises(store.S3Error) as caught:
        store.put_whole(fs, f"{prefix}/x", b"data")
    assert caught.value.transient
    assert FAKE_SECRET not in str(caught.value)

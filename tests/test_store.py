"""batchrun.store against a moto S3 server on loopback (and the local filesystem)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from batchrun import store
from batchrun.errors import RunStopped, UserError
from batchrun.store import (
    Lease,
    S3Settings,
    list_names,
    open_input,
    parquet_bytes,
    put_whole,
    read_whole,
    remove,
    resolve,
)

from .s3server import BUCKET, FAKE_SECRET, aws_env, moto_server

SCHEMA = pa.schema([("position", pa.int64()), ("text", pa.string())])


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with BUCKET, and the AWS variables pointing at it;
    yields its endpoint URL."""
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as env:
        for name in ("AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        for name, value in aws_env(endpoint).items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture
def prefix(s3: str) -> str:
    """A fresh prefix in the bucket, so that tests share the server and nothing else."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


# -- resolve -------------------------------------------------------------------------------


def test_resolve_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = resolve("out.parquet.checkpoint")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "out.parquet.checkpoint")


def test_resolve_s3_reads_the_aws_variables(s3: str, prefix: str) -> None:
    fs, path = resolve(prefix + "/out.parquet/")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == prefix.removeprefix("s3://") + "/out.parquet"
    settings = S3Settings.of(fs)
    assert (settings.endpoint, settings.scheme) == (s3.removeprefix("http://"), "http")
    assert settings.region == "us-east-1"
    put_whole(fs, path, b"reached")  # the endpoint is moto's: this lands in its bucket
    assert read_whole(*resolve(prefix + "/out.parquet")) == b"reached"


def test_settings_never_show_the_credentials(s3: str) -> None:
    settings = S3Settings.from_env({**aws_env(s3), "AWS_SESSION_TOKEN": "tok-CANARY"})
    assert FAKE_SECRET not in repr(settings) and "tok-CANARY" not in repr(settings)
    assert settings.session_token == "tok-CANARY"


@pytest.mark.parametrize(
    ("location", "words"),
    [("s3:///key", "names no bucket"), ("gs://bucket/key", "neither a local path")],
)
def test_resolve_refuses_what_it_cannot_reach(location: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        resolve(location, environ={})


def test_half_the_credentials_is_a_user_error() -> None:
    with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID is set but AWS_SECRET") as caught:
        resolve("s3://bucket/key", environ={"AWS_ACCESS_KEY_ID": "fake-key-id"})
    assert "fake-key-id" not in str(caught.value)


def test_an_endpoint_with_a_path_is_refused() -> None:
    with pytest.raises(UserError, match="AWS_ENDPOINT_URL"):
        resolve("s3://bucket/key", environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:1/x"})


# -- files ---------------------------------------------------------------------------------


def _segment(rows: int) -> tuple[pa.Buffer, int]:
    table = pa.table({"position": list(range(rows)), "text": [f"row {i}" for i in range(rows)]})

    def write(writer: pq.ParquetWriter) -> int:
        writer.write_table(table, row_group_size=100)
        return table.num_rows

    return parquet_bytes(SCHEMA, write, compression="zstd")


def test_a_parquet_file_goes_up_whole_and_reads_back_by_row_group(prefix: str) -> None:
    fs, folder = resolve(prefix + "/ckpt")
    data, rows = _segment(250)
    put_whole(fs, f"{folder}/seg-000000000001-000000000001.parquet", data)
    put_whole(fs, f"{folder}/seg-000000000002-000000000002.parquet", _segment(3)[0])
    put_whole(fs, f"{folder}/gateway.json", b"{}")

    names = list_names(fs, folder, "seg-*.parquet")
    assert names == [
        "seg-000000000001-000000000001.parquet",
        "seg-000000000002-000000000002.parquet",
    ]
    parquet = pq.ParquetFile(open_input(fs, f"{folder}/{names[0]}"))
    assert (rows, parquet.metadata.num_rows, parquet.metadata.num_row_groups) == (250, 250, 3)
    assert parquet.schema_arrow.equals(SCHEMA)
    last = parquet.read_row_group(2)
    assert last.column("position").to_pylist() == list(range(200, 250))

    remove(fs, f"{folder}/{names[0]}")
    remove(fs, f"{folder}/{names[0]}")  # gone already: no error
    assert list_names(fs, folder, "seg-*.parquet") == names[1:]
    assert list_names(fs, folder + "/nothing-here") == []


def test_put_whole_replaces_locally_and_leaves_no_temporary(tmp_path: Path) -> None:
    fs, path = resolve(str(tmp_path / "note.json"))
    put_whole(fs, path, b"old")
    put_whole(fs, path, b"new")
    assert read_whole(fs, path) == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["note.json"]


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_write_that_fails_midway_publishes_nothing(
    where: str, prefix: str, tmp_path: Path
) -> None:
    location = prefix if where == "s3" else str(tmp_path)
    fs, folder = resolve(location)
    path = f"{folder}/seg-000000000001-000000000001.parquet"
    table = pa.table({"position": [1, 2], "text": ["a", "b"]})

    def write(writer: pq.ParquetWriter) -> int:
        writer.write_table(table)  # a row group is written, then the producer fails
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        put_whole(fs, path, parquet_bytes(SCHEMA, write)[0])
    assert fs.get_file_info(path).type == pafs.FileType.NotFound
    assert list_names(fs, folder) == []


def test_pyarrow_stream_publishes_a_partial_object(prefix: str) -> None:
    """The hazard put_whole avoids (apache/arrow#40502). Should pyarrow stop publishing
    here, this fails: then streaming a segment straight to S3 may be reconsidered."""
    fs, folder = resolve(prefix)
    with pytest.raises(RuntimeError), fs.open_output_stream(f"{folder}/partial") as stream:
        stream.write(b"half of a file")
        raise RuntimeError("interrupted")
    assert read_whole(fs, f"{folder}/partial") == b"half of a file"


# -- the lease -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_until_release(prefix: str) -> None:
    fs, folder = resolve(prefix)
    clock = FakeClock()
    first = Lease(fs, f"{folder}/lease", "host-a:101", ttl_s=60, clock=clock).acquire()
    assert first.held
    clock.now += 30
    with pytest.raises(UserError) as caught:
        Lease(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock).acquire()
    message = str(caught.value)
    assert "(host-a:101) has held" in message
    assert "since 2027-01-15 08:00:00 UTC" in message
    assert message.endswith("wait for it to finish or stop it.")
    assert FAKE_SECRET not in message

    first.release()
    assert not first.held
    with Lease(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock) as second:
        assert second.held
    assert fs.get_file_info(f"{folder}/lease").type == pafs.FileType.NotFound


def test_a_renewed_lease_stays_a_lapsed_one_is_taken_over(prefix: str) -> None:
    fs, folder = resolve(prefix)
    clock = FakeClock()
    first = Lease(fs, f"{folder}/lease", "host-a:101", ttl_s=60, clock=clock).acquire()
    clock.now += 50
    first.renew()
    clock.now += 50  # 100 s after acquiring, 50 s after renewing: still held
    with pytest.raises(UserError, match="host-a:101"):
        Lease(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock).acquire()

    clock.now += 11  # host-a stopped renewing: the lease lapsed
    second = Lease(fs, f"{folder}/lease", "host-b:202", ttl_s=60, clock=clock).acquire()
    assert second.held
    first.release()  # no longer its own: leaves host-b's lease alone
    with pytest.raises(UserError, match="host-b:202"):
        Lease(fs, f"{folder}/lease", "host-c:303", ttl_s=60, clock=clock).acquire()

    clock.now += 61
    third = Lease(fs, f"{folder}/lease", "host-c:303", ttl_s=60, clock=clock).acquire()
    with pytest.raises(RunStopped, match=r"lost its lease .* to another run \(host-c:303\)"):
        second.renew()
    assert not second.held
    third.release()
    assert fs.get_file_info(f"{folder}/lease").type == pafs.FileType.NotFound


def test_a_lease_is_for_s3(tmp_path: Path) -> None:
    fs, path = resolve(str(tmp_path / "lease"))
    with pytest.raises(TypeError, match="flock"):
        Lease(fs, path, "me", ttl_s=60)


# -- large files, and local copies ---------------------------------------------------------


def test_a_large_file_goes_up_in_parts_whole_or_not_at_all(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "PART_BYTES", 5 << 20)  # S3's smallest part
    local = tmp_path / "big.bin"
    data = os.urandom(11 << 20)  # three parts
    local.write_bytes(data)
    fs, folder = resolve(prefix)
    store.upload_file(fs, f"{folder}/big.bin", local)
    assert read_whole(fs, f"{folder}/big.bin") == data
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
    fs, folder = resolve(prefix)
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

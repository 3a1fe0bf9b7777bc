"""S3 for batchrun: where it is (`S3Spec`, `Remote`), and files on it that are never seen
half-written, through pyarrow's `S3FileSystem`.

- `put_whole` publishes bytes whole or not at all. A PUT is atomic, but a pyarrow output
  stream that fails mid-write can still publish the part written so far (apache/arrow#40502:
  closing the stream completes the upload). So a file is serialised whole in memory first
  and handed over in one write and one close; an error while producing it never reaches the
  store. The filesystem is opened with `allow_delayed_open`, so a file under pyarrow's part
  size (10 MiB) goes up in a single PutObject.
- `upload_file` publishes a local file the same way; a large one as a multipart upload
  driven through botocore, completed after its last part and aborted on any error.
- Nothing is renamed on S3: pyarrow's `move` there is a copy and a delete, not atomic.
- Reads and listings after a write are strongly consistent on S3, so a listing sees every
  file published before it was made: `pull` makes a local copy of a folder the remote's,
  and `stage_input` keeps local copies of an input.

One run at a time on a location: `batchrun.storage.runlock`, which builds on this module.

Credentials come from the standard AWS variables, or those a job names (or, when those are
unset, the AWS SDK's own chain); they are never logged nor put in a message.

S3 is reached through the proxy the same variables give the gateway (`HTTPS_PROXY`,
`HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; see `batchrun.core.network`), in botocore's config and
pyarrow's `proxy_options` alike; both speak HTTP(S) proxies only, so a SOCKS one is a
sentence saying so.

Errors: pyarrow's and botocore's are translated in one place, `s3_errors`, into `S3Error`
(an OSError), which says whether the failure passes (`transient`: the store or the way to
it is down, busy or slow: a refused or dropped connection, a timeout, a 5xx, SlowDown,
RequestTimeout, throttling) or not (access denied, no such bucket, bad credentials). A run
waits out the first kind for `limits.storage_wait_s` and stops at once on the second.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from ..core.messages import first_line
from ..core.network import SOCKS, ProxyURL, proxy_from_env
from ..errors import UserError

S3_SCHEME = "s3://"

# Failures that pass. S3's error codes (botocore reads them from the XML body) ...
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
# ... and the AWS C++ SDK's names for them, as pyarrow's messages give them ("AWS Error
# SLOW_DOWN during PutObject operation: ...").
TRANSIENT_NAMES = frozenset(
    {
        "NETWORK_CONNECTION",
        "SLOW_DOWN",
        "SERVICE_UNAVAILABLE",
        "INTERNAL_FAILURE",
        "REQUEST_TIMEOUT",
        "THROTTLING",
        "REQUEST_LIMIT_EXCEEDED",
    }
)
# An object not there, as pyarrow says it when the object went between its look at it (a
# HEAD, which alone gives FileNotFoundError) and its read (a GET): a merge elsewhere removed it.
MISSING_NAMES = frozenset({"RESOURCE_NOT_FOUND", "NO_SUCH_KEY"})
_AWS_NAME = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP (?:status|response) (?:code )?(\d{3})")


class S3Error(OSError):
    """An S3 request that failed (see `s3_errors`); `transient` when the failure is of the
    kind that passes: the store, or the way to it, is down, busy or slow."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

    @property
    def why(self) -> str:
        """The failure in a few words, for a sentence."""
        return first_line(self)


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Where the S3 layer's errors become batchrun's: a pyarrow OSError or a botocore error
    raised inside is raised again as an `S3Error` saying `what` failed, and whether that
    passes. FileNotFoundError (an object not there) and the errors of local files (which
    carry an errno) go through as they are; an object pyarrow found gone only when it read
    it is FileNotFoundError too."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # the pyarrow-only path: no botocore error can come
        BotoCoreError = ClientError = _NeverRaised
    try:
        yield
    except (S3Error, FileNotFoundError):
        raise
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.get("Code") or status or "")
        transient = code in TRANSIENT_CODES or status >= 500 or status == 429
        message = str(error.get("Message") or "").strip()
        raise S3Error(
            f"{what} failed: {code}{f' ({message[:120]})' if message else ''}", transient=transient
        ) from exc
    except BotoCoreError as exc:  # no answer: connection refused or dropped, a timeout...
        from botocore.exceptions import ConnectionError, HTTPClientError

        transient = isinstance(exc, ConnectionError | HTTPClientError)
        raise S3Error(f"{what} failed: {first_line(exc)}", transient=transient) from exc
    except OSError as exc:
        if exc.errno is not None:
            raise  # this machine's (a local file), not the store's: pyarrow's have no errno
        text = str(exc)
        name = _AWS_NAME.search(text)
        if name and name[1] in MISSING_NAMES:
            raise FileNotFoundError(errno.ENOENT, f"{what} failed: {_brief(text)}") from exc
        said = _HTTP_STATUS.search(text)
        http = int(said[1]) if said else 0
        transient = bool(
            (name and name[1] in TRANSIENT_NAMES)
            or http >= 500
            or http == 429
            or "curlCode" in text  # no answer at all: the connection failed
        )
        raise S3Error(f"{what} failed: {_brief(text)}", transient=transient) from exc


class _NeverRaised(Exception):
    """Stands in for botocore's errors where botocore is not installed."""


def _brief(text: str) -> str:
    """pyarrow's message without its preamble ("When uploading object with key ...: ")."""
    line = text.strip().splitlines()[0] if text.strip() else "no message"
    if (start := line.find("AWS Error")) > 0:
        line = line[start:]
    return line[:200]


CONNECT_TIMEOUT_S = 5.0  # botocore's default is 60
READ_TIMEOUT_S = 15.0  # between bytes of an answer; botocore's default is 60


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3: what the AWS variables say, or what a filesystem was made with."""

    region: str | None = None  # None: the SDK's default
    endpoint: str | None = None  # host[:port], without scheme; None: AWS itself
    scheme: str = "https"  # how to talk to `endpoint`
    access_key: str | None = field(default=None, repr=False)  # None: the SDK's chain
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    proxy: ProxyURL | None = None  # None: direct (its repr shows no login)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3Settings:
        """The settings the standard AWS variables give (AWS_REGION, AWS_ENDPOINT_URL...),
        and the proxy the proxy variables give for the endpoint."""
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
        url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
        endpoint, scheme = _endpoint(url) if url else (None, "https")
        access_key = environ.get("AWS_ACCESS_KEY_ID") or None
        secret_key = environ.get("AWS_SECRET_ACCESS_KEY") or None
        if (access_key is None) != (secret_key is None):
            given, missing = (
                ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                if access_key
                else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            )
            raise UserError(f"{given} is set but {missing} is not: set both, or neither.")
        return cls(
            region=region,
            endpoint=endpoint,
            scheme=scheme,
            access_key=access_key,
            secret_key=secret_key,
            session_token=environ.get("AWS_SESSION_TOKEN") or None,
            proxy=_s3_proxy(endpoint, scheme, region, environ),
        )

    @classmethod
    def of(cls, fs: pafs.S3FileSystem) -> S3Settings:
        """The settings `fs` was made with (read from its pickled state)."""
        options: dict[str, Any] = fs.__reduce__()[1][0]
        endpoint = options.get("endpoint_override") or None
        scheme = options.get("scheme") or "https"
        if endpoint and "://" in endpoint:  # pyarrow's own reading of AWS_ENDPOINT_URL
            endpoint, scheme = _endpoint(endpoint)
        return cls(
            region=options.get("region") or None,
            endpoint=endpoint,
            scheme=scheme,
            access_key=options.get("access_key") or None,
            secret_key=options.get("secret_key") or None,
            session_token=options.get("session_token") or None,
            proxy=_proxy_of(options.get("proxy_options")),
        )

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow filesystem on these settings."""
        options: dict[str, Any] = {"scheme": self.scheme, "allow_delayed_open": True}
        if self.region:
            options["region"] = self.region
        if self.endpoint:
            options["endpoint_override"] = self.endpoint
        if self.access_key:
            options.update(access_key=self.access_key, secret_key=self.secret_key)
            if self.session_token:
                options["session_token"] = self.session_token
        if self.proxy is not None:
            options["proxy_options"] = {
                "scheme": self.proxy.scheme,
                "host": self.proxy.host,
                "port": self.proxy.port,
                **({"username": self.proxy.user} if self.proxy.user else {}),
                **(
                    {"password": self.proxy.reveal_password()} if self.proxy.has_credentials else {}
                ),
            }
        return pafs.S3FileSystem(**options)

    def client(self) -> Any:
        """A botocore S3 client on these settings (botocore is imported only here)."""
        try:
            import botocore.config
            import botocore.session
        except ImportError:
            raise UserError(
                "s3:// locations need botocore: pip install 'batchrun[s3]' (or boto3)."
            ) from None

        # Always a proxies mapping: an empty one keeps botocore from reading the process's
        # variables on its own (botocore masks a proxy's login in its messages). A store that
        # accepts connections and never answers fails a request in seconds, not minutes: the
        # run waits the outage out at its own pace.
        config = botocore.config.Config(
            s3={"addressing_style": "path"} if self.endpoint else {},
            proxies=self.botocore_proxies(),
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"mode": "standard", "max_attempts": 2},
        )
        return botocore.session.get_session().create_client(
            "s3",
            region_name=self.region,
            endpoint_url=f"{self.scheme}://{self.endpoint}" if self.endpoint else None,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            config=config,
        )

    def botocore_proxies(self) -> dict[str, str]:
        """botocore's `proxies` for these settings: the one proxy for both schemes, or none."""
        if self.proxy is None:
            return {}
        proxy = self.proxy
        login = ""
        if proxy.has_credentials:
            login = f"{quote(proxy.user, safe='')}:{quote(proxy.reveal_password(), safe='')}@"
        url = f"{proxy.scheme}://{login}{proxy.shown.partition('://')[2]}"
        return {"http": url, "https": url}


def _s3_proxy(
    endpoint: str | None, scheme: str, region: str | None, environ: Mapping[str, str]
) -> ProxyURL | None:
    """The proxy the variables give for the S3 endpoint (AWS's own where none is set)."""
    host = endpoint or f"s3.{region or 'us-east-1'}.amazonaws.com"
    proxy = proxy_from_env(f"{scheme}://{host}", environ)
    if proxy is not None and proxy.scheme in SOCKS:
        raise UserError(
            f"The proxy variables send S3 ({host}) through the SOCKS proxy {proxy.shown}, and "
            f"S3 is reached through HTTP(S) proxies only: name {host} in NO_PROXY, or set "
            f"HTTPS_PROXY to an HTTP proxy."
        )
    return proxy


def _proxy_of(options: Any) -> ProxyURL | None:
    """A pyarrow filesystem's proxy_options as a ProxyURL."""
    if not isinstance(options, dict) or not options.get("host"):
        return None
    return ProxyURL(
        str(options.get("scheme") or "http"),
        str(options["host"]),
        int(options.get("port") or 0),
        str(options.get("username") or ""),
        str(options.get("password") or ""),
    )


def _endpoint(url: str) -> tuple[str, str]:
    """An endpoint URL as (host[:port], scheme); without a scheme, https."""
    if "://" not in url:
        return url.rstrip("/"), "https"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise UserError(
            f"The S3 endpoint {url!r} is not of the form http(s)://host[:port]: "
            f"fix AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)."
        )
    return parts.netloc, parts.scheme


def is_s3(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.S3FileSystem)


# -- files ---------------------------------------------------------------------------------


def put_whole(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Publish `data` at `path` on S3 whole or not at all, replacing what was there."""
    if not is_s3(fs):
        raise TypeError(f"put_whole is for S3, not {fs.type_name}: locally, use atomic_file")
    with s3_errors(f"S3 upload of s3://{path}"):
        stream = fs.open_output_stream(path)
        # One write, then close. Not `with`: leaving a `with` on an error closes the stream,
        # and closing completes the upload with whatever was written (apache/arrow#40502).
        stream.write(data)
        stream.close()


def remove(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file; one already gone is no error (a merge raced us, or a retry)."""
    with contextlib.suppress(FileNotFoundError), s3_errors(f"S3 delete of s3://{path}"):
        fs.delete_file(path)


# -- one run at a time ---------------------------------------------------------------------


# -- a local folder kept as a copy of a remote one -----------------------------------------

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")  # either case
PART_BYTES = 16 << 20  # a file larger than this goes up in parts of this size (S3: >= 5 MiB)


@dataclass(frozen=True)
class S3Spec:
    """How a job reaches S3: a region and endpoint of its own, or the names of the
    variables that hold its credentials; what is not given comes from the standard AWS
    variables. It holds no secret, so it travels to Ray workers, which read the
    variables in their own environment."""

    region: str | None = None
    endpoint_url: str | None = None
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = "AWS_SESSION_TOKEN"
    lease_s: float = 60.0  # a run's lease on a checkpoint lapses this long after its renewal

    def settings(self, environ: Mapping[str, str] | None = None) -> S3Settings:
        environ = os.environ if environ is None else environ
        standard = {
            k: v
            for k, v in environ.items()
            if k.startswith("AWS_") or k.lower() in _PROXY_VARIABLES
        }
        for name, wanted in (
            ("AWS_ACCESS_KEY_ID", self.access_key_id_env),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key_env),
            ("AWS_SESSION_TOKEN", self.session_token_env),
        ):
            standard.pop(name, None)
            if environ.get(wanted):
                standard[name] = environ[wanted]
        if self.region:
            standard["AWS_REGION"] = self.region
        if self.endpoint_url:
            standard["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        return S3Settings.from_env(standard)


@dataclass(frozen=True)
class Remote:
    """A folder or file on S3 (`bucket/key`, no scheme) and how to reach it. Picklable
    without secrets (see `S3Spec`), so a Ray worker can be handed one."""

    path: str
    spec: S3Spec = S3Spec()

    @classmethod
    def of_url(cls, url: str, spec: S3Spec) -> Remote:
        bucket, _, key = url[len(S3_SCHEME) :].partition("/")
        if not bucket or not key.strip("/"):
            raise UserError(f"{url!r} names no object: write s3://bucket/key.")
        return cls(f"{bucket}/{key}".rstrip("/"), spec)

    @functools.cached_property
    def fs(self) -> pafs.S3FileSystem:
        return self.spec.settings().filesystem()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "spec": self.spec}  # not the filesystem

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "path", state["path"])
        object.__setattr__(self, "spec", state["spec"])

    def sibling(self, suffix: str) -> Remote:
        """The object or folder named as this one with `suffix` added."""
        return Remote(self.path + suffix, self.spec)

    @property
    def url(self) -> str:
        return f"{S3_SCHEME}{self.path}"

    def child(self, name: str) -> str:
        return f"{self.path}/{name}"

    def info(self, path: str | None = None) -> pafs.FileInfo:
        """What S3 says of the file at `path` (this one when None): its type, size, time."""
        where = self.path if path is None else path
        with s3_errors(f"S3 lookup of {S3_SCHEME}{where}"):
            return self.fs.get_file_info(where)

    def names(self, pattern: str = "*") -> dict[str, tuple[int, int]]:
        """name -> (size, modification time in ns) of the files right under this folder
        that match `pattern`."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        with s3_errors(f"S3 listing of {self.url}"):
            found = self.fs.get_file_info(selector)
        return {
            info.base_name: (int(info.size or 0), int(info.mtime_ns or 0))
            for info in found
            if info.type == pafs.FileType.File and fnmatch.fnmatchcase(info.base_name, pattern)
        }


def upload_file(fs: pafs.FileSystem, path: str, local: str | os.PathLike[str]) -> None:
    """Publish the local file `local` at `path`, whole or not at all.

    Up to PART_BYTES it is read into memory and goes up in one PUT (`put_whole`). A larger
    one (a merged segment, an output) goes up as an S3 multipart upload driven here through
    botocore, a part at a time from the file: it becomes visible only when completed, after
    its last part, and any error aborts it, so no partial object is ever published (which a
    pyarrow output stream can do: see the module's docstring). Memory: one part."""
    size = os.path.getsize(local)
    if size <= PART_BYTES:
        with open(local, "rb") as handle:
            put_whole(fs, path, handle.read())
        return
    client = S3Settings.of(fs).client()  # a UserError without botocore
    bucket, _, key = path.partition("/")
    with s3_errors(f"S3 upload of s3://{path}"):
        _multipart(client, bucket, key, local)


def _multipart(client: Any, bucket: str, key: str, local: str | os.PathLike[str]) -> None:
    """A multipart upload of `local`, a part at a time, aborted on any error."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        with open(local, "rb") as handle:
            while chunk := handle.read(PART_BYTES):
                number = len(parts) + 1
                answer = client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        raise


def download_file(fs: pafs.FileSystem, path: str, local: str | os.PathLike[str]) -> None:
    """Copy `path` to the local file `local` (under a temporary name, then renamed: a local
    reader never sees half of it); FileNotFoundError when `path` is not there."""
    folder, name = os.path.split(os.fspath(local))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        # A full local disk is ENOSPC, which s3_errors lets through as it is.
        with (
            s3_errors(f"S3 download of s3://{path}"),
            fs.open_input_stream(path) as stream,
            open(tmp, "wb") as handle,
        ):
            while chunk := stream.read(PART_BYTES):
                handle.write(chunk)
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def pull(remote: Remote, folder: str | os.PathLike[str], pattern: str) -> bool:
    """Make the files of `folder` that match `pattern` those of `remote`: download what is
    new or differs in size or modification time (a copy takes its object's time), delete
    what the remote no longer has. Returns whether anything changed. A file removed remotely
    between the listing and its download (a merge elsewhere) is FileNotFoundError: the
    caller lists again.

    The folder is scanned before the remote is listed. Whoever writes into it (a run's
    commits and merges, on this machine) puts a file on the remote before it appears here,
    so a file seen here and then missing from the later listing was removed remotely; a
    file that appears here after the scan is left alone."""
    os.makedirs(folder, exist_ok=True)
    here = {}
    for entry in os.scandir(folder):
        if entry.is_file() and fnmatch.fnmatchcase(entry.name, pattern):
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                info = entry.stat()
                here[entry.name] = (info.st_size, info.st_mtime_ns)
    there = remote.names(pattern)
    changed = False
    for name in sorted(set(here) - set(there)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))
        changed = True
    for name, (size, mtime_ns) in sorted(there.items()):
        if here.get(name) != (size, mtime_ns):
            target = os.path.join(folder, name)
            download_file(remote.fs, remote.child(name), target)
            os.utime(target, ns=(mtime_ns, mtime_ns))
            changed = True
    return changed


def stage_input(remote: Remote, cache: str | os.PathLike[str], what: str = "input") -> str:
    """An S3 input (one object, or a prefix of parts) as local files in
    `cache`: the path of the copy (the file, or the folder of parts). Each part is
    downloaded when its copy is missing or differs in size or modification time from the
    object, so a job's later runs and commands read the copy. Why a copy and not remote
    reads: a run reads its input two or three times (the check of every row and id, the
    alignment check, the batches), and a local copy is read at disk speed each time."""
    local = os.path.join(os.fspath(cache), "s3", *remote.path.split("/"))
    fs = remote.fs
    try:
        info = fs.get_file_info(remote.path)
        if info.type == pafs.FileType.File:
            parts = {"": info}
        elif info.type == pafs.FileType.Directory or remote.path.count("/") == 0:
            selector = pafs.FileSelector(remote.path, allow_not_found=True, recursive=True)
            parts = {
                part.path[len(remote.path) + 1 :]: part
                for part in fs.get_file_info(selector)
                if part.type == pafs.FileType.File
            }
        else:
            parts = {}
    except OSError as exc:
        raise UserError(
            f"The {what} {remote.url} cannot be listed ({first_line(exc, 160)}): check "
            f"the bucket, the credentials and the endpoint."
        ) from None
    if not parts:
        fix = "input.path in the job" if what == "input" else "the URL"
        raise UserError(f"The {what} {remote.url} does not exist: check {fix}.")
    if "" not in parts and os.path.isdir(local):  # a prefix: parts gone from it go here too
        for folder, _, names in os.walk(local):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.relpath(path, local) not in parts:
                    os.unlink(path)
    for name, part in parts.items():
        target = os.path.join(local, name) if name else local
        os.makedirs(os.path.dirname(target), exist_ok=True)
        mtime_ns = int(part.mtime_ns or 0)
        try:
            here = os.stat(target)
            if here.st_size == part.size and here.st_mtime_ns == mtime_ns:
                continue
        except FileNotFoundError:
            pass
        try:
            download_file(fs, part.path, target)
        except OSError as exc:
            raise UserError(
                f"The {what} {S3_SCHEME}{part.path} cannot be read "
                f"({first_line(exc, 160)}): check the credentials and the endpoint."
            ) from None
        os.utime(target, ns=(mtime_ns, mtime_ns))
    return local

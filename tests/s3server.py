"""A moto S3 server on loopback for the tests (never a real bucket)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from batchrun.storage.store import S3Settings

BUCKET = "batchrun-test"
FAKE_KEY_ID = "fake-key-id"
FAKE_SECRET = "fake-secret-CANARY-9f8e7d"


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables pointing at the moto server at `endpoint`."""
    return {
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": "/nonexistent",  # no profile of the host's
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 holding BUCKET; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        S3Settings.from_env(aws_env(endpoint)).client().create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()

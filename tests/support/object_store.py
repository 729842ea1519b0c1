"""An S3-compatible object store for tests: moto's server (a real HTTP server speaking the S3 protocol) on a
spare port of this machine, with one empty bucket, stopped when the test ends."""

import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

from tests.support.processes import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PREFIX = "artifacts"


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    bucket: str

    @property
    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def environment(self) -> dict[str, str]:
        """What a process the test starts needs to use this store as its artifact storage (recsite/settings.py)."""
        return {
            "ARTIFACT_STORAGE": "s3",
            "ARTIFACT_S3_BUCKET": self.bucket,
            "ARTIFACT_S3_ENDPOINT_URL": self.endpoint,
            "ARTIFACT_S3_PREFIX": PREFIX,
            "ARTIFACT_S3_REGION": "us-east-1",
            **CREDENTIALS,
        }

    def storage(self) -> dict:
        """The STORAGES["artifacts"] entry recsite/settings.py builds from environment()."""
        options = {
            "bucket_name": self.bucket,
            "endpoint_url": self.endpoint,
            "region_name": "us-east-1",
            "location": PREFIX,
            "addressing_style": "path",
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": False,
            "access_key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}

    def key(self, name: str) -> str:
        return f"{PREFIX}/{name}"

    def read(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)


@contextmanager
def s3_server():
    """A running server with a bucket of its own; moto keeps its buckets in this process's memory, so the state
    is reset when the server stops (a later server in the same test session starts empty)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        store = ObjectStore(endpoint=endpoint, bucket=f"recsite-{uuid.uuid4().hex[:12]}")
        store.client.create_bucket(Bucket=store.bucket)
        yield store
    finally:
        try:
            reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(reset, timeout=10).close()
        finally:
            server.stop()

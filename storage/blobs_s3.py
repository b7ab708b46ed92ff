"""The distributed :class:`~storage.blobs.BlobStore`: any S3-compatible object store.

``blobs.url = "s3://bucket/prefix"`` names the bucket and a key prefix; a
blob is the object ``prefix/<sha256>``. ``blobs.endpoint_url`` points at a
store other than AWS (MinIO, Ceph, moto's server in the tests), which is then
addressed path-style. Credentials come from the environment only (boto3's
default chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile,
an instance role).

Why one PUT per blob, not a multipart upload: S3 makes an object visible only
once its PUT has completed, so a connection cut halfway (or a server that
dies) leaves no object and nothing to clean up, whereas an interrupted
multipart upload leaves parts that are billed until someone aborts them.
A single PUT takes objects up to 5 GB; our blobs are capped far below that
(``crawler.max_image_bytes``). The body is sent with its SHA-256 checksum
(``ChecksumSHA256``), so a store that implements checksums also refuses a
body that arrived damaged.

Two processes putting the same blob at once both succeed: the key is the
content's hash, so whichever PUT lands last writes the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from storage.blobs import BlobNotFound, BlobStoreError, BlobStoreUnavailable, check_sha256

if TYPE_CHECKING:
    from config.settings import BlobSettings

__all__ = ["S3BlobStore", "parse_s3_url"]

# Error codes S3-compatible stores use for "no such object" (HEAD answers a bare 404).
_MISSING = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise BlobStoreError(f"blobs.url must look like s3://bucket/prefix, not {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3BlobStore:
    """Blobs as objects ``prefix/<sha256>`` in one bucket; see the module docstring."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, where: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.where = where or f"s3://{bucket}/{prefix}"

    @classmethod
    def from_settings(cls, blobs: BlobSettings) -> S3BlobStore:
        import boto3
        from botocore.config import Config

        if not blobs.url:
            raise BlobStoreError("blobs.kind is 's3' but blobs.url is empty (want s3://bucket/prefix)")
        bucket, prefix = parse_s3_url(blobs.url)
        config = Config(
            connect_timeout=blobs.connect_timeout_s,
            read_timeout=blobs.read_timeout_s,
            retries={"mode": "standard", "total_max_attempts": max(1, blobs.max_attempts)},
            s3={"addressing_style": "path"} if blobs.endpoint_url else None,
            # Checksums only when we ask (put sends SHA-256): some S3-compatible
            # stores refuse the CRC trailers newer boto3 adds by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=blobs.endpoint_url or None, region_name=blobs.region or None, config=config)
        where = f"s3://{bucket}/{prefix}" + (f" at {blobs.endpoint_url}" if blobs.endpoint_url else "")
        return cls(client, bucket, prefix, where=where)

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{check_sha256(sha256)}"

    def _error(self, exc: Exception, doing: str) -> BlobStoreError:
        """One of our errors for a botocore one, naming the store and what failed."""
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "?"))
            return BlobStoreError(f"{doing} in {self.where}: {code}: {err.get('Message') or exc}")
        if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
            return BlobStoreUnavailable(f"{doing}: the blob store {self.where} cannot be reached: {exc}")
        return BlobStoreError(f"{doing} in {self.where}: {exc}")

    def put(self, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.sha256(data)
        sha = digest.hexdigest()
        doing = f"cannot store blob {sha[:12]}"
        if self._exists(sha, doing):
            return sha
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(sha), Body=data,
                                   ChecksumSHA256=base64.b64encode(digest.digest()).decode("ascii"))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, doing) from exc
        return sha

    def get(self, sha256: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(sha256)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                raise BlobNotFound(sha256) from None
            raise self._error(exc, f"cannot read blob {sha256[:12]}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"cannot read blob {sha256[:12]}") from exc

    def exists(self, sha256: str) -> bool:
        return self._exists(sha256, f"cannot look up blob {sha256[:12]}")

    def _exists(self, sha256: str, doing: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(sha256)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return False
            raise self._error(exc, doing) from exc
        except BotoCoreError as exc:
            raise self._error(exc, doing) from exc
        return True

    def delete(self, sha256: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(sha256)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, f"cannot delete blob {sha256[:12]}") from exc

    def check(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "the blob bucket is not usable") from exc
        return self.where

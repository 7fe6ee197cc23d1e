"""Object store: a local folder or any S3 API (AWS, MinIO, moto), behind one small interface.

The local store mirrors the S3 layout under a folder so that the embedded profile and the
deployed one differ only by ``ML_PLATFORM_STORE_URL``. Writes are atomic per object: a local
write goes to a temporary file that is renamed into place, and an S3 PUT (or completed multipart
upload) is atomic by itself, so a reader never sees a partial object.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from ml_platform.lib.paths import local_name

_TMP_PREFIX = ".tmp-"
#: Parallel downloads of one fetch (boto3 clients are thread-safe; its pool holds 10 connections).
FETCH_THREADS = 8
#: Files up to this size are written with one PUT; larger ones as boto3's multipart upload (its
#: own threshold is the same 8 MiB).
SINGLE_PUT_BYTES = 8 << 20
#: Longest file or folder name of a local filesystem, in bytes (ext4, XFS, APFS, NTFS: 255).
_NAME_MAX = 255


class StoreUnavailableError(RuntimeError):
    """The object store could not be reached or refused the request."""


class ObjectChangedError(RuntimeError):
    """The object no longer has the version (ETag) the caller asked for."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    last_modified: datetime
    size: int
    etag: str | None = None  # None: not known from the listing (local store), see ObjectStore.etag


class ObjectStore(Protocol):
    """A bucket (or a folder laid out like one). ``local_copy(key, if_match=etag)`` yields exactly
    the version ``etag`` names, whatever an ETag is in that store."""

    url: str

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def etag(self, key: str) -> str: ...
    def head(self, key: str) -> ObjectInfo: ...
    def exists(self, key: str) -> bool: ...
    def local_copy(
        self, key: str, if_match: str | None = None
    ) -> contextlib.AbstractContextManager[Path]: ...
    def read_bytes(self, key: str) -> bytes: ...
    def fetch(self, keys: list[str], into: Path) -> list[Path]: ...
    def put_file(self, src: Path, key: str, *, move: bool = False) -> None: ...
    def put_bytes(self, data: bytes, key: str) -> None: ...
    def create_bytes(self, data: bytes, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...
    def bucket_and_prefix(self) -> tuple[str, str] | None: ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)  # hashlib releases the GIL: this can run beside DuckDB
    return digest.hexdigest()


def content_etag(sha256_hex: str) -> str:
    """The local store's ETag: a content hash, so identical bytes re-put keep their ETag."""
    return sha256_hex[:32]


class LocalStore:
    """A folder laid out like a bucket. ETags are content hashes (see :func:`content_etag`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        """The file of ``key``. A key that a folder cannot hold as the same object is refused
        with ValueError: ``.``/``..`` segments and absolute keys (S3 keeps them literally, a path
        would resolve them elsewhere), NUL, and segments longer than the filesystem allows."""
        segments = key.split("/")
        if key.startswith("/") or any(s in {".", ".."} for s in segments):
            raise ValueError(f"object key has '.', '..' or a leading '/': {key!r}")
        if "\x00" in key:
            raise ValueError(f"object key contains a NUL character: {key!r}")
        if any(len(os.fsencode(s)) > _NAME_MAX for s in segments):
            raise ValueError(
                f"object key has a segment longer than {_NAME_MAX} bytes, the most a local "
                f"folder store can hold (S3 allows it): {key[:80]!r}..."
            )
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"object key escapes the store root: {key!r}")
        return path

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.exists():
            return
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP_PREFIX)]  # snapshots in progress
            for name in sorted(files):
                if name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted while listing
                    stat = path.stat()
                    # ctime too: a file moved or copied in with an old mtime (mv, cp -p, rsync -a)
                    # has just landed, and its ctime says so.
                    yield ObjectInfo(
                        key=key,
                        last_modified=datetime.fromtimestamp(
                            max(stat.st_mtime, stat.st_ctime), tz=UTC
                        ),
                        size=stat.st_size,
                    )

    def etag(self, key: str) -> str:
        return content_etag(sha256_file(self._path(key)))

    def head(self, key: str) -> ObjectInfo:
        """The object's listing entry with its ETag (FileNotFoundError when it is gone)."""
        path = self._path(key)
        stat = path.stat()
        return ObjectInfo(
            key=key,
            last_modified=datetime.fromtimestamp(max(stat.st_mtime, stat.st_ctime), tz=UTC),
            size=stat.st_size,
            etag=self.etag(key),
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    @contextlib.contextmanager
    def local_copy(self, key: str, if_match: str | None = None) -> Iterator[Path]:
        """The object's own file (no copy); with ``if_match``, a hard-linked snapshot of exactly
        that version (else :class:`ObjectChangedError`), so a re-put racing the read is never
        read under the old ETag."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {self.uri(key)}")
        if if_match is None:
            yield path
            return
        with self._snapshot(path) as snapshot:
            if content_etag(sha256_file(snapshot)) != if_match:
                raise ObjectChangedError(f"{self.uri(key)} is no longer {if_match}")
            yield snapshot

    @contextlib.contextmanager
    def _snapshot(self, path: Path) -> Iterator[Path]:
        """A hard link under the same name in a hidden folder beside the file (no listing enters
        it): a later re-put replaces the file's name, not the linked bytes."""
        folder = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        folder.mkdir()
        link = folder / path.name
        try:
            os.link(path, link)
        except FileNotFoundError:
            folder.rmdir()
            raise FileNotFoundError(f"no object {path}") from None
        try:
            yield link
        finally:
            link.unlink(missing_ok=True)
            folder.rmdir()

    def bucket_and_prefix(self) -> None:
        """A folder is no bucket: no S3 notification names its objects."""
        return None

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def fetch(self, keys: list[str], into: Path) -> list[Path]:
        """Local paths of ``keys``; a folder store needs no copy."""
        return [self._path(key) for key in keys]

    def _atomic_write(self, key: str, write: Any, *, exclusive: bool = False) -> bool:
        """Write a temporary file, then give it the key's name whole: replacing what was there,
        or with ``exclusive`` by a hard link, which fails (False) when the name exists."""
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            if not exclusive:
                os.replace(tmp, dst)
                return True
            try:
                os.link(tmp, dst)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_file(self, src: Path, key: str, *, move: bool = False) -> None:
        """Copy ``src`` in atomically; with ``move``, rename it in when on the same filesystem."""
        if move:
            dst = self._path(key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # EXDEV: another filesystem, copy below
                os.replace(src, dst)
                return

        def write(fh: Any) -> None:
            with Path(src).open("rb") as source:
                shutil.copyfileobj(source, fh, 1 << 20)

        self._atomic_write(key, write)

    def put_bytes(self, data: bytes, key: str) -> None:
        self._atomic_write(key, lambda fh: fh.write(data))

    def create_bytes(self, data: bytes, key: str) -> bool:
        """Write ``data`` only if ``key`` does not exist yet; False when another writer was first."""
        return self._atomic_write(key, lambda fh: fh.write(data), exclusive=True)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()


#: S3's answers to a create-only write (``If-None-Match: *``) of a key that exists, and of a key
#: that another conditional write is writing at that moment.
_ALREADY_EXISTS = {"PreconditionFailed", "412"}
_WRITE_IN_FLIGHT = {"ConditionalRequestConflict", "409"}
_CONFLICT_TRIES = 50


class S3Store:
    """``s3://bucket/prefix`` through a boto3 client (endpoint URL for MinIO or moto)."""

    def __init__(self, bucket: str, prefix: str, client: Any, endpoint: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.endpoint = endpoint or "AWS default endpoint"
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return self.prefix + key

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404"}:
                raise FileNotFoundError(f"{action}: no such object ({exc})") from exc
            raise StoreUnavailableError(
                f"{action} failed at {self.endpoint} (bucket {self.bucket!r}): {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(
                f"{action} failed: object store at {self.endpoint} unreachable: {exc}"
            ) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._errors(f"listing {self.uri(prefix)}"):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"][len(self.prefix) :],
                        last_modified=obj["LastModified"].astimezone(UTC),
                        size=obj["Size"],
                        etag=obj["ETag"].strip('"'),
                    )

    def etag(self, key: str) -> str:
        with self._errors(f"reading {self.uri(key)}"):
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"].strip(
                '"'
            )

    def head(self, key: str) -> ObjectInfo:
        """The object's listing entry, from one HEAD (FileNotFoundError when it is gone)."""
        with self._errors(f"reading {self.uri(key)}"):
            found = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return ObjectInfo(
            key=key,
            last_modified=found["LastModified"].astimezone(UTC),
            size=found["ContentLength"],
            etag=found["ETag"].strip('"'),
        )

    def exists(self, key: str) -> bool:
        try:
            self.etag(key)
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def local_copy(self, key: str, if_match: str | None = None) -> Iterator[Path]:
        """Download to a temporary file; with ``if_match``, only that version (else
        :class:`ObjectChangedError`), so an overwrite racing the download is never ingested."""
        from botocore.exceptions import ClientError

        with tempfile.TemporaryDirectory(prefix="ml-platform-") as tmp:
            path = Path(tmp, local_name(key.rsplit("/", 1)[-1]))
            with self._errors(f"downloading {self.uri(key)}"):
                if if_match is None:
                    self.client.download_file(self.bucket, self._key(key), str(path))
                else:
                    try:
                        response = self.client.get_object(
                            Bucket=self.bucket, Key=self._key(key), IfMatch=if_match
                        )
                    except ClientError as exc:
                        if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                            raise ObjectChangedError(
                                f"{self.uri(key)} is no longer {if_match}"
                            ) from exc
                        raise
                    with path.open("wb") as fh:
                        shutil.copyfileobj(response["Body"], fh, 1 << 20)
            yield path

    def read_bytes(self, key: str) -> bytes:
        with self._errors(f"reading {self.uri(key)}"):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def fetch(self, keys: list[str], into: Path) -> list[Path]:
        """Download ``keys`` into the folder ``into`` (the caller owns and removes it), in key
        order. Many small objects (a day's chunks, a range's records) are fetched
        :data:`FETCH_THREADS` at a time: each GET waits on the network, not on the CPU."""
        into.mkdir(parents=True, exist_ok=True)
        paths = [into / f"{i:06d}-{local_name(k.rsplit('/', 1)[-1])}" for i, k in enumerate(keys)]

        def download(pair: tuple[str, Path]) -> None:
            key, path = pair
            with self._errors(f"downloading {self.uri(key)}"):
                self._get_to(key, path)

        if len(keys) <= 1:
            for pair in zip(keys, paths, strict=True):
                download(pair)
        else:
            with ThreadPoolExecutor(min(FETCH_THREADS, len(keys))) as pool:
                list(pool.map(download, zip(keys, paths, strict=True)))
        return paths

    def _get_to(self, key: str, path: Path) -> None:
        """One GET streamed to ``path``: boto3's ``download_file`` asks a HEAD first, a second
        request for every small object of a fetch."""
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        with path.open("wb") as fh:
            shutil.copyfileobj(body, fh, 1 << 20)

    def put_file(self, src: Path, key: str, *, move: bool = False) -> None:
        with self._errors(f"writing {self.uri(key)}"):
            if src.stat().st_size > SINGLE_PUT_BYTES:
                self.client.upload_file(str(src), self.bucket, self._key(key))
                return
            with src.open("rb") as fh:  # one PUT, without the transfer manager's threads
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=fh)

    def put_bytes(self, data: bytes, key: str) -> None:
        with self._errors(f"writing {self.uri(key)}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def create_bytes(self, data: bytes, key: str) -> bool:
        """Write ``data`` only if ``key`` does not exist yet (S3's conditional write, also in
        MinIO); False when another writer was first."""
        from botocore.exceptions import ClientError

        with self._errors(f"creating {self.uri(key)}"):
            for _ in range(_CONFLICT_TRIES):
                try:
                    self.client.put_object(
                        Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                    )
                    return True
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code in _ALREADY_EXISTS:
                        return False
                    if code not in _WRITE_IN_FLIGHT:
                        raise
                time.sleep(0.1)  # the other write ends first, then ask again
            raise StoreUnavailableError(f"{self.uri(key)}: conditional writes keep conflicting")

    def delete(self, key: str) -> None:
        with self._errors(f"deleting {self.uri(key)}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def bucket_and_prefix(self) -> tuple[str, str]:
        """How S3 notifications name this store's objects: the bucket, and the folder in it
        (``""`` or ending in ``/``)."""
        return self.bucket, self.prefix


def s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Any:
    """A boto3 S3 client with short timeouts, so an unreachable store fails a tick in seconds."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"},  # MinIO and moto serve path-style buckets
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=config,
    )


def open_store(url: str, **client_options: str | None) -> ObjectStore:
    """``file:///path``, a plain path, or ``s3://bucket[/prefix]``."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"store URL needs a bucket: {url!r}")
        client = s3_client(**client_options)
        return S3Store(
            parsed.netloc, parsed.path, client, endpoint=client_options.get("endpoint_url")
        )
    if parsed.scheme == "file":
        return LocalStore(Path(url2pathname(parsed.path)))  # "my%20project" -> "my project"
    if parsed.scheme == "":
        return LocalStore(Path(url))
    raise ValueError(f"unsupported store URL {url!r}: use file://, a folder path or s3://")


def read_frame(store: ObjectStore, keys: list[str]) -> Any:
    """The Parquet objects ``keys`` as one pandas DataFrame, in key order (empty for no keys)."""
    import pandas as pd

    if not keys:
        return pd.DataFrame()
    with tempfile.TemporaryDirectory(prefix="read-") as tmp:
        files = store.fetch(keys, Path(tmp))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_prefixes(store: ObjectStore, prefixes: list[str]) -> Any:
    """Every Parquet object under ``prefixes`` (e.g. day folders) as one DataFrame."""
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        listings = list(pool.map(lambda prefix: list(store.list(prefix)), prefixes))
    return read_frame(store, [o.key for lst in listings for o in lst if o.key.endswith(".parquet")])


def write_frame(store: ObjectStore, frame: Any, key: str, **csv_options: Any) -> None:
    """``frame`` as one object at ``key``: CSV when the key ends in ``.csv``, else Parquet."""
    with tempfile.TemporaryDirectory(prefix="write-") as tmp:
        local = Path(tmp, key.rsplit("/", 1)[-1])
        if key.endswith(".csv"):
            frame.to_csv(local, index=False, **csv_options)
        else:
            frame.to_parquet(local, index=False)
        store.put_file(local, key, move=True)

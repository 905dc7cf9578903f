"""Where datasets and SID tables live: a local folder or an object store, through ``pyarrow.fs``.

A *location* is a string: a plain path, ``file:///abs/path``, ``s3://bucket/key``, ``gs://bucket/key``,
``hdfs://host:port/path``, or any scheme pyarrow has no native filesystem for but fsspec knows
(``memory://``, ``abfs://`` ...). `resolve` turns it into ``(pyarrow FileSystem, path)``; every reader
and writer of the project goes through the helpers below, so parquet shards stream from the store
one row group at a time (ranged reads of the column chunks asked for) and nothing is copied to local
disk first.

Credentials and endpoints come from where each store's own client looks for them, never from the
location itself:

* S3 (and S3-compatible servers: MinIO, Ceph, moto): ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` with ``~/.aws/credentials`` and ``~/.aws/config``, instance
  and pod roles; ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``AWS_ENDPOINT_URL`` (or
  ``AWS_ENDPOINT_URL_S3``) for an S3-compatible server, e.g. ``http://127.0.0.1:9000``.
* GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server.
* HDFS: libhdfs (``HADOOP_HOME``, ``JAVA_HOME``, ``CLASSPATH``, ``ARROW_LIBHDFS_DIR``) and Kerberos.

Locations are recorded in spec.json, summary.json and logs, so one that carries a secret
(``user:password@``, ``?secret_key=``, ``?access_key=``, ``?session_token=``) is refused.

Writes are atomic per file: on a filesystem with rename (local, HDFS, fsspec) a file is written under
a hidden temp name beside its final one and renamed; on an object store (S3, GCS) an object becomes
visible only when its upload completes, so it is written straight to its key. A folder of shards is
complete once its dataset's spec.json (written last) exists.

Errors are `StorageError`: a `DataError` (commands exit 2) naming the location, which says whether the
bucket is missing, the key is missing, the credentials were refused or the store cannot be reached.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline.cli import ConfigError
from data_pipeline.errors import DataError

Location = str | os.PathLike

SECRET_PARAMS = ("access_key", "secret_key", "session_token", "password", "token", "sas_token")
"""Query parameters of a location that would carry a secret (refused)."""
OBJECT_STORES = ("s3", "gcs")
"""pyarrow ``type_name`` of the stores without rename, where an upload is atomic by itself."""
CREDENTIAL_HINTS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws/credentials",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS",
    "hdfs": "the Kerberos ticket / HADOOP_USER_NAME",
}
_DENIED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "EXPIRED_TOKEN",
    "ExpiredToken",
    "UNRECOGNIZED_CLIENT",
    "Forbidden",
    "Unauthorized",
    "PermissionDenied",
    "Permission denied",
)
_UNREACHABLE = (
    "NETWORK_CONNECTION",
    "Couldn't connect",
    "Could not resolve",
    "Connection refused",
    "curlCode",
)


class StorageError(DataError, ConfigError):
    """A location that cannot be read or written: missing bucket or key, refused credentials, an
    unreachable store. A `DataError`, and a `ConfigError` too, so that a flag checked against the
    store (``--data s3://...``) is reported like any bad flag (exit 2)."""


# -- locations -------------------------------------------------------------------------------------
def location(loc: Location) -> str:
    """A location as a string (``Path`` -> str)."""
    return os.fspath(loc)


def scheme(loc: Location) -> str:
    """'' for a plain path, else the URI scheme ('s3', 'file', 'gs', ...)."""
    s = location(loc)
    if "://" not in s:
        return ""
    return urlsplit(s).scheme.lower()


def is_local(loc: Location) -> bool:
    return scheme(loc) in ("", "file")


def local_path(loc: Location) -> str:
    """The local path of a plain path or file:// URI; StorageError for a remote location."""
    s = location(loc)
    if scheme(s) == "file":
        return urlsplit(s).path
    if scheme(s):
        raise StorageError(f"{s}: must be a local folder (a path or file:// URI), not object storage")
    return s


def join(loc: Location, *parts: str) -> str:
    """``loc/part/...``: os.path.join for a plain path, '/' inside a URI (before any query)."""
    s = location(loc)
    if not scheme(s):
        return os.path.join(s, *parts)
    u = urlsplit(s)
    path = posixpath.join(u.path or "/", *parts) if parts else u.path
    return urlunsplit((u.scheme, u.netloc, path, u.query, u.fragment))


def basename(loc: Location) -> str:
    s = location(loc)
    if not scheme(s):
        return os.path.basename(os.path.normpath(s))
    return posixpath.basename(urlsplit(s).path.rstrip("/"))


def _check_no_secret(s: str) -> None:
    u = urlsplit(s)
    secret = u.password is not None or any(k.lower() in SECRET_PARAMS for k, _ in parse_qsl(u.query))
    if secret:
        shown = urlunsplit((u.scheme, u.hostname or "", u.path, "", ""))
        raise StorageError(
            f"{shown}: the location carries credentials (user:password@ or a key parameter); locations are "
            f"recorded in spec.json, summary.json and logs, so pass credentials through the environment "
            f"instead ({CREDENTIAL_HINTS.get(u.scheme, 'the store client configuration')})"
        )


_CACHE: dict[tuple, pafs.FileSystem] = {}
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
"""Environment a store client reads when it is built: a change builds a new client."""


def resolve(loc: Location) -> tuple[pafs.FileSystem, str]:
    """(pyarrow FileSystem, path inside it) for a location. Filesystems are cached per process, store
    and client environment (a forked DataLoader worker builds its own client)."""
    s = location(loc)
    sch = scheme(s)
    if sch in ("", "file"):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(s))
    _check_no_secret(s)
    u = urlsplit(s)
    client_env = hash(tuple(os.environ.get(k) for k in _CLIENT_ENV))  # in memory only
    key = (os.getpid(), sch, u.netloc, u.query, client_env)
    fs = _CACHE.get(key)
    if fs is None:
        root = urlunsplit((u.scheme, u.netloc, "/", u.query, ""))
        with guard(s):
            try:
                fs = pafs.FileSystem.from_uri(root)[0]
            except pa.ArrowInvalid:  # a scheme pyarrow has no native filesystem for: fsspec's
                fs = _fsspec(s)
        _CACHE[key] = fs
    if fs.type_name in ("s3", "gcs"):
        path = (u.netloc + u.path).rstrip("/")
    elif fs.type_name.startswith("py::fsspec"):
        path = fs.handler.fs._strip_protocol(s)
    else:
        path = u.path
    return fs, path


def _fsspec(s: str) -> pafs.FileSystem:
    try:
        import fsspec
    except ImportError:
        raise StorageError(
            f"{s}: pyarrow has no filesystem for {scheme(s)}:// and fsspec is not installed"
        ) from None
    try:
        fs = fsspec.filesystem(scheme(s))
    except (ImportError, ValueError) as e:
        raise StorageError(f"{s}: no filesystem for {scheme(s)}:// ({e})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


# -- errors ----------------------------------------------------------------------------------------
def explain(loc: Location, e: BaseException) -> StorageError | None:
    """The StorageError an OSError from the store means, or None when it is not a storage problem
    (e.g. a corrupt file, which the caller reports in its own words)."""
    s, msg = location(loc), str(e)
    sch = scheme(s) or "file"
    if any(k in msg for k in _DENIED) or isinstance(e, PermissionError):
        hint = CREDENTIAL_HINTS.get(sch, "the file permissions")
        return StorageError(f"{s}: access denied: the credentials were refused or lack permission ({hint})")
    if "NO_SUCH_BUCKET" in msg or "NoSuchBucket" in msg:
        return StorageError(f"{s}: bucket {_bucket(s)!r} does not exist")
    if any(k in msg for k in _UNREACHABLE):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f" at {endpoint} (AWS_ENDPOINT_URL)" if sch == "s3" and endpoint else ""
        return StorageError(f"{s}: cannot reach the {sch} store{where}: {msg.splitlines()[0]}")
    if isinstance(e, FileNotFoundError) or "NO_SUCH_KEY" in msg or "NoSuchKey" in msg:
        return missing(s, "no such file or folder")
    if not is_local(s):
        return StorageError(f"{s}: {sch} error: {msg.splitlines()[0] if msg else type(e).__name__}")
    return None


@contextmanager
def guard(loc: Location) -> Iterator[None]:
    """Turn the store's OSErrors inside the block into a StorageError naming ``loc``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        err = explain(loc, e)
        if err is None:
            raise
        raise err from None


def _bucket(s: str) -> str:
    return urlsplit(s).netloc


def missing(loc: Location, what: str, flag: str = "") -> StorageError:
    """The error for a location that is not there (``flag``: the flag that named it, put first): in
    an object store, says when the whole bucket is missing rather than the key."""
    s = location(loc)
    named = f"{flag} {s}" if flag else s
    if scheme(s) in ("s3", "gs", "gcs"):
        fs, _ = resolve(s)
        with guard(s):
            bucket_info = fs.get_file_info(_bucket(s))
        if bucket_info.type == pafs.FileType.NotFound:
            return StorageError(f"{named}: bucket {_bucket(s)!r} does not exist")
        return StorageError(f"{named}: {what} (no such key in bucket {_bucket(s)!r})")
    return StorageError(f"{named}: {what}")


# -- reading ---------------------------------------------------------------------------------------
def info(loc: Location) -> pafs.FileInfo:
    """What is at a location (FileType NotFound when nothing is). StorageError when the store refuses
    the credentials, cannot be reached, or the location's bucket does not exist."""
    fs, path = resolve(loc)
    with guard(loc):
        found = fs.get_file_info(path)
        if found.type == pafs.FileType.NotFound and fs.type_name in OBJECT_STORES and "/" in path:
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"{location(loc)}: bucket {bucket!r} does not exist")
    return found


def is_dir(loc: Location) -> bool:
    """True for a folder (on an object store: a prefix with at least one object under it)."""
    return info(loc).type == pafs.FileType.Directory


def is_file(loc: Location) -> bool:
    return info(loc).type == pafs.FileType.File


def exists(loc: Location) -> bool:
    return info(loc).type != pafs.FileType.NotFound


def list_dir(loc: Location) -> list[pafs.FileInfo]:
    """The entries directly inside a folder (empty when it does not exist), sorted by name."""
    fs, path = resolve(loc)
    with guard(loc):
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(entries, key=lambda e: e.base_name)


def read_bytes(loc: Location) -> bytes:
    fs, path = resolve(loc)
    with guard(loc), fs.open_input_stream(path) as f:
        return f.read()


def read_text(loc: Location) -> str:
    return read_bytes(loc).decode("utf-8")


def open_input(loc: Location) -> pa.NativeFile:
    """A random-access handle: parquet reads only the footer and the column chunks asked for."""
    fs, path = resolve(loc)
    with guard(loc):
        return fs.open_input_file(path)


def parquet_file(loc: Location, **options) -> pq.ParquetFile:
    """``pq.ParquetFile`` over the store. StorageError when the file cannot be reached; pyarrow's own
    errors (ArrowInvalid, OSError) for a file that is there but not valid parquet."""
    return pq.ParquetFile(open_input(loc), **options)


def read_table(loc: Location, **options) -> pa.Table:
    """A whole (small) parquet file or folder of files."""
    fs, path = resolve(loc)
    with guard(loc):
        return pq.read_table(path, filesystem=fs, **options)


# -- writing ---------------------------------------------------------------------------------------
def makedirs(loc: Location) -> None:
    """Create a folder and its parents (nothing to do on an object store: prefixes need no marker)."""
    fs, path = resolve(loc)
    if fs.type_name in OBJECT_STORES:
        return
    with guard(loc):
        fs.create_dir(path, recursive=True)


def staging(loc: Location) -> str:
    """Where to write a file that `commit` then makes ``loc``: a hidden temp name beside it where
    the filesystem can rename, ``loc`` itself on an object store (an upload is atomic)."""
    s = location(loc)
    fs, _ = resolve(s)
    if fs.type_name in OBJECT_STORES:
        return s
    return join(parent(s), f".{basename(s)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def commit(tmp: Location, loc: Location) -> None:
    """Make the file written at ``tmp`` (from `staging`) the file ``loc``."""
    if location(tmp) == location(loc):
        return
    fs, src = resolve(tmp)
    _, dst = resolve(loc)
    with guard(loc):
        fs.move(src, dst)


def open_output(loc: Location) -> pa.NativeFile:
    fs, path = resolve(loc)
    with guard(loc):
        return fs.open_output_stream(path)


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole file atomically (readers never see half of it)."""
    makedirs(parent(loc))
    tmp = staging(loc)
    try:
        with open_output(tmp) as f, guard(loc):
            f.write(data)
        commit(tmp, loc)
    finally:
        if location(tmp) != location(loc):
            delete_file(tmp)


def write_text(loc: Location, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def parquet_writer(loc: Location, schema: pa.Schema, **options) -> pq.ParquetWriter:
    fs, path = resolve(loc)
    with guard(loc):
        return pq.ParquetWriter(path, schema, filesystem=fs, **options)


def write_parquet(loc: Location, table: pa.Table, **options) -> None:
    """A whole (small) table to one parquet file, atomically."""
    makedirs(parent(loc))
    tmp = staging(loc)
    try:
        fs, path = resolve(tmp)
        with guard(loc):
            pq.write_table(table, path, filesystem=fs, **options)
        commit(tmp, loc)
    finally:
        if location(tmp) != location(loc):
            delete_file(tmp)


def parent(loc: Location) -> str:
    s = location(loc)
    if not scheme(s):
        return os.path.dirname(os.path.normpath(s)) or "."
    u = urlsplit(s)
    return urlunsplit((u.scheme, u.netloc, posixpath.dirname(u.path.rstrip("/")), u.query, ""))


def delete_file(loc: Location) -> None:
    """Remove a file; nothing if it is not there."""
    fs, path = resolve(loc)
    with guard(loc):
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)


def delete_dir(loc: Location) -> None:
    """Remove a folder and everything in it; nothing if it is not there."""
    fs, path = resolve(loc)
    with guard(loc):
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)

"""Object-store mistakes as one line that names the URI and what to check.

No credentials, credentials the bucket refuses, a bucket that does not exist, an endpoint that does
not answer: s3fs and botocore raise these from deep inside a listing, as long tracebacks, and a
batch command used to meet them only once Ray was up. Commands call `probe` on their --data,
--model and --out URIs while they check their settings, before Ray starts: one small listing per
URI (one request on S3), and `explain` turns what it raises into a `SourceError` (an input) or a
`ConfigError` (--out). Local paths, `memory://` and `builtin:` are not probed.

    probe("s3://bucket/photos", "--data")
    probe("s3://bucket/emb", "--out", output=True)
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import fsspec

from raeflow.data.sources.location import filesystem, glob_root, is_glob
from raeflow.errors import ConfigError, RaeflowError, SourceError

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""URI schemes that `probe` checks: stores reached over the network with credentials."""

_NO_CREDENTIALS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "DefaultCredentialsError"}
)
_UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "FSTimeoutError",
    }
)
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"})
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "InvalidToken"})
_WRONG_REGION = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}
)
_CREDENTIAL_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (~/.aws/credentials)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN",
}
"""Where each store looks for credentials (gcs/s3a/abfs share their family's)."""


def is_object_store(uri: str) -> bool:
    """Whether `uri` names a bucket or container on a network object store (s3://, gs://, az://, ...)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_STORES


def probe(
    uri: str, option: str, *, output: bool = False, storage_options: dict[str, Any] | None = None
) -> None:
    """Raise a one-line error when the object store behind `uri` refuses or cannot be reached.

    `option` names where the URI came from (`--data`, `--out`, `SRC`) in the message. An input must
    list something; an output (`output=True`) may be an empty prefix, but its bucket must exist.
    Other URIs (local paths, `memory://`, `builtin:`) pass without a look.
    """
    if not is_object_store(uri):
        return
    fs, path = filesystem(uri, storage_options)
    try:
        found = _lists_something(fs, glob_root(path) if is_glob(path) else path, prefix_of(path))
    except Exception as err:  # noqa: BLE001 - what the store raised is explained, or raised as it was
        error = explain(uri, err, option)
        if error is None:
            raise
        raise error from None
    finally:
        fs.invalidate_cache()  # a probe must not hide what workers write next from this process
    if not found and not output:
        raise SourceError(f"{option} {uri}: no such file or folder (nothing is listed under it)")


def prefix_of(path: str) -> str:
    """The literal start of `path` (no protocol) before any glob character: what a listing asks for."""
    if not is_glob(path):
        return path
    return path[: min(path.find(ch) for ch in "*?[" if ch in path)]


def _lists_something(fs: fsspec.AbstractFileSystem, folder: str, prefix: str) -> bool:
    """Whether anything is at or under `prefix`; one request on S3, a one-level listing elsewhere."""
    if hasattr(fs, "call_s3") and hasattr(fs, "split_path"):  # s3fs: a listing of one key
        bucket, key, _ = fs.split_path(prefix)
        listed = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
        return bool(listed.get("KeyCount") or listed.get("Contents") or listed.get("CommonPrefixes"))
    try:
        return bool(fs.ls(folder, detail=False))
    except FileNotFoundError as err:
        if _bucket_missing(err):
            raise
        return False


def explain(uri: str, err: BaseException, option: str = "") -> RaeflowError | None:
    """The one-line error for what an object store raised about `uri`, or None when it is not a user's to fix.

    Reads the exception and its causes (s3fs wraps botocore's errors in `OSError`s): missing or
    refused credentials, access denied, no such bucket, wrong region, unreachable endpoint. The
    error is a `ConfigError` for --out and a `SourceError` for inputs; its text starts with
    `option uri:` (`uri:` without an option) and says what to check.
    """
    if not is_object_store(uri):
        return None
    chain = _chain(err)
    names = {type(e).__name__ for e in chain}
    codes = {code for e in chain if (code := _error_code(e))}
    scheme = uri.partition("://")[0].lower()
    store = {"gcs": "gs", "s3a": "s3", "abfs": "az", "abfss": "az"}.get(scheme, scheme)
    bucket = urlsplit(uri).netloc
    reason = _reason(chain, names, codes, store, bucket)
    if reason is None:
        return None
    if option == "--out" and reason.startswith("no such bucket"):
        reason = reason.replace(": check the name", ": create it, or check the name", 1)
    error_class = ConfigError if option == "--out" else SourceError
    return error_class(f"{option} {uri}: {reason}" if option else f"{uri}: {reason}")


def _reason(
    chain: list[BaseException], names: set[str], codes: set[str], store: str, bucket: str
) -> str | None:
    """What went wrong and what to check, in words; None when nothing in `chain` is a store's refusal."""
    credentials = _CREDENTIAL_HINTS.get(store, "check the credentials for this store")
    if "ProfileNotFound" in names:
        return f"{_message(chain, 'ProfileNotFound')}: check AWS_PROFILE and ~/.aws/config"
    if names & _NO_CREDENTIALS:
        return f"no credentials found for {store}://: {credentials}"
    if "InvalidAccessKeyId" in codes:
        endpoint = _endpoint(chain, store)
        return f"the access key id is not known to {endpoint}: check AWS_ACCESS_KEY_ID / AWS_PROFILE"
    if "SignatureDoesNotMatch" in codes:
        return "the secret key does not match the access key id: check AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
    if codes & _EXPIRED:
        return (
            "the session token has expired or is invalid: refresh the credentials "
            "(AWS_SESSION_TOKEN, `aws sso login`)"
        )
    if "RequestTimeTooSkewed" in codes:
        return "this machine's clock is too far off for the store to accept its requests: set the clock right"
    if "NoSuchBucket" in codes or _bucket_missing(*chain):
        return f"no such bucket {bucket!r}: check the name (and AWS_ENDPOINT_URL for a store other than AWS)"
    if codes & _WRONG_REGION:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "the default"
        return (
            f"bucket {bucket!r} is not in region {region}: set AWS_DEFAULT_REGION (or AWS_REGION) to the "
            f"bucket's region ({_first_line(chain[-1])})"
        )
    if codes & _DENIED or any(isinstance(e, PermissionError) for e in chain):
        return (
            f"access denied to bucket {bucket!r}: the credentials in use may not list it; check its bucket "
            f"policy / IAM permissions, or use other credentials ({credentials})"
        )
    if names & _UNREACHABLE or any(isinstance(e, ConnectionError | TimeoutError) for e in chain):
        endpoint = _endpoint(chain, store)
        return f"cannot reach {endpoint}: check AWS_ENDPOINT_URL (or the endpoint option) and the network"
    if "ParamValidationError" in names:
        return _first_line(next(e for e in chain if type(e).__name__ == "ParamValidationError"))
    return None


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _error_code(err: BaseException) -> str | None:
    """The store's error code of a botocore `ClientError` (`AccessDenied`, `NoSuchBucket`, `403`)."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def _bucket_missing(*errors: BaseException) -> bool:
    """Whether a `FileNotFoundError` says that the bucket itself does not exist (not just a key)."""
    return any(
        type(e).__name__ == "NoSuchBucket"
        or _error_code(e) == "NoSuchBucket"
        or (isinstance(e, FileNotFoundError) and "bucket does not exist" in str(e).lower())
        for error in errors
        for e in _chain(error)
    )


def _endpoint(chain: list[BaseException], store: str) -> str:
    """The endpoint the request went to (scheme://host:port), as well as it is known."""
    for e in chain:
        kwargs = getattr(e, "kwargs", None)  # botocore keeps the request's URL there
        if isinstance(kwargs, dict) and kwargs.get("endpoint_url"):
            parts = urlsplit(kwargs["endpoint_url"])
            return f"the endpoint {parts.scheme}://{parts.netloc}"
    url = os.environ.get(f"AWS_ENDPOINT_URL_{store.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    return f"the endpoint {url}" if url and store == "s3" else f"the {store}:// endpoint"


def _message(chain: list[BaseException], name: str) -> str:
    """The first line of the message of the exception named `name` in `chain`."""
    return _first_line(next(e for e in chain if type(e).__name__ == name))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

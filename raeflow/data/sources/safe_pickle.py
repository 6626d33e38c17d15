"""Load the CIFAR python batches without letting a pickle run code.

`pickle.load` on a file from a bucket executes whatever the file says (a `__reduce__` that calls
`os.system` is three lines). The CIFAR batches only need plain containers, byte strings and one
NumPy array, so this unpickler resolves exactly the globals those take and refuses every other one
with `SourceError`, before anything is called. The result is then checked for the batch's shape.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from raeflow.errors import SourceError

_RECONSTRUCT: Any = np.ndarray((0,), np.uint8).__reduce__()[0]
"""NumPy's array rebuilder (`numpy._core.multiarray._reconstruct`, formerly `numpy.core...`)."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes `bytes` into protocol-2 pickles as `_codecs.encode(text, "latin1")`.
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


def _plain_dtype(spec: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(spec)
    if dtype.hasobject or dtype.kind == "V":
        raise pickle.UnpicklingError(f"dtype {dtype} is not allowed (only plain numbers)")
    return dtype


def _plain_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only numpy.ndarray may be rebuilt")
    return _RECONSTRUCT(np.ndarray, shape, dtype)


def _plain_frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # Protocol 5 pickles rebuild arrays from a raw buffer instead of `_reconstruct`.
    dtype = _plain_dtype(dtype)
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order="F" if order == "F" else "C")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _plain_array,
    ("numpy._core.multiarray", "_reconstruct"): _plain_array,
    ("numpy.core.numeric", "_frombuffer"): _plain_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _plain_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def load_batch(data: bytes, *, name: str) -> dict[bytes, Any]:
    """The dict in a CIFAR python batch; raises SourceError for anything that is not plain data."""
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise SourceError(
            f"{name} is not a CIFAR python batch raeflow can read safely ({err}); use the files from "
            "the official cifar-10-python.tar.gz"
        ) from err
    if not isinstance(batch, dict):
        raise SourceError(f"{name} holds a {type(batch).__name__}, not the dict of a CIFAR batch")
    return {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}

"""Model bundles: a trained model as a folder (local or in a bucket) of `weights.safetensors` + `bundle.json`.

    uri = save_bundle(model, "s3://bucket/runs/mnist/model", training={"data": "builtin:mnist"})
    bundle = load_bundle(uri)                # checksum verified, model in eval mode
    bundle.check_input(channels=1, height=28, width=28)
    codes = bundle.model.embed(images)

Weights are stored only as safetensors (no pickle is ever read). The weights file is written first
and `bundle.json`, which carries its sha256, last: a reader that finds `bundle.json` finds the
weights it describes, and a half-written or altered weights file fails the checksum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from raeflow import __version__
from raeflow.errors import BundleError, ConfigError
from raeflow.models.base import Autoencoder
from raeflow.models.registry import create_model

FORMAT = "raeflow-bundle"
FORMAT_VERSION = 1
"""Version of the `bundle.json` layout; a reader refuses newer versions."""
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "bundle.json"


@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode), its parsed `bundle.json` and its fingerprint."""

    uri: str
    """Where it was loaded from."""
    model: Autoencoder
    """The model, weights loaded, in eval mode."""
    meta: dict[str, Any]
    """The parsed `bundle.json`."""
    fingerprint: str
    """sha256 of the weights file (hex): identifies the exact model in outputs."""

    @property
    def input_contract(self) -> dict[str, Any]:
        """The images the model takes (channels, height, width or "any", value range)."""
        return self.model.input_contract

    def check_input(self, channels: int, height: int | None = None, width: int | None = None) -> None:
        """Refuse data whose shape the model cannot take, naming both the model's contract and the data's."""
        contract = self.model.input_contract
        fits = channels == contract["channels"] and all(
            want == "any" or got is None or got == want
            for want, got in ((contract["height"], height), (contract["width"], width))
        )
        if not fits:
            data = f"{channels}x{height if height is not None else '?'}x{width if width is not None else '?'}"
            raise BundleError(
                f"model {self.uri} takes {describe_contract(contract)} images but the data is {data} "
                "(channels x height x width); use a model trained on such images or convert the data"
            )


def describe_contract(contract: dict[str, Any]) -> str:
    """`1x28x28` or `3xanyxany` (channels x height x width)."""
    return f"{contract['channels']}x{contract['height']}x{contract['width']}"


def resolve_uri(uri: str) -> str:
    """`builtin:NAME` -> the shipped bundle's folder inside the package; any other URI unchanged."""
    from raeflow import bundles

    return str(bundles.builtin_path(uri)) if bundles.is_builtin(str(uri)) else str(uri)


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path | os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "item"):  # NumPy / torch scalars
        return value.item()
    return str(value)


def _write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    # Object stores replace an object in one PUT; on a local disk write beside it and rename.
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a bundle is meant to be shared
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The autoencoder inside DistributedDataParallel (`.module`) or torch.compile (`._orig_mod`)."""
    while not isinstance(model, Autoencoder):
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def save_bundle(
    model: torch.nn.Module,
    uri: str,
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    settings: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write `model` as a bundle folder at `uri` (local path or fsspec URI); returns the URI.

    `training` (data, epochs, noise, ...), `metrics` (final values) and `settings` (a dataclass or
    dict) are stored as given in `bundle.json`. An existing bundle at `uri` is replaced.
    `storage_options` go to fsspec (e.g. an S3 endpoint or credentials).
    """
    model = _unwrap(model)
    if not isinstance(model, Autoencoder) or not model.arch_name or not model.arch_args:
        raise ConfigError("only models built with raeflow.models.create_model can be saved as a bundle")
    fs, root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    weights = save_safetensors(state, metadata={"format": "pt"})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": model.arch_name, "args": model.arch_args},
        "input_contract": model.input_contract,
        "latent_shape": list(model.latent_shape),
        "embedding_dim": model.embedding_dim,
        "generative": model.generative,
        "conditional": model.conditional,
        "num_classes": model.num_classes,
        "num_parameters": model.num_parameters,
        "training": training or {},
        "metrics": metrics or {},
        "settings": settings if settings is not None else {},
        "raeflow_version": __version__,
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "bytes": len(weights),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(meta, indent=2, default=_jsonable, allow_nan=True)
    fs.makedirs(root, exist_ok=True)
    meta_path = _join(root, META_FILE)
    if fs.exists(meta_path):  # so no reader pairs the old bundle.json with the new weights
        fs.rm(meta_path)
    _write_atomic(fs, _join(root, WEIGHTS_FILE), weights)
    _write_atomic(fs, meta_path, text.encode())
    return str(uri)


def read_bundle_meta(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parsed `bundle.json` of the bundle at `uri`, without loading its weights."""
    uri = resolve_uri(uri)
    try:
        fs, root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
        if not fs.exists(root):
            raise BundleError(
                f"no model bundle at {uri}: the folder does not exist; pass the model folder "
                "that `raeflow train` wrote (it holds bundle.json and weights.safetensors)"
            )
        meta_path = _join(root, META_FILE)
        if not fs.exists(meta_path):
            raise BundleError(
                f"{uri} is not a model bundle: it has no {META_FILE}; pass the model folder "
                "that `raeflow train` wrote"
            )
        meta = json.loads(fs.cat_file(meta_path))
    except BundleError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(
            f"{_join(uri, META_FILE)} is not valid JSON ({err}); the bundle is damaged, "
            "save or train it again"
        ) from None
    except OSError as err:
        raise BundleError(f"cannot read model bundle {uri}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(
            f"{_join(uri, META_FILE)} is not a raeflow bundle.json; pass a raeflow model folder"
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(
            f"bundle {uri} has format version {meta.get('format_version')}, newer than this "
            f"raeflow ({__version__}) reads; upgrade raeflow"
        )
    return meta


def load_bundle(
    uri: str, map_location: str | torch.device = "cpu", storage_options: dict[str, Any] | None = None
) -> Bundle:
    """Load and verify the bundle at `uri`: checksum, architecture, weights; the model in eval mode.

    `uri` may be a bundle folder (local or fsspec URI) or `builtin:NAME`, a bundle shipped with
    raeflow (`raeflow models` lists them).
    """
    uri = resolve_uri(uri)
    meta = read_bundle_meta(uri, storage_options)
    fs, root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    weights_path = _join(root, WEIGHTS_FILE)  # never a path taken from bundle.json
    try:
        data = fs.cat_file(weights_path)
    except FileNotFoundError:
        raise BundleError(
            f"bundle {uri} has no {WEIGHTS_FILE}; it is incomplete, save or train it again"
        ) from None
    except OSError as err:
        raise BundleError(f"cannot read the weights of bundle {uri}: {err}") from None

    expected, arch = meta.get("weights"), meta.get("architecture")
    if not isinstance(expected, dict) or not isinstance(arch, dict) or not isinstance(arch.get("args"), dict):
        raise BundleError(
            f"{_join(uri, META_FILE)} lacks its weights or architecture record; "
            "the bundle is damaged, save or train it again"
        )
    digest = hashlib.sha256(data).hexdigest()
    if expected.get("bytes") is not None and len(data) != expected["bytes"]:
        raise BundleError(
            f"weights of bundle {uri} are truncated or padded ({len(data)} bytes, "
            f"{expected['bytes']} expected); copy the bundle again or retrain"
        )
    if digest != expected.get("sha256"):
        raise BundleError(
            f"weights of bundle {uri} fail their sha256 check (altered or damaged); "
            "copy the bundle again or retrain"
        )

    try:
        model = create_model(str(arch.get("name", "?")), **arch["args"])
    except (ConfigError, TypeError, ValueError) as err:
        raise BundleError(
            f"bundle {uri} needs an architecture this raeflow cannot build ({err}); "
            "upgrade raeflow or retrain"
        ) from None
    try:
        state = load_safetensors(data)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise BundleError(f"weights of bundle {uri} do not fit its architecture ({first}); retrain") from None
    model.to(map_location).eval()
    return Bundle(uri=str(uri), model=model, meta=meta, fingerprint=digest)

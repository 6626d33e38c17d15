"""`raeflow neighbors --image FILE --model BUNDLE`: one new image embedded as `raeflow embed` would.

    vector, data = embed_query("new.jpg", "runs/photos/model", meta, "emb-index/")

The image is decoded by the batch jobs' decode step and embedded by their map step
(`raeflow.batch.decoding.decode_rows`, `raeflow.batch.predictors.EncodePredictor`), called
directly on a one-row table: the same channels, size and resize, the same embedding rule
(`raeflow.models.embedding`), no Ray. Its vector can only be compared with the index's when the
same bundle made both: the bundle's fingerprint (sha256 of its weights) must be the one the
index records, and its embedding length the index's. For a fully convolutional model, the size
`raeflow embed --image-size` resized to is read from the embedded table's `_manifest/job.json`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from raeflow.data.sources.base import ROW_SCHEMA
from raeflow.data.sources.location import filesystem
from raeflow.data.sources.object_store import explain
from raeflow.errors import ConfigError, SourceError

JOB_FILE = "_manifest/job.json"
"""Where `raeflow embed` records its settings beside the table (`raeflow.batch.manifest.JOB_FILE`)."""


def read_image(uri: str) -> bytes:
    """The bytes of the image file at `uri` (a path or URI); one-line `SourceError` when it cannot be read."""
    fs, path = filesystem(uri)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        raise SourceError(f"--image {uri} does not exist") from None
    except IsADirectoryError:
        raise SourceError(f"--image {uri} is a folder; give one image file") from None
    except Exception as err:  # noqa: BLE001 - a store's refusal in one line, anything else as it was
        explained = explain(uri, err, "--image")
        if explained is not None:
            raise explained from None
        if isinstance(err, OSError):
            raise SourceError(f"--image {uri} cannot be read: {err}") from None
        raise


def check_model(model: str, meta: dict[str, Any], index: str) -> None:
    """Refuse a bundle other than the one whose embeddings the index holds (when the index says)."""
    from raeflow.models.bundle import read_bundle_meta

    recorded = meta.get("model")
    fingerprint = (read_bundle_meta(model).get("weights") or {}).get("sha256")
    if recorded and fingerprint != recorded:
        raise ConfigError(
            f"--model {model} ({str(fingerprint)[:12]}) is not the model that embedded the index "
            f"{index} ({recorded[:12]}); search with that bundle, its vectors cannot be compared"
        )


def table_image_size(meta: dict[str, Any]) -> tuple[int, int] | None:
    """The --image-size the index's first embedded table was made with, where its job.json says."""
    for table in meta.get("data") or []:
        try:
            fs, path = filesystem(f"{str(table).rstrip('/')}/{JOB_FILE}")
            settings = json.loads(fs.cat_file(path)).get("settings") or {}
        except Exception:  # noqa: BLE001 - a moved table, a table not made by raeflow: no size known
            continue
        size = settings.get("image_size")
        return (int(size[0]), int(size[1])) if size else None
    return None


def embed_query(image: str, model: str, meta: dict[str, Any], index: str) -> tuple[np.ndarray, bytes]:
    """The vector of `image` as `raeflow embed` computes it with `model`, normalised when the index
    compares by cosine, and the image's bytes; one-line errors for a bundle that does not fit."""
    from raeflow.batch.decoding import DecodeSpec, decode_rows
    from raeflow.batch.predictors import EncodePredictor
    from raeflow.models.embedding import embedding_rule, model_embedding_dim

    check_model(model, meta, index)
    data = read_image(image)
    image_size = table_image_size(meta)
    predictor = EncodePredictor(model, image_size=image_size)
    bundle = predictor.bundle
    contract = bundle.model.input_contract
    if image_size is not None:
        bundle.check_input(contract["channels"], *image_size)
    rule = embedding_rule(model, contract, model_embedding_dim(bundle.model), image_size)
    if rule.dim != meta["dim"]:
        raise ConfigError(
            f"--model {model} makes vectors of {rule.dim} values; the index {index} holds vectors of "
            f"{meta['dim']}: search with the bundle that embedded its table"
        )
    size = rule.size
    spec = DecodeSpec(
        channels=contract["channels"], height=size and size[0], width=size and size[1], fit="resize"
    )
    row = pa.table(
        {"key": [image], "source": [image], "image": [data], "label": [None], "error": [None]},
        schema=ROW_SCHEMA,
    )
    result = predictor(decode_rows(row, spec))  # the batch job's decode and map steps, on one row
    reason = result.column("reason")[0].as_py()
    if reason:
        raise SourceError(f"--image {image} cannot be embedded: {reason}")
    vector = np.asarray(result.column("embedding")[0].as_py(), dtype=np.float32)  # (D,)
    if meta["metric"] == "cosine":
        norm = float(np.linalg.norm(vector))
        if norm == 0 or not np.isfinite(norm):
            raise SourceError(
                f"--image {image}: its embedding is zero or not finite; cosine cannot compare it"
            )
        vector /= norm
    return vector, data

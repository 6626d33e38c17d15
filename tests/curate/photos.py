"""Real image files and their embedding table for the `neighbors --image` and thumbnail tests.

The table is computed by the same decode and map steps `raeflow embed` runs in its Ray Data job
(the folder source's rows -> `decode_rows` -> `EncodePredictor`), called directly, without Ray, and
written in embed's schema with the bundle's fingerprint; `key` and `source` are what embed records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from sklearn.datasets import load_digits

from raeflow.batch.decoding import DecodeSpec, decode_rows
from raeflow.batch.embed import embedding_schema
from raeflow.batch.predictors import EncodePredictor
from raeflow.data.sources import open_source

MODEL = "builtin:mnist-conv"


def write_digits(folder: Path, num: int = 30, *, copies: tuple[int, ...] = ()) -> list[str]:
    """`num` scikit-learn digits as 28x28 PNGs `d/NN.png`, byte-identical copies of `copies` as
    `copy/NN.png`; returns the keys (`d/NN`, `copy/NN`) in file order."""
    pixels = load_digits().images[:num]  # (num, 8, 8), values 0..16
    keys = []
    for i, image in enumerate(pixels):
        picture = Image.fromarray((image * 15.9).astype(np.uint8)).resize((28, 28))
        for sub in ("d",) + (("copy",) if i in copies else ()):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            picture.save(folder / sub / f"{i:02d}.png")
            keys.append(f"{sub}/{i:02d}")
    return sorted(keys)


def embed_folder(folder: Path, out: Path, model: str = MODEL) -> str:
    """The embedding table of the images under `folder` in `out`, as `raeflow embed` writes it;
    returns the bundle's fingerprint."""
    predictor = EncodePredictor(model)
    contract = predictor.bundle.model.input_contract
    spec = DecodeSpec(channels=contract["channels"], height=contract["height"], width=contract["width"])
    source = open_source(str(folder))
    pieces = []
    for shard in source.list_shards():
        for batch in source.read_shard(shard):
            result = predictor(decode_rows(batch, spec))
            assert result.column("reason").null_count == len(result)
            pieces.append(result.select(["key", "source", "embedding"]))
    schema = embedding_schema(predictor.dim, with_labels=False, fingerprint=predictor.bundle.fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(pieces).cast(schema), out / "part-00000-000000.parquet")
    return predictor.bundle.fingerprint

"""`raeflow index`, `raeflow neighbors`, `raeflow dedup`: curate a bucket through its embedding table.

raeflow index --data emb/ --out emb-index/ [--metric cosine|l2] [--append]
raeflow neighbors --index emb-index/ (--key photos/0042 | --image new.jpg --model BUNDLE) [--k 20]
                  [--out near.parquet [--html]]
raeflow dedup --data emb/ --out dedup/ [--threshold 0.95]

Options are generated from `IndexSettings` and `DedupSettings` (names, defaults, help).
"""

from __future__ import annotations

from typing import Any

import click

from raeflow.batch.location import check_out_outside_data
from raeflow.commands.batch import check_out_folder, print_summary
from raeflow.commands.options import OptionSpec, console_options, settings_from, settings_options
from raeflow.connection import check_reachable
from raeflow.curate.config import BACKENDS, METRICS, DedupSettings, IndexSettings, NeighborSettings
from raeflow.data.sources.object_store import probe

CURATE_SPECS: dict[str, OptionSpec] = {
    "data": OptionSpec(metavar="EMB_TABLE"),
    "max_memory": OptionSpec(metavar="SIZE"),
    "exact_below": OptionSpec(metavar="N"),
    "batch_size": OptionSpec(metavar="N"),
    "backend": OptionSpec(choices=BACKENDS),
    "address": OptionSpec(metavar="HOST:PORT"),
}


def _check_paths(settings: Any) -> Any:
    """The one-line refusals before any work: --out a file or inside --data, a bucket out of reach."""
    settings.validate()
    check_out_folder(settings.out)
    check_out_outside_data(settings.data, settings.out)
    probe(settings.data, "--data")
    probe(settings.out, "--out", output=True)
    if settings.backend != "local":
        check_reachable(settings.address)  # an --address that does not answer: one line, before any work
    return settings


@click.command("index")
@settings_options(
    IndexSettings,
    specs={
        **CURATE_SPECS,
        "out": OptionSpec(metavar="IDX"),
        "metric": OptionSpec(choices=METRICS),
        "recall_sample": OptionSpec(metavar="N"),
    },
)
@console_options
def index(**options: Any) -> None:
    """Build a faiss index of an embedding table (the --out folder of `raeflow embed`).

    The index kind follows the table's size: exact (Flat) below --exact-below vectors, an HNSW graph
    above, a compressed IVF-PQ index when the vectors do not fit in --max-memory. Writes under --out:
    index.faiss, keys.parquet (row i: the key of vector i), index.json (kind, metric, model,
    recall@10 against exact search on a sample) and _rejected/ (rows with no usable vector).
    --append adds a table's new keys to the index already there.

    \b
    Examples:
      raeflow index --data emb/ --out emb-index/
      raeflow index --data emb-new/ --out emb-index/ --append
    """
    settings = _check_paths(settings_from(IndexSettings, options))
    from raeflow.curate.index import run_index

    print_summary(run_index(settings).lines())


@click.command("dedup")
@settings_options(
    DedupSettings,
    specs={
        **CURATE_SPECS,
        "out": OptionSpec(metavar="DIR"),
        "threshold": OptionSpec(metavar="COSINE"),
        "neighbors": OptionSpec(metavar="K"),
        "outlier_k": OptionSpec(metavar="K"),
        "outlier_neighbors": OptionSpec(metavar="N"),
        "html_groups": OptionSpec(metavar="N"),
        "html_thumbnails": OptionSpec(metavar="N"),
    },
)
@console_options
def dedup(**options: Any) -> None:
    """Find near-duplicate images and outliers in an embedding table.

    Images whose cosine similarity reaches --threshold are joined into groups; in each group the
    image with the highest mean similarity to the others is kept (ties: the smallest key). Writes
    under --out: groups.parquet (key, group, similarity to the kept image, keep), keep.parquet (the
    keys to keep), outliers.parquet (key, mean distance to its nearest, rank; the nearest keys of the
    --outlier-neighbors most outlying) and duplicates.html
    (offline, largest groups first, thumbnails read from the images' sources).

    \b
    Example:
      raeflow dedup --data emb/ --out dedup/ --threshold 0.95
    """
    settings = _check_paths(settings_from(DedupSettings, options))
    from raeflow.curate.dedup import run_dedup

    print_summary(run_dedup(settings).lines())


@click.command("neighbors")
@settings_options(
    NeighborSettings,
    specs={
        "index": OptionSpec(metavar="IDX"),
        "key": OptionSpec(metavar="KEY"),
        "image": OptionSpec(metavar="FILE"),
        "model": OptionSpec(metavar="BUNDLE"),
        "out": OptionSpec(metavar="FILE"),
    },
)
def neighbors(**options: Any) -> None:
    """List the images most like one, from an index built by `raeflow index`.

    By --key, the nearest images of an image the index holds, itself left out. By --image, a new
    image is embedded with --model (the bundle that embedded the index's table; another one is
    refused) exactly as `raeflow embed` would, and searched: an image the index holds comes back
    first. Prints cosine similarities (or l2 distances for an l2 index); --out also writes them as
    Parquet (rank, key, similarity or distance, source), and --html a page of thumbnails read
    from the images' sources beside it (FILE.html; offline, images embedded).

    \b
    Examples:
      raeflow neighbors --index emb-index/ --key photos/0042 --k 10
      raeflow neighbors --index emb-index/ --image new.jpg --model runs/photos/model --out near.parquet --html
    """
    settings = settings_from(NeighborSettings, options).validate()
    probe(settings.index, "--index")
    if settings.image is not None and settings.model is not None:
        probe(settings.image, "--image")
        probe(settings.model, "--model")
    from raeflow.curate.neighbors import run_neighbors

    print_summary(run_neighbors(settings).lines())


COMMANDS: list[click.Command] = [index, neighbors, dedup]

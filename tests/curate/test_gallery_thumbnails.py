"""The offline pages with thumbnails: `raeflow neighbors --html` and dedup's duplicates.html. Each image
is a data URI read from its source, the page references nothing outside itself, and a source that
cannot be read is a placeholder saying why."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from raeflow.cli import main
from raeflow.curate.thumbnails import read_thumbnails, thumbnail_of
from tests.curate.photos import MODEL, embed_folder, write_digits

DATA_URI = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digit PNGs (three with byte-identical copies) under images/, their table, its index."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "images", copies=(0, 1, 2))
    embed_folder(root / "images", root / "emb")
    built = CliRunner().invoke(main, ["index", "--data", str(root / "emb"), "--out", str(root / "idx"), "-q"])
    assert built.exit_code == 0, built.output
    return root


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def offline(page: str) -> None:
    """Nothing the browser would fetch: no http(s) URL, no src or href other than a data URI."""
    assert not re.search(r"https?://", page)
    assert all(ref.startswith("data:") for ref in re.findall(r'(?:src|href)="([^"]*)"', page))


def test_the_neighbors_page_shows_the_query_and_its_k_neighbours(indexed: Path, tmp_path: Path) -> None:
    out = tmp_path / "near-d05.parquet"
    stdout = run(
        "neighbors", "--index", str(indexed / "idx"), "--key", "d/05", "--k", "6", "--out", str(out), "--html"
    )
    page = (tmp_path / "near-d05.html").read_text()
    assert f"wrote: {out}, {tmp_path / 'near-d05.html'}" in stdout
    offline(page)
    thumbs = DATA_URI.findall(page)
    assert len(thumbs) == 1 + 6  # the query, then each neighbour
    for encoded in thumbs:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (28, 28)  # small: kept as is
    rows = pq.read_table(out).to_pylist()
    for row in rows:
        assert f"#{row['rank']} &middot; similarity {row['similarity']:.4f}<br>{row['key']}" in page
    assert page.index("<h2>query</h2>") < page.index("<b>d/05</b>") < page.index("<h2>neighbours</h2>")


def test_the_page_of_a_new_image_shows_it_first(indexed: Path, tmp_path: Path) -> None:
    image = indexed / "images" / "d" / "09.png"
    out = tmp_path / "near.parquet"
    args = ["--index", str(indexed / "idx"), "--image", str(image), "--model", MODEL, "--k", "3"]
    run("neighbors", *args, "--out", str(out), "--html")
    page = (tmp_path / "near.html").read_text()
    offline(page)
    assert len(DATA_URI.findall(page)) == 1 + 3
    assert "#1 &middot; similarity" in page and "<br>d/09<br>" in page  # the image itself, first


def test_an_unreadable_source_is_a_placeholder_with_its_reason(indexed: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_digits(images, num=12)
    embed_folder(images, tmp_path / "emb")
    run("index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "-q")
    (images / "d" / "04.png").unlink()
    (images / "d" / "06.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # a header and nothing more
    out = tmp_path / "near.parquet"
    run(
        "neighbors",
        "--index",
        str(tmp_path / "idx"),
        "--key",
        "d/05",
        "--k",
        "11",
        "--out",
        str(out),
        "--html",
    )
    page = (tmp_path / "near.html").read_text()
    assert f"no thumbnail: not_found: {images / 'd' / '04.png'} does not exist" in page
    assert re.search(r"no thumbnail: (truncated|not_an_image|read_error)", page)
    assert len(DATA_URI.findall(page)) == 1 + 11 - 2


def test_duplicates_page_has_thumbnails_largest_groups_first(indexed: Path, tmp_path: Path) -> None:
    run("dedup", "--data", str(indexed / "emb"), "--out", str(tmp_path / "dd"), "--threshold", "0.9999", "-q")
    page = (tmp_path / "dd" / "duplicates.html").read_text()
    offline(page)
    groups = pq.read_table(tmp_path / "dd" / "groups.parquet").to_pylist()
    assert {row["key"] for row in groups} >= {"copy/00", "d/00", "copy/01", "d/01", "copy/02", "d/02"}
    assert len(DATA_URI.findall(page)) == len(groups)  # every member of every group
    assert page.index("group 1 &middot;") < page.index("group 2 &middot;")
    few_args = ["--out", str(tmp_path / "few"), "--threshold", "0.9999", "-q", "--html-thumbnails", "2"]
    run("dedup", "--data", str(indexed / "emb"), *few_args)
    few = (tmp_path / "few" / "duplicates.html").read_text()
    assert len(DATA_URI.findall(few)) == 2
    assert (
        few.count("no thumbnail: not shown: beyond the first 2 images (--html-thumbnails)") == len(groups) - 2
    )


def test_a_large_photo_becomes_a_small_upright_jpeg(tmp_path: Path) -> None:
    photo = Image.new("RGB", (600, 300), (200, 40, 40))  # stored 600 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter right: 300 wide, 600 high
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif.tobytes())
    thumb = thumbnail_of(buffer.getvalue())
    assert thumb.src is not None and thumb.src.startswith("data:image/jpeg;base64,")
    small = Image.open(io.BytesIO(base64.b64decode(thumb.src.split(",", 1)[1])))
    assert small.size == (80, 160) and small.format == "JPEG"
    assert len(thumb.src) < 8000
    refused = thumbnail_of(buffer.getvalue(), max_bytes=1000)  # decoding it would take more memory
    assert refused.src is None and str(refused.reason).startswith("too_large_for_memory")


def test_thumbnails_from_a_parquet_shard_by_key(tmp_path: Path) -> None:
    pictures = []
    for shade in (0, 120, 250):
        buffer = io.BytesIO()
        Image.new("L", (40, 30), shade).save(buffer, "PNG")
        pictures.append(buffer.getvalue())
    shard = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"key": ["a", "b", "c"], "image": pictures}), shard)
    thumbs = read_thumbnails([("b", str(shard)), ("c", str(shard)), ("zz", str(shard)), ("n", None)])
    for key, shade in (("b", 120), ("c", 250)):
        src = thumbs[(key, str(shard))].src
        assert src is not None
        small = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert small.size == (40, 30) and abs(int(np.asarray(small.convert("L"))[15, 20]) - shade) <= 3
    assert thumbs[("zz", str(shard))].reason == f"not_found: {shard} holds no image of this key"
    assert thumbs[("n", None)].src is None


def test_a_bucket_that_does_not_exist_is_named_on_each_of_its_images(s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (0, 90, 200)).save(buffer, "JPEG")
    with fsspec.open(f"{s3_bucket}/a.jpg", "wb") as handle:
        handle.write(buffer.getvalue())
    missing = "s3://no-such-bucket-raeflow"
    thumbs = read_thumbnails(
        [
            ("a", f"{s3_bucket}/a.jpg"),
            ("x", f"{missing}/x.jpg"),
            ("y", f"{missing}/y.jpg"),
            ("z", f"{s3_bucket}/z.jpg"),
        ]
    )
    assert thumbs[("a", f"{s3_bucket}/a.jpg")].src is not None
    assert thumbs[("z", f"{s3_bucket}/z.jpg")].reason == f"not_found: {s3_bucket}/z.jpg does not exist"
    for key in ("x", "y"):
        reason = str(thumbs[(key, f"{missing}/{key}.jpg")].reason)
        assert "no such bucket 'no-such-bucket-raeflow'" in reason

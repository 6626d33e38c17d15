"""Folder shards cut by work: at most `files_per_shard` files and `bytes_per_shard` encoded bytes."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from raeflow.data.sources.folder import FolderSource, shard_bounds
from raeflow.data.sources.location import list_file_sizes, list_files

MB = 1_000_000


def _sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk (the listing reports its size all the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.fixture()
def photos(tmp_path: Path) -> dict[str, int]:
    """30 files of about 1 MB and one of 5 MB (`p10.jpg`) in two sub-folders; returns name -> size."""
    sizes = {f"{'ab'[i % 2]}/p{i:02d}.jpg": MB + 7_919 * i for i in range(30)}
    sizes["a/p10.jpg"] = 5 * MB
    for name, size in sizes.items():
        _sparse(tmp_path / "photos" / name, size)
    return dict(sorted(sizes.items()))


def test_shards_cut_by_bytes_cover_every_file_once_in_order(tmp_path: Path, photos: dict[str, int]) -> None:
    budget = 3 * MB + 500_000  # three files of about 1 MB fit, a fourth does not
    source = FolderSource(str(tmp_path / "photos"), bytes_per_shard=budget)
    shards = source.list_shards()
    names = list(photos)
    sizes = list(photos.values())

    listed = [Path(p).relative_to(tmp_path / "photos").as_posix() for s in shards for p in s.paths]
    assert listed == names  # every file once, in sorted order
    assert [s.index for s in shards] == list(range(len(shards)))
    assert len(shards) > 8
    for shard in shards:
        assert shard.name == f"files {shard.start}-{shard.stop - 1}"
        assert list(shard.extra["keys"]) == [n[:-4] for n in names[shard.start : shard.stop]]
        shard_bytes = sum(sizes[shard.start : shard.stop])
        assert shard_bytes <= budget or shard.stop - shard.start == 1
        if shard.stop < len(names):  # cut only where the next file no longer fits
            assert shard_bytes + sizes[shard.stop] > budget
    big = [s for s in shards if any(p.endswith("a/p10.jpg") for p in s.paths)]
    assert len(big) == 1 and len(big[0].paths) == 1  # larger than the budget: a shard of its own

    again = FolderSource(str(tmp_path / "photos"), bytes_per_shard=budget).list_shards()
    assert again == shards and [s.name for s in again] == [
        s.name for s in shards
    ]  # same listing, same shards
    assert source.count_rows(shards) == [len(s.paths) for s in shards]
    assert sum(t.num_rows for s in shards[:2] for t in source.read_shard(s)) == len(shards[0].paths) + len(
        shards[1].paths
    )


def test_file_count_still_caps_a_shard(tmp_path: Path, photos: dict[str, int]) -> None:
    shards = FolderSource(str(tmp_path / "photos"), files_per_shard=4, bytes_per_shard=10**12).list_shards()
    assert [len(s.paths) for s in shards] == [4] * 7 + [2]


def test_default_budget_is_32_mib_and_1000_files(tmp_path: Path) -> None:
    # Three 12 MiB photos: two fit in 32 MiB, the third starts a shard.
    for i in range(3):
        _sparse(tmp_path / "big" / f"{i}.jpg", 12 * 2**20)
    assert [s.name for s in FolderSource(str(tmp_path / "big")).list_shards()] == ["files 0-1", "files 2-2"]
    for i in range(1001):
        (tmp_path / "small" / f"{i:04d}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "small" / f"{i:04d}.png").write_bytes(b"x" * 100)
    assert [s.name for s in FolderSource(str(tmp_path / "small")).list_shards()] == [
        "files 0-999",
        "files 1000-1000",
    ]


@pytest.mark.parametrize(
    ("sizes", "max_files", "max_bytes", "bounds"),
    [
        ([5, 5, 5, 20, 1, 1, 1, 1, 1], 3, 10, [(0, 2), (2, 3), (3, 4), (4, 7), (7, 9)]),
        ([20], 3, 10, [(0, 1)]),
        ([], 3, 10, []),
        ([0, 0, 0, 0], 1000, 10, [(0, 4)]),  # sizes a store does not report count as 0: the file cap holds
        ([10, 10], 5, 10, [(0, 1), (1, 2)]),  # exactly the budget fits
    ],
)
def test_shard_bounds(
    sizes: list[int], max_files: int, max_bytes: int, bounds: list[tuple[int, int]]
) -> None:
    assert shard_bounds(sizes, max_files, max_bytes) == bounds


def test_budget_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bytes_per_shard"):
        FolderSource(str(tmp_path), bytes_per_shard=0)


def test_sizes_of_a_glob_a_folder_and_a_single_file_in_memory() -> None:
    fs = fsspec.filesystem("memory")
    for name, size in {
        "m/a/x.jpg": 3,
        "m/a/y.png": 5,
        "m/b.jpg": 7,
        "m/_manifest/z.jpg": 1,
        "m/n.txt": 2,
    }.items():
        fs.pipe(f"/{name}", b"x" * size)
    suffixes = (".jpg", ".png")
    assert list_file_sizes(fs, "/m", suffixes) == [("/m/a/x.jpg", 3), ("/m/a/y.png", 5), ("/m/b.jpg", 7)]
    assert list_file_sizes(fs, "/m/*", suffixes) == [
        ("/m/_manifest/z.jpg", 1),  # a glob names what it matches, `_` folders included (as before)
        ("/m/a/x.jpg", 3),
        ("/m/a/y.png", 5),
        ("/m/b.jpg", 7),
    ]
    assert list_file_sizes(fs, "/m/b.jpg", suffixes) == [("/m/b.jpg", 7)]
    for path in ("/m", "/m/*", "/m/b.jpg"):  # the plain listing is the same files
        assert list_files(fs, path, suffixes) == [p for p, _ in list_file_sizes(fs, path, suffixes)]


def test_a_bucket_folder_is_cut_by_sizes_from_its_listing(s3_bucket: str, monkeypatch) -> None:
    import s3fs

    fs = fsspec.filesystem("s3")
    for i in range(6):
        fs.pipe(f"{s3_bucket}/photos/{i}.jpg", b"x" * (1000 + i))
    fs.invalidate_cache()
    calls: list[str] = []
    real_call = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls.append(method if isinstance(method, str) else method.__name__)
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    shards = FolderSource(f"{s3_bucket}/photos", bytes_per_shard=2500).list_shards()
    assert [s.name for s in shards] == ["files 0-1", "files 2-3", "files 4-5"]
    assert shards[2].paths == (f"{s3_bucket}/photos/4.jpg", f"{s3_bucket}/photos/5.jpg")
    assert calls.count("head_object") <= 1  # the sizes came with the listing, not one request per file

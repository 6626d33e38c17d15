"""`raeflow dedup` on tables with planted near-duplicates and a planted outlier: the groups, the keep
list, the outlier ranks, the page and the summary a user gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raeflow.cli import main
from tests.curate.tables import planted


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path_factory.mktemp("emb")
    return folder, planted(folder)


def dedup(data: Path, out: Path, *extra: str) -> str:
    # No thumbnails: these tables' sources (s3://photos/...) hold no images; test_gallery_thumbnails
    # covers the page's thumbnails with real files.
    args = ["dedup", "--data", str(data), "--out", str(out), "--quiet", "--html-thumbnails", "0", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def groups_by_key(out: Path) -> dict[str, set[str]]:
    rows = pq.read_table(out / "groups.parquet").to_pylist()
    members: dict[int, set[str]] = {}
    for row in rows:
        members.setdefault(row["group"], set()).add(row["key"])
    return {key: members[row["group"]] for row in rows for key in [row["key"]]}


@pytest.mark.parametrize("exact_below", ["100000", "50"], ids=["flat", "hnsw"])
def test_planted_duplicates_are_grouped_and_one_of_each_kept(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path, exact_below: str
) -> None:
    data, planted_keys = table
    summary = dedup(data, tmp_path / "out", "--exact-below", exact_below)
    found = groups_by_key(tmp_path / "out")
    expected = [set(planted_keys["big"]), set(planted_keys["pair"]), set(planted_keys["twins"])]
    assert sorted(map(sorted, {frozenset(g) for g in found.values()})) == sorted(map(sorted, expected))
    groups = pq.read_table(tmp_path / "out" / "groups.parquet").to_pylist()
    assert [row["group"] for row in groups if row["keep"]] == [1, 2, 3]  # one kept per group
    assert {row["key"] for row in groups if row["group"] == 1} == set(planted_keys["big"])  # largest first
    assert all(row["similarity"] > 0.99 for row in groups)
    keep = pq.read_table(tmp_path / "out" / "keep.parquet").column("key").to_pylist()
    removed = {row["key"] for row in groups if not row["keep"]}
    assert len(removed) == 5 and len(keep) == 309 - 5 and not removed & set(keep)
    assert "309 images, 3 groups of near-duplicates (cosine >= 0.95), 5 images removed, 304 kept" in summary


def test_the_kept_image_has_the_highest_mean_similarity_and_ties_go_to_the_smallest_key(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path
) -> None:
    data, planted_keys = table
    dedup(data, tmp_path / "out")
    groups = pq.read_table(tmp_path / "out" / "groups.parquet").to_pylist()
    kept = {row["group"]: row["key"] for row in groups if row["keep"]}
    vectors = {}
    for part in sorted(data.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            v = np.array(row["embedding"], dtype=np.float64)
            vectors[row["key"]] = v / np.linalg.norm(v)
    big = planted_keys["big"]
    mean_similarity = {k: np.mean([vectors[k] @ vectors[o] for o in big]) for k in big}
    assert kept[1] == max(big, key=lambda k: mean_similarity[k]) == big[-1] != min(big)  # the original
    assert kept[3] == min(planted_keys["twins"])  # identical vectors: the smallest key
    for row in groups:  # similarity is to the kept image of the group
        assert row["similarity"] == pytest.approx(vectors[row["key"]] @ vectors[kept[row["group"]]], abs=1e-4)


def test_the_planted_far_vector_ranks_first_among_outliers(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path
) -> None:
    data, planted_keys = table
    summary = dedup(data, tmp_path / "out")
    outliers = pq.read_table(tmp_path / "out" / "outliers.parquet").to_pylist()
    assert outliers[0]["key"] == planted_keys["outlier"][0] and outliers[0]["rank"] == 1
    assert [row["rank"] for row in outliers] == list(range(1, 310))
    assert outliers[0]["mean_distance"] > 2 * outliers[10]["mean_distance"]
    assert f"farthest {planted_keys['outlier'][0]}" in summary


def test_a_lower_threshold_joins_more_and_the_page_lists_the_groups(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path
) -> None:
    data, _ = table
    dedup(data, tmp_path / "strict", "--threshold", "0.9999")
    dedup(data, tmp_path / "loose", "--threshold", "0.6")
    strict = pq.read_table(tmp_path / "strict" / "groups.parquet")
    loose = pq.read_table(tmp_path / "loose" / "groups.parquet")
    assert 0 < len(strict) < 9 < len(loose)
    page = (tmp_path / "loose" / "duplicates.html").read_text()
    assert "group 1 &middot;" in page and "http" not in page.replace("s3://", "")
    assert page.count('<section class="page">') == -(-loose.column("group").to_numpy().max() // 50)


def test_nan_vectors_are_listed_and_the_rest_deduplicated(tmp_path: Path) -> None:
    from tests.curate.tables import clustered, write_part

    vectors = clustered(40, 16, seed=1)
    vectors[5] = np.nan
    vectors[6] = 0.0
    vectors[7] = vectors[8]
    write_part(tmp_path / "emb", "part-00000-000000.parquet", [f"k{i:02d}" for i in range(40)], vectors)
    summary = dedup(tmp_path / "emb", tmp_path / "out")
    rejected = pq.read_table(tmp_path / "out" / "_rejected" / "rejected.parquet").to_pylist()
    assert {(row["key"], row["reason"]) for row in rejected} == {
        ("k05", "nan_vector"),
        ("k06", "zero_vector"),
    }
    assert "rejected: 2 (nan_vector 1, zero_vector 1)" in summary
    assert "38 images, 1 groups" in summary
    keep = pq.read_table(tmp_path / "out" / "keep.parquet").column("key").to_pylist()
    assert "k07" in keep and "k08" not in keep and "k05" not in keep


def brute_force_neighbours(data: Path) -> tuple[list[str], np.ndarray]:
    """Every key of the table and its exact cosine similarity to every other image, `(n, n)`."""
    keys, rows = [], []
    for part in sorted(data.glob("part-*.parquet")):
        table = pq.read_table(part)
        keys += table.column("key").to_pylist()
        rows += table.column("embedding").to_pylist()
    vectors = np.array(rows, dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)  # an image is not its own neighbour
    return keys, sims


@pytest.mark.parametrize("exact_below", ["100000", "50"], ids=["flat", "hnsw"])
def test_the_top_outliers_list_their_true_nearest_keys_and_only_they(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path, exact_below: str
) -> None:
    data, _ = table
    extra = ("--outlier-k", "6", "--outlier-neighbors", "25", "--exact-below", exact_below)
    dedup(data, tmp_path / "out", *extra)
    outliers = pq.read_table(tmp_path / "out" / "outliers.parquet")
    for name, value_type in (("neighbors", pa.string()), ("neighbor_similarity", pa.float32())):
        kind = outliers.schema.field(name).type
        assert pa.types.is_list(kind) and kind.value_type == value_type
    rows = outliers.to_pylist()
    keys, sims = brute_force_neighbours(data)
    at = {key: i for i, key in enumerate(keys)}
    for row in rows[:25]:
        listed, similarity = row["neighbors"], row["neighbor_similarity"]
        assert len(listed) == len(similarity) == 6 and row["key"] not in listed
        assert similarity == sorted(similarity, reverse=True)  # nearest first
        truth = sims[at[row["key"]]]
        expected = np.sort(truth)[::-1][:6]
        # The listed keys are the nearest: their exact similarities are the 6 largest (ties aside).
        np.testing.assert_allclose([truth[at[k]] for k in listed], expected, atol=1e-5)
        np.testing.assert_allclose(similarity, expected, atol=1e-5)
        # ... and the very ones the outlier score was computed from.
        assert row["mean_distance"] == pytest.approx(np.mean(1 - np.array(similarity)), abs=1e-5)
    assert all(row["neighbors"] is None and row["neighbor_similarity"] is None for row in rows[25:])


def test_outlier_neighbors_zero_leaves_the_columns_null(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path
) -> None:
    data, planted_keys = table
    dedup(data, tmp_path / "out", "--outlier-neighbors", "0")
    outliers = pq.read_table(tmp_path / "out" / "outliers.parquet")
    assert outliers.column("neighbors").null_count == outliers.column("neighbor_similarity").null_count == 309
    assert outliers.column("key")[0].as_py() == planted_keys["outlier"][0]  # ranks unchanged


def test_a_negative_outlier_neighbors_is_a_one_line_error(
    table: tuple[Path, dict[str, list[str]]], tmp_path: Path
) -> None:
    data, _ = table
    args = ["dedup", "--data", str(data), "--out", str(tmp_path / "out"), "--outlier-neighbors", "-1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--outlier-neighbors must be at least 0, not -1" in result.output

"""`raeflow dedup` and `raeflow index` with `--backend ray`: the same files as the local path from the same
table, work spread over several actors and tasks, `--address` joining the Ray it names, and the local
path never importing Ray."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raeflow.cli import main
from raeflow.curate.config import DedupSettings, runs_on_ray
from tests.curate.tables import clustered, planted, write_part

LISTS = ("groups.parquet", "keep.parquet", "outliers.parquet", "_rejected/rejected.parquet")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def dedup_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted table of test_dedup, and a third part with a row of each kind that is left out."""
    folder = tmp_path_factory.mktemp("emb")
    planted(folder)
    bad = np.ones((3, 32), dtype=np.float32)
    bad[0, 3] = np.nan
    bad[1] = 0.0
    write_part(folder, "part-00002-000000.parquet", ["bad/nan", "bad/zero", "plain/0003"], bad)
    return folder


def test_auto_runs_on_ray_with_an_address_or_a_large_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not runs_on_ray("auto", None, 100_000, 50)  # not above 100,000 rows
    assert runs_on_ray("auto", None, 100_001, 100_000)
    assert not runs_on_ray("auto", None, 150_000, 200_000)  # exact search, in this process
    assert runs_on_ray("auto", "10.0.0.5:6379", 10, 100_000)
    assert not runs_on_ray("local", "10.0.0.5:6379", 10**7, 100_000)
    assert runs_on_ray("ray", None, 10, 100_000)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert runs_on_ray("auto", None, 10, 100_000)


def test_the_local_backend_never_imports_ray(dedup_table: Path, tmp_path: Path) -> None:
    probe = (
        "import sys; from raeflow.cli import main\n"
        "for args in sys.argv[1:]:\n"
        "    try: main(args.split('|') + ['--quiet', '--backend', 'local'], standalone_mode=False)\n"
        "    except SystemExit: pass\n"
        "print('RAY:' + ','.join(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))\n"
    )
    dedup = f"dedup|--data|{dedup_table}|--out|{tmp_path / 'dedup'}|--html-thumbnails|0|--exact-below|50"
    index = f"index|--data|{dedup_table}|--out|{tmp_path / 'index'}|--exact-below|50"
    done = subprocess.run(
        [sys.executable, "-c", probe, dedup, index], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "dedup" / "keep.parquet").exists() and (tmp_path / "index" / "index.json").exists()
    assert done.stdout.strip().splitlines()[-1] == "RAY:", done.stdout


@pytest.mark.parametrize("exact_below", ["100000", "50"], ids=["flat", "hnsw"])
def test_dedup_on_ray_writes_the_files_the_local_path_writes(
    ray_session: None, dedup_table: Path, tmp_path: Path, exact_below: str
) -> None:
    # --batch-size 16: ranges of 128 ids, so a search actor beside the builder gets some of them.
    common = ["--html-thumbnails", "0", "--exact-below", exact_below, "--batch-size", "16"]
    local = run(
        "dedup", "--data", str(dedup_table), "--out", str(tmp_path / "local"), "--backend", "local", *common
    )
    remote = run(
        "dedup", "--data", str(dedup_table), "--out", str(tmp_path / "ray"), "--backend", "ray", *common
    )
    for name in LISTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    on_ray = re.search(r", on Ray \((\d) actors?\)", remote)
    assert on_ray and 1 <= int(on_ray.group(1)) <= 2  # the builder, and a searcher once it is up
    same = remote.replace(on_ray.group(0), "").replace(str(tmp_path / "ray"), "OUT")
    assert same == local.replace(str(tmp_path / "local"), "OUT")
    assert "309 images, 3 groups of near-duplicates" in remote and "rejected: 3" in remote
    page = (tmp_path / "ray" / "duplicates.html").read_text()
    assert "3 groups of near-duplicates" in page and "big/3" in page


def test_the_builder_and_a_search_actor_split_the_ranges_and_find_what_the_local_path_finds(
    dedup_table: Path, tmp_path: Path
) -> None:
    # The actors' classes called directly (no Ray): ranges alternate between the builder, which read
    # the table, and a searcher holding only the serialised index; the lists match the local ones.
    from raeflow.curate import dedup, remote
    from raeflow.curate.table import open_table

    run(
        "dedup",
        "--data",
        str(dedup_table),
        "--out",
        str(tmp_path / "local"),
        "--backend",
        "local",
        "--exact-below",
        "50",
        "--html-thumbnails",
        "0",
    )
    settings = DedupSettings(
        data=str(dedup_table), out=str(tmp_path / "split"), exact_below=50, batch_size=32
    )
    builder = remote.DedupBuilder(open_table(settings.data), settings)
    while (num := builder.load()[1]) is None:
        pass
    searcher = remote.DedupSearcher(builder.serialised(), builder.layout(), settings, 1)
    sets, scores = dedup.UnionFind(num), np.zeros(num, np.float32)
    for turn, first in enumerate(range(0, num, 64)):
        start, pairs, part = (searcher if turn % 2 else builder).search(first, min(64, num - first))
        for a, b in pairs.tolist():
            sets.union(a, b)
        scores[start : start + len(part)] = part
    lists = builder.write_lists(sets.roots(), scores, settings.out)
    assert (lists.num_images, lists.num_groups, lists.num_removed) == (309, 3, 5)
    for name in LISTS:
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def index_table(folder: Path, num: int = 3000, parts: int = 6) -> np.ndarray:
    """`num` clustered vectors in `parts` parts; the key of row 100 comes again in the last part."""
    vectors = clustered(num, 32, seed=5)
    keys = [f"img/{i:05d}" for i in range(num)]
    keys[num - 10] = keys[100]
    size = num // parts
    for p in range(parts):
        rows = slice(p * size, (p + 1) * size)
        write_part(folder, f"part-{p:05d}-000000.parquet", keys[rows], vectors[rows])
    return vectors


def neighbour_keys(out: Path, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    meta = json.loads((out / "index.json").read_text())
    found = faiss.read_index(str(out / "index.faiss"))
    if meta["kind"] == "ivfpq":
        faiss.extract_index_ivf(found).nprobe = meta["nprobe"]
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    keys = pq.read_table(out / "keys.parquet").column("key").to_pylist()
    return [[keys[i] for i in row] for row in found.search(queries, k)[1]]


@pytest.mark.parametrize(
    ("extra", "kind"),
    [([], "flat"), (["--exact-below", "100", "--max-memory", "50K"], "ivfpq")],
    ids=["flat", "ivfpq"],
)
def test_index_on_ray_finds_the_neighbours_the_local_index_finds(
    ray_session: None, tmp_path: Path, extra: list[str], kind: str
) -> None:
    vectors = index_table(tmp_path / "emb")
    for backend in ("local", "ray"):
        run(
            "index",
            "--data",
            str(tmp_path / "emb"),
            "--out",
            str(tmp_path / backend),
            "--backend",
            backend,
            *extra,
        )
    local, remote = (json.loads((tmp_path / b / "index.json").read_text()) for b in ("local", "ray"))
    assert local["backend"] == "local" and remote["backend"] == "ray"
    assert remote["kind"] == local["kind"] == kind and remote["factory"] == local["factory"]
    assert remote["num_vectors"] == local["num_vectors"] == 2999  # the repeated key left out once
    for name in ("keys.parquet", "_rejected/rejected.parquet"):
        assert pq.read_table(tmp_path / "ray" / name) == pq.read_table(tmp_path / "local" / name), name
    # IVF-PQ: the quantizer is trained on the same sample, so the codes and the neighbours agree too.
    assert neighbour_keys(tmp_path / "ray", vectors[:300]) == neighbour_keys(
        tmp_path / "local", vectors[:300]
    )
    assert 800 <= remote["recall_sample"] <= 1200 and remote["recall_measured_at"] == 2999
    assert (
        remote["recall_at_10"] == 1.0
        if kind == "flat"
        else abs(remote["recall_at_10"] - local["recall_at_10"]) < 0.1
    )


def test_append_on_ray_adds_only_the_new_keys(ray_session: None, tmp_path: Path) -> None:
    first = clustered(200, 32, seed=1)
    write_part(tmp_path / "a", "part-00000-000000.parquet", [f"img/{i:03d}" for i in range(200)], first)
    second = clustered(100, 32, seed=2)
    write_part(tmp_path / "b", "part-00000-000000.parquet", [f"img/{i:03d}" for i in range(150, 250)], second)
    out = tmp_path / "idx"
    run(
        "index", "--data", str(tmp_path / "a"), "--out", str(out), "--backend", "local", "--exact-below", "10"
    )
    summary = run("index", "--data", str(tmp_path / "b"), "--out", str(out), "--append", "--backend", "ray")
    meta = json.loads((out / "index.json").read_text())
    assert meta["appends"] == 1 and meta["num_vectors"] == 250 and meta["backend"] == "ray"
    assert pq.read_table(out / "keys.parquet").column("key").to_pylist() == [
        f"img/{i:03d}" for i in range(250)
    ]
    assert "skipped: 50 keys already in the index" in summary


def test_an_address_joins_that_ray(ray_session: None, dedup_table: Path, tmp_path: Path) -> None:
    import ray
    from ray._private.state import jobs

    address = str(ray.get_runtime_context().gcs_address)
    command = [sys.executable, "-m", "raeflow.cli", "dedup", "--data", str(dedup_table), "--out"]
    done = subprocess.Popen(
        [*command, str(tmp_path / "out"), "--address", address, "--html-thumbnails", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr[-3000:]
    # --backend auto with an address: the command was a driver of the suite's Ray, not of one of its own.
    assert done.pid in {job["DriverPid"] for job in jobs()}
    assert "309 images, 3 groups of near-duplicates" in stdout
    assert (tmp_path / "out" / "keep.parquet").exists()


@pytest.mark.parametrize("command", ["dedup", "index"])
def test_an_address_where_no_ray_answers_is_one_line_before_any_work(
    dedup_table: Path, tmp_path: Path, command: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    args = [
        command,
        "--data",
        str(dedup_table),
        "--out",
        str(tmp_path / "out"),
        "--address",
        f"127.0.0.1:{port}",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "out").exists()


def test_a_search_actor_lost_mid_search_leaves_its_ranges_to_the_builder(
    ray_session: None, dedup_table: Path, tmp_path: Path
) -> None:
    import ray

    from raeflow.curate import remote
    from raeflow.curate.table import open_table

    class Dying(remote.DedupSearcher):
        def search(self, first: int, count: int) -> tuple[int, np.ndarray, np.ndarray]:
            os._exit(1)  # the process dies as a node lost or an out-of-memory kill would end it

    run("dedup", "--data", str(dedup_table), "--out", str(tmp_path / "local"), "--backend", "local")
    settings = DedupSettings(
        data=str(dedup_table), out=str(tmp_path / "ray"), batch_size=4, html_thumbnails=0
    )
    builder = ray.remote(remote.DedupBuilder).options(num_cpus=1).remote(open_table(settings.data), settings)
    try:
        while (num := ray.get(builder.load.remote())[1]) is None:
            pass
        layout = ray.get(builder.layout.remote())
        dying = ray.remote(Dying).options(num_cpus=0, max_restarts=0)
        lost = dying.remote(builder.serialised.remote(), layout, settings, 1)
        ray.get(lost.ready.remote())  # up, so it is handed ranges, and dies on the first
        roots, scores, searched = remote._search(builder, [lost], settings, num)
        assert searched == 1  # the builder alone
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(lost.ready.remote())  # it was handed a range, and died on it
        ray.get(builder.write_lists.remote(roots, scores, settings.out))
    finally:
        ray.kill(builder)
    for name in LISTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name

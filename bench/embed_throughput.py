"""Images per second of `raeflow embed` and `raeflow denoise` against the scripts a user writes by
hand, on realistic photos, each run as a whole process; and the limits of this machine.

    .venv/bin/python bench/embed_throughput.py                     # 5,000 photos, a few minutes
    .venv/bin/python bench/embed_throughput.py --num-images 2000 --skip-denoise
    .venv/bin/python bench/embed_throughput.py --memory-scale      # driver memory at 10k and 100k
    .venv/bin/python bench/embed_throughput.py --memory-scale --skip-embed --skip-denoise

Data (`bench/corpus.py`, cached under bench-out/): JPEG photographs of 320x240 to 640x480 cut from
the photos scikit-image ships (and BSD68 from ../shared when present), as WebDataset tars of 500
and as a folder. Model: the `conv_dense_coco` preset (3x64x64 -> 256-d code), untrained (speed does
not depend on the weights). Rows, each a fresh process timed from start to exit (imports, Ray
start-up, writing included), outputs counted:
- (a) `raeflow embed --data ... --model ... --out ...`, the CLI, on tars and on the folder;
- (b) `bench/handwritten.py dataloader`: DataLoader(num_workers=2), PIL decode + resize, pyarrow;
- (c) `bench/handwritten.py raydata`: read_webdataset/read_images -> map_batches -> write_parquet;
- (a) once more on the tars with `--address`, joining a one-node Ray started beforehand in a
  process of its own (Ray's start-up not paid; its CPU time is not counted);
- (d) limits: the model's forward pass alone on decoded 64x64 tensors (one process per core),
  and decode + resize alone (`decode_fitted`, one process per core; PIL's plain
  open/convert/resize beside it); their pipeline limit is 1 / (1/model + 1/decode), as both share
  the same cores.
Each run's CPU time (all its processes: Ray's raylet and workers, DataLoader workers, adopted and
reaped by this process) is shown beside its wall time: images per CPU-second compares the
approaches fairly when other work shares the machine, which wall-clock images/s cannot.
The driver's peak memory (resident and private) is sampled from /proc while each raeflow run goes;
`--memory-scale` runs raeflow on 10,000 and 100,000 images (the tars repeated under new keys).
Then `raeflow denoise` of 48 JPEG photos of 0.3-4 megapixels with the shipped `builtin:denoise-rgb`
against a hand-written float32 loop over the same files (whole image per pass), and how far apart
their outputs are (PSNR of one against the other).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, whatever the cwd

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from corpus import BENCH_OUT, REPO, make_corpus, megapixel_photos, repeated_tars  # noqa: E402
from PIL import Image  # noqa: E402

from raeflow.data.images import decode_fitted  # noqa: E402
from raeflow.models import create_model, save_bundle  # noqa: E402

HANDWRITTEN = Path(__file__).resolve().parent / "handwritten.py"


class ProcessMemory:
    """Peak resident memory of process `pid` (from /proc/PID/status every 50 ms) and its peak private
    memory (smaps_rollup, once a second: reading it walks the process's page tables and stalls it;
    every 50 ms it slowed a raeflow driver by 4-5 s in a 24 s run)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss, self.private = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _fields(self, name: str) -> dict[str, int]:
        fields = {}
        with open(f"/proc/{self.pid}/{name}") as lines:
            for line in lines:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[key] = int(rest.split()[0]) * 1024
        return fields

    def _sample(self) -> None:
        tick = 0
        while not self._stop.is_set():
            try:
                self.rss = max(self.rss, self._fields("status").get("VmRSS", 0))
                if tick % 20 == 0:
                    rollup = self._fields("smaps_rollup")
                    private = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
                    self.private = max(self.private, private)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                return
            tick += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(name: str, command: list[str], out: Path, *, tries: int = 3) -> dict:
    """Run `command` as a fresh process; its wall time and the peak memory of its driver. A run whose
    Ray did not come up (an overloaded machine) is tried again, and says so."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # A loaded machine starts Ray's raylet slowly; wait for it rather than fail (no effect on speed).
    env.setdefault("RAY_raylet_start_wait_time_s", "180")
    for attempt in range(1, tries + 1):
        shutil.rmtree(out, ignore_errors=True)
        cpu_before = _children_cpu()
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        memory = ProcessMemory(process.pid)
        stdout, stderr = process.communicate()
        seconds = time.perf_counter() - started
        memory.stop()
        _reap_orphans()
        cpu = _children_cpu() - cpu_before
        if process.returncode == 0:
            return {
                "name": name,
                "seconds": seconds,
                "cpu": cpu,
                "rss": memory.rss,
                "private": memory.private,
            }
        if "timed out during startup" not in stderr or attempt == tries:
            raise SystemExit(f"{name} failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
        print(f"  {name}: Ray did not start ({load_line()}); trying again", flush=True)
    raise AssertionError("unreachable")


def _become_subreaper() -> None:
    """Make this process adopt its orphaned descendants (Linux prctl), so that the CPU time of every
    process a run starts (Ray's raylet and workers, DataLoader workers) is counted when they exit."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_orphans(timeout: float = 30.0) -> None:
    """Wait (bounded) for every adopted descendant of the last run to exit, collecting its CPU time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            time.sleep(0.1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def embedded_rows(out: Path) -> int:
    files = [
        p
        for p in out.rglob("*.parquet")
        if not any(part.startswith("_") for part in p.relative_to(out).parts)
    ]
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def raeflow_embed(data: Path, bundle: str, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "raeflow.cli", "embed", "--data", str(data), "--model", bundle,
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def handwritten(script: str, data: Path, bundle: str, out: Path) -> list[str]:
    return [
        sys.executable,
        str(HANDWRITTEN),
        script,
        "--data",
        str(data),
        "--model",
        bundle,
        "--out",
        str(out),
    ]


_LIMIT_MODEL: torch.nn.Module | None = None  # the model the forked limit processes run


def _forward(num_images: int, batch: int = 256) -> float:
    """Seconds of the forward pass on `num_images` decoded 64x64 images, one thread (a pool process)."""
    assert _LIMIT_MODEL is not None
    torch.set_num_threads(1)
    pixels = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        _LIMIT_MODEL.embed(pixels.float() / 255)  # warm-up
        started, done = time.perf_counter(), 0
        while done < num_images:
            _LIMIT_MODEL.embed(pixels.float() / 255)
            done += batch
    return time.perf_counter() - started


def model_limit(bundle_model: torch.nn.Module, num_images: int) -> float:
    """Images/s of the forward pass alone on decoded uint8 64x64 tensors: one process per core, one
    thread each, as raeflow's actors and the decode limit run (one process of two threads was
    10 % slower on this model)."""
    global _LIMIT_MODEL
    _LIMIT_MODEL = bundle_model
    cores = os.cpu_count() or 1
    share = max(256, num_images // cores)
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        seconds = pool.map(_forward, [share] * cores)
    return share * cores / max(seconds)


def _decode_raeflow(paths: list[str]) -> int:
    for path in paths:
        decode_fitted(Path(path).read_bytes(), 3, 64, 64)
    return len(paths)


def _decode_pil(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    return len(paths)


def decode_limit(paths: list[Path], decode) -> float:
    """Images/s of decode + resize to 64x64 RGB alone, one process per core."""
    cores = os.cpu_count() or 1
    chunks = [[str(p) for p in paths[i::cores]] for i in range(cores)]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(decode, [c[:20] for c in chunks])  # warm-up: imports, page cache
        started = time.perf_counter()
        done = sum(pool.map(decode, chunks))
        return done / (time.perf_counter() - started)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


class RunningRay:
    """A one-node Ray started in a process of its own, as `ray start --head` would: for the row of
    raeflow joining a Ray that is already up (`--address`), where Ray's start-up is not paid."""

    def __enter__(self) -> str:
        head = {"num_cpus": os.cpu_count(), "include_dashboard": False}
        code = (
            "import sys; from ray.cluster_utils import Cluster; "
            f"c = Cluster(initialize_head=True, connect=False, head_node_args={head!r}); "
            "print(c.address, flush=True); sys.stdin.read(); c.shutdown()"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        address = self.process.stdout.readline().strip()  # type: ignore[union-attr]
        assert address, "the Ray for the --address row did not start"
        return address

    def __exit__(self, *_: object) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=120)


def embed_rows(args: argparse.Namespace, corpus: Path, bundle: str, work: Path) -> list[dict]:
    runs = []
    for data in (corpus / "wds", corpus / "folder"):
        kind = "tars" if data.name == "wds" else "folder"
        for label, command in (
            ("(a) raeflow embed", raeflow_embed(data, bundle, work / "a", args.raeflow_args)),
            ("(b) DataLoader script", handwritten("dataloader", data, bundle, work / "b")),
            ("(c) Ray Data script", handwritten("raydata", data, bundle, work / "c")),
        ):
            out = Path(command[command.index("--out") + 1])
            run = timed(f"{label}, {kind}", command, out)
            run["rows"] = embedded_rows(out)
            run["images_per_s"] = args.num_images / run["seconds"]
            print(f"  {run['name']}: {run['seconds']:.1f}s, {run['rows']:,} rows ({load_line()})", flush=True)
            runs.append(run)
    with RunningRay() as address:
        command = raeflow_embed(
            corpus / "wds", bundle, work / "a", [*args.raeflow_args, "--address", address]
        )
        run = timed("(a) raeflow embed --address, tars", command, work / "a")
    run["rows"] = embedded_rows(work / "a")
    run["images_per_s"] = args.num_images / run["seconds"]
    run["cpu"] = float("nan")  # the running Ray's workers are not this run's children
    print(f"  {run['name']}: {run['seconds']:.1f}s, {run['rows']:,} rows ({load_line()})", flush=True)
    runs.append(run)
    return runs


def print_embed_table(runs: list[dict], model_rate: float, decode_rates: dict[str, float], n: int) -> None:
    decode_rate = decode_rates["decode_fitted"]
    limit = 1 / (1 / model_rate + 1 / decode_rate)
    print(f"\nembed {n:,} JPEG photos (320-640 px) with conv_dense_coco at 3x64x64, whole processes")
    print(
        f"{'run':<34} {'seconds':>8} {'images/s':>9} {'rows':>7} {'of limit':>9} {'driver RSS':>11} "
        f"{'CPU s':>7} {'img/CPU-s':>10}"
    )
    for run in runs:
        print(
            f"{run['name']:<34} {run['seconds']:>8.1f} {run['images_per_s']:>9.0f} {run['rows']:>7,} "
            f"{run['images_per_s'] / limit:>8.0%} {run['rss'] / 2**20:>8.0f} MiB "
            f"{run['cpu']:>7.1f} {n / run['cpu']:>10.0f}"
        )
    print(f"{'(d) model forward alone':<34} {'':>8} {model_rate:>9.0f}")
    for name, rate in decode_rates.items():
        print(f"{'(d) decode+resize alone: ' + name:<34} {'':>8} {rate:>9.0f}")
    print(f"{'pipeline limit 1/(1/model+1/decode)':<34} {'':>8} {limit:>9.0f}")
    for measure, key in (("images/s", "images_per_s"), ("images per CPU-second", "per_cpu")):
        by_name = {run["name"]: run[key] if key in run else n / run["cpu"] for run in runs}
        for kind in ("tars", "folder"):
            ours = by_name[f"(a) raeflow embed, {kind}"]
            loader, ray_data = (
                by_name[f"(b) DataLoader script, {kind}"],
                by_name[f"(c) Ray Data script, {kind}"],
            )
            print(
                f"ratios of {measure} on {kind}: raeflow/DataLoader {ours / loader:.2f}x, "
                f"raeflow/Ray Data {ours / ray_data:.2f}x"
            )
    rates = {run["name"]: run["images_per_s"] for run in runs}
    warm = rates["(a) raeflow embed --address, tars"] / rates["(b) DataLoader script, tars"]
    print(f"ratio of images/s on tars with Ray already running: raeflow/DataLoader {warm:.2f}x")


def memory_scale(args: argparse.Namespace, bundle: str, work: Path) -> None:
    """raeflow embed's driver memory at 10,000 and 100,000 images (tars of a 10k corpus repeated), and
    the hand-written DataLoader script on the same 100,000 (Ray's start-up matters less at this size)."""
    corpus = make_corpus(10_000)
    print("\ndriver memory of raeflow embed as the job grows")
    print(f"{'run':<28} {'seconds':>8} {'images/s':>9} {'driver RSS':>11} {'driver private':>15}")
    rates = {}
    for copies, label in ((1, "raeflow"), (10, "raeflow"), (10, "DataLoader script")):
        data = corpus / "wds" if copies == 1 else repeated_tars(corpus, copies)
        out = work / f"mem-{copies}-{label.split()[0]}"
        if label == "raeflow":
            command = raeflow_embed(data, bundle, out, args.raeflow_args)
        else:
            command = handwritten("dataloader", data, bundle, out)
        run = timed(f"{label} {copies * 10_000}", command, out)
        images = copies * 10_000
        rates[label, images] = images / run["seconds"]
        print(
            f"{run['name']:<28} {run['seconds']:>8.1f} {images / run['seconds']:>9.0f} "
            f"{run['rss'] / 2**20:>8.0f} MiB {run['private'] / 2**20:>12.0f} MiB ({load_line()})",
            flush=True,
        )
    ratio = rates["raeflow", 100_000] / rates["DataLoader script", 100_000]
    print(f"ratio of images/s at 100,000 images: raeflow/DataLoader {ratio:.2f}x")


def denoise_rows(args: argparse.Namespace, work: Path) -> None:
    photos = megapixel_photos(args.denoise_photos, smallest=0.3, largest=4.0)
    bundle = args.denoise_model
    sizes = [Image.open(p).size for p in sorted(photos.glob("*.jpg"))]
    pixels = sum(w * h for w, h in sizes)
    print(
        f"\ndenoise {len(sizes)} JPEG photos of {min(w * h for w, h in sizes) / 1e6:.1f}-"
        f"{max(w * h for w, h in sizes) / 1e6:.1f} megapixels ({pixels / 1e6:.1f} in all) with {bundle}"
    )
    runs = {}
    for label, command in (
        ("raeflow denoise", [sys.executable, "-m", "raeflow.cli", "denoise", "--data", str(photos),
                             "--model", bundle, "--out", str(work / "dn-a"), "--quiet"]),
        ("hand-written fp32 loop", handwritten("denoise", photos, bundle, work / "dn-b")),
    ):  # fmt: skip
        out = Path(command[command.index("--out") + 1])
        run = timed(label, command, out)
        runs[label] = run
        written = len(list(out.rglob("*.jpg")))
        print(
            f"{label:<24} {run['seconds']:>7.1f}s {pixels / 1e6 / run['seconds']:>6.2f} MP/s "
            f"{written} files, {run['cpu']:.0f} CPU-s, driver RSS {run['rss'] / 2**20:,.0f} MiB "
            f"({load_line()})",
            flush=True,
        )
    ratio = runs["hand-written fp32 loop"]["seconds"] / runs["raeflow denoise"]["seconds"]
    print(f"raeflow / hand-written fp32 loop: {ratio:.2f}x")
    print(f"agreement of the outputs: {_output_agreement(work / 'dn-a', work / 'dn-b')}")


def _output_agreement(ours: Path, theirs: Path) -> str:
    """PSNR of raeflow's denoised photos against the hand-written loop's (same model, JPEG q95 both)."""
    values = []
    for path in sorted(theirs.glob("*.jpg")):
        match = next(iter(sorted(ours.rglob(path.name))), None)
        if match is None:
            return f"{path.name} missing from raeflow's output"
        a = np.asarray(Image.open(match).convert("RGB"), np.float64)
        b = np.asarray(Image.open(path).convert("RGB"), np.float64)
        mse = float(np.mean((a - b) ** 2))
        values.append(100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return (
        f"PSNR min {min(values):.1f} dB, median {float(np.median(values)):.1f} dB over {len(values)} photos"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=5000, help="photos in the corpus")
    parser.add_argument("--denoise-photos", type=int, default=48, help="0.3-4 megapixel photos to denoise")
    parser.add_argument("--denoise-model", default="builtin:denoise-rgb", help="the denoise rows' bundle")
    parser.add_argument("--skip-denoise", action="store_true")
    parser.add_argument("--skip-embed", action="store_true", help="skip the 4-row embed table")
    parser.add_argument("--memory-scale", action="store_true", help="driver memory at 10k and 100k images")
    parser.add_argument(
        "--raeflow-args", nargs=argparse.REMAINDER, default=[], help="extra raeflow embed options"
    )
    args = parser.parse_args()

    _become_subreaper()
    print(f"{load_line()} at start")
    corpus = make_corpus(args.num_images)
    work = BENCH_OUT / "embed-runs"
    work.mkdir(parents=True, exist_ok=True)
    model = create_model("conv_dense_coco").eval()
    bundle = save_bundle(model, str(work / "conv_dense_coco"))
    paths = sorted((corpus / "folder").glob("*.jpg"))

    if not args.skip_embed:
        runs = embed_rows(args, corpus, bundle, work)
        model_rate = model_limit(model, min(len(paths), 4096))
        decode_rates = {
            "decode_fitted": decode_limit(paths, _decode_raeflow),
            "PIL open+resize": decode_limit(paths, _decode_pil),
        }
        print_embed_table(runs, model_rate, decode_rates, args.num_images)
    if args.memory_scale:
        memory_scale(args, bundle, work)
    if not args.skip_denoise:
        denoise_rows(args, work)
    print(f"\n{load_line()} at the end")


if __name__ == "__main__":
    main()

"""Make the pretrained bundles shipped in `raeflow/bundles/` with `raeflow train` (Ray Train, local Ray).

    python bench/make_bundles.py                 # prepare data, train all four, measure, install
    python bench/make_bundles.py --only denoise-grey --stage train
    python bench/make_bundles.py --stage install # measure finished runs and copy them into the package
    make bundles                                 # the same as the first line

Stages:
- `prepare`: the colour training folder (`bench-out/bundles/rgb-train/`): CBSD432's colour photos,
  Train400 (grey, read as RGB) and 96x96 tiles of the scikit-image colour photos of
  `RGB_TRAIN_PHOTOS`. The photos of `RGB_TEST_PHOTOS` are never used for training: they are the
  colour model's held-out test. Kept once complete, so a resumed run sees the same keys. And the
  photo encoder's folder (`bench-out/bundles/photo-train/`): 12 seeded 64x64 views (the whole photo
  resized, random crops, some mirrored or grey) of each photo of CBSD432, Train400 and
  `PHOTO_SKIMAGE` (scikit-image's photographs but astronaut and coffee).
- `train`: `raeflow train ...` per bundle exactly as `COMMANDS` lists, into
  `bench-out/bundles/<out>/`, its output appended to `bench-out/bundles/<out>.log`. Where torch sees
  a GPU, each command runs with `--gpu` added (and the record says so); on CPU otherwise.
- `install`: measures each finished model (grey: BSD68 and Set12 at sigma 15/25/50 by the benchmark
  README's protocol; colour: CBSD68 at sigma 15/25/50, unclipped, and crops of the held-out photos;
  MNIST: the held-out validation digits; photo encoder: reconstruction of CBSD68 resized to 64x64),
  records the numbers, the training commands, the machine
  and the held-out sample the test uses in `bundle.json` (beside the weights' checksum, which it
  leaves alone), and copies the bundle to `raeflow/bundles/<name>/`. The colour model is first
  compared with the shipped one on its run's validation photos and installed only if better.

Long runs: the grey model is 90 epochs of 22,976 patches at 200-265 patches/s in bf16 on 2 CPU
cores with AMX, 90-125 s an epoch with validation: about 3 hours (3.7 while the cores were shared).
The colour model is 40 epochs of about 29,700 patches at about 170 patches/s: about 2 hours. The
MNIST model takes minutes. A stopped run (Ctrl-C, a machine gone) continues from its last
checkpoint (one per epoch) when the same command is run again: a stage whose `model/bundle.json`
exists and whose `metrics.jsonl` reached its `--epochs` is skipped as already trained, any other is
rerun and
`raeflow train` resumes it. While a stage runs, one line per finished epoch is printed:

    [denoise-grey] epoch 12/90  val 28.41 dB  231 patches/s  load 2.05  elapsed 0:21:10  ETA 1:14:30

(elapsed: since this process started the stage; ETA: the epochs left times the mean epoch time of
this process's epochs; load: the machine's 1-minute load average at the epoch's end).

Training data is only Train400, CBSD432 and scikit-image's photographs (and MNIST for `mnist-conv`);
BSD68, CBSD68 and Set12 are test sets only. The photo encoder is 20 epochs of 9,100 images at about
176 images/s in float32 on 2 CPU cores without native bf16: 19 minutes. Run from the repository
root; the benchmark data is found at `../shared/benchmarks/denoise` (or `$RAEFLOW_DENOISE_BENCH`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "bundles"
PACKAGE = ROOT / "raeflow" / "bundles"
BENCH = Path(os.environ.get("RAEFLOW_DENOISE_BENCH", ROOT.parent / "shared" / "benchmarks" / "denoise"))

RGB_TRAIN_PHOTOS = ("chelsea", "rocket", "immunohistochemistry", "retina")
"""scikit-image colour photos whose tiles the colour model trains on."""
RGB_TEST_PHOTOS = ("astronaut", "coffee")
"""scikit-image colour photos the colour model never sees: its held-out test (and the test suite's)."""
TILE = 96
"""Side of the colour training tiles (so each photo gives many keys, hence many patches per epoch)."""
PHOTO_SKIMAGE = (
    "brick", "camera", "cell", "chelsea", "clock", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
"""scikit-image photos the photo encoder trains on: all of its photographs but `RGB_TEST_PHOTOS`
(bench/dedup_quality.py's held-out originals) and the synthetic ones (checkerboard, colour wheel,
logo)."""
PHOTO_SIDE = 64
"""Side of builtin:photo-ae's input: the training folder holds 64x64 views, so an epoch decodes little."""
PHOTO_VIEWS = 12
"""Views of each training photo: the whole photo resized (as `raeflow embed` resizes it) and random
crops of 40-95 % of each side, some mirrored, some grey: many keys a photo, no pixel of a test set."""

GREY_NOISE = "gaussian:0-0.2:unclipped"
"""sigma 0-51 on the 0-255 scale, unclipped like the benchmark protocol."""
RGB_NOISE = "gaussian:0-0.2:unclipped"
"""sigma 0-51, unclipped like CBSD68's published protocol (the grey model's noise too)."""
POLL_S = 5.0
"""Seconds between looks at a running stage's metrics.jsonl, for its progress lines."""


def _train(name: str, data: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "raeflow.cli", "train", "--data", data, "--out", str(OUT / name), *args]


COMMANDS: dict[str, list[list[str]]] = {
    "denoise-grey": [
        _train(  # one run from scratch, in bf16 on a quiet machine: 90 x 360 images x 64 patches = 2.07 M
            "denoise-grey", str(BENCH / "Train400"),
            "--model", "denoiser", "--preset", "denoise_grey",
            "--patch-size", "64", "--patches-per-image", "64", "--denoise", GREY_NOISE,
            "--epochs", "90", "--batch-size", "64", "--lr", "1e-3", "--precision", "auto",
        ),
    ],
    "denoise-rgb": [
        # The grey network on opponent colours, from the retrained grey weights, fine-tuned on colour
        # photos: 928 photos x 8 patches = 7,424 a epoch, 30 epochs = 223 k. A joint colour network
        # from scratch (denoise_rgb) fell below its noisy input by epoch 2 (22.28 against 22.99 dB
        # with batch norm; without, its ReLUs died and it stayed the identity): it needs far more
        # training than this CPU gives it.
        _train(
            "denoise-rgb", str(OUT / "rgb-train"),
            "--model", "denoiser", "--preset", "denoise_rgb_per_channel",
            "--init-from", str(OUT / "denoise-grey" / "model"),
            "--patch-size", "64", "--patches-per-image", "8", "--denoise", RGB_NOISE,
            "--epochs", "30", "--batch-size", "32", "--lr", "2e-4", "--precision", "auto",
        ),
    ],
    "photo-ae": [
        # The strided CIFAR-10 design at 64x64, depth 4: a 16x4x4 = 256-d code for `raeflow embed`.
        # 847 photos x 12 views = 10,164 images (9,1xx after the validation split), 20 epochs.
        _train(
            "photo-ae", str(OUT / "photo-train"),
            "--model", "strided", "--preset", "strided_photo64",
            "--epochs", "20", "--batch-size", "64", "--lr", "2e-3", "--precision", "auto",
        ),
    ],
    "mnist-conv": [
        _train("mnist-conv", "builtin:mnist", "--model", "conv", "--epochs", "6", "--batch-size", "64"),
    ],
}  # fmt: skip
"""The recorded `raeflow train` commands of each shipped bundle, run in order (a later stage starts
from the earlier one's model); the last one's `--out` holds the bundle."""


def _out(command: list[str]) -> Path:
    return Path(command[command.index("--out") + 1])


def prepare_rgb_data() -> Path:
    """Write the colour training folder: CBSD432's photos, Train400's (grey, so the model learns that
    a grey photo stays grey) and tiles of `RGB_TRAIN_PHOTOS`. Kept when it is already complete, so a
    resumed run's keys (and its validation split) never change."""
    from PIL import Image
    from skimage import data as skdata

    folder = OUT / "rgb-train"
    done = folder / "_complete"
    if done.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    for name, pattern in (("CBSD432", "*.jpg"), ("Train400", "*.png")):
        (folder / name.lower()).mkdir(parents=True)
        for path in sorted((BENCH / name).glob(pattern)):
            shutil.copyfile(path, folder / name.lower() / path.name)
    (folder / "photos").mkdir()
    for name in RGB_TRAIN_PHOTOS:
        pixels = getattr(skdata, name)()[..., :3]  # (H, W, 3) uint8
        if name == "retina":  # 1411x1411, mostly black border: half size, keep the fundus
            pixels = np.asarray(Image.fromarray(pixels).resize((705, 705), Image.Resampling.BICUBIC))
        h, w = pixels.shape[:2]
        for top in range(0, h - TILE + 1, TILE):
            for left in range(0, w - TILE + 1, TILE):
                tile = pixels[top : top + TILE, left : left + TILE]
                if tile.mean() < 8:  # black background only
                    continue
                Image.fromarray(tile).save(folder / "photos" / f"{name}-{top:04d}-{left:04d}.png")
    done.write_text("")  # '_' entries are not read as images
    return folder


def prepare_photo_data() -> Path:
    """Write the photo encoder's training folder: `PHOTO_VIEWS` 64x64 views of each photo of CBSD432,
    Train400 and `PHOTO_SKIMAGE` (seeded, so a remade folder is the same). Kept once complete."""
    from PIL import Image, ImageOps
    from skimage import data as skdata

    folder = OUT / "photo-train"
    done = folder / "_complete"
    if done.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    photos: list[tuple[str, Image.Image]] = []
    for name, pattern in (("CBSD432", "*.jpg"), ("Train400", "*.png")):
        for path in sorted((BENCH / name).glob(pattern)):
            photos.append((f"{name.lower()}/{path.stem}", Image.open(path).convert("RGB")))
    for name in PHOTO_SKIMAGE:
        pixels = getattr(skdata, name)()
        photos.append(
            (
                f"skimage/{name}",
                Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels).convert("RGB"),
            )
        )
    rng = np.random.default_rng(2026)
    for key, photo in photos:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        width, height = photo.size
        for view in range(PHOTO_VIEWS):
            if view == 0:
                image = photo
            else:
                w = max(PHOTO_SIDE, round(width * rng.uniform(0.4, 0.95)))
                h = max(PHOTO_SIDE, round(height * rng.uniform(0.4, 0.95)))
                left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                image = photo.crop((left, top, left + w, top + h))
                if rng.random() < 0.5:
                    image = ImageOps.mirror(image)
                if rng.random() < 0.15:
                    image = ImageOps.grayscale(image).convert("RGB")
            image = image.resize((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BICUBIC)
            image.save(folder / f"{key}-{view:02d}.png")
    done.write_text("")  # '_' entries are not read as images
    return folder


def read_metrics(out: Path) -> list[dict]:
    """The epoch records of the run in `out` (none before its first epoch ends)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line still being written: read again at the next look
            continue
    return records


def _epochs_wanted(command: list[str]) -> int:
    return int(command[command.index("--epochs") + 1])


def is_trained(command: list[str]) -> bool:
    """Whether the run of `command` has finished: its bundle written and its last epoch recorded."""
    out = _out(command)
    records = read_metrics(out)
    return (
        (out / "model" / "bundle.json").exists()
        and bool(records)
        and records[-1]["epoch"] >= _epochs_wanted(command)
    )


def _clock(seconds: float) -> str:
    """4450 -> '1:14:10'."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(name: str, record: dict, timed: list[dict], elapsed_s: float, unit: str) -> str:
    """One epoch's progress line: epoch, validation PSNR, speed, load, elapsed time and the ETA of
    the epochs left at the mean `epoch_seconds` of `timed`."""
    parts = [f"[{name}] epoch {record['epoch']}/{record['epochs']}"]
    if "val_psnr" in record:
        parts.append(f"val {record['val_psnr']:.2f} dB")
    parts.append(f"{record['images_per_s']:.0f} {unit}/s")
    if record.get("load_average"):  # absent in records written before it was added
        parts.append(f"load {record['load_average'][0]:.2f}")
    parts.append(f"elapsed {_clock(elapsed_s)}")
    eta = eta_seconds(record["epoch"], record["epochs"], timed)
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    return "  ".join(parts)


def eta_seconds(epoch: int, epochs: int, timed: list[dict]) -> float | None:
    """Seconds until epoch `epochs`, after `epoch`, at the mean `epoch_seconds` of `timed` (None when
    done or nothing is timed)."""
    if epoch >= epochs or not timed:
        return None
    return (epochs - epoch) * sum(r["epoch_seconds"] for r in timed) / len(timed)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()  # no CUDA context in this process: the GPU is the run's


def train(name: str) -> None:
    """Run (or finish) the recorded training commands of one bundle; skip the stages already trained."""
    OUT.mkdir(parents=True, exist_ok=True)
    gpu = _has_gpu()
    for recorded in COMMANDS[name]:
        out = _out(recorded)
        if is_trained(recorded):
            print(f"[{name}] {out.name}: already trained ({_epochs_wanted(recorded)} epochs)", flush=True)
            continue
        command = [*recorded, "--gpu"] if gpu else recorded
        log = OUT / f"{out.name}.log"
        print(f"[{name}] {shlex.join(command)}\n  log: {log}", flush=True)
        records = read_metrics(out)
        if records:  # the ETA from all its epochs so far, until this process has timed its own
            epoch, epochs = records[-1]["epoch"], _epochs_wanted(recorded)
            eta = eta_seconds(epoch, epochs, records)
            print(
                f"[{name}] {out.name}: continues from its last checkpoint, epoch {epoch}/{epochs} recorded"
                + (f", ETA {_clock(eta)}" if eta is not None else "")
                + (", on the GPU" if gpu else ""),
                flush=True,
            )
        else:
            print(f"[{name}] {out.name}: starts from scratch" + (" on the GPU" if gpu else ""), flush=True)
        _run_stage(name, command, log)


def _run_stage(name: str, command: list[str], log: Path) -> None:
    """Run one training command, its output appended to `log`, printing a line per finished epoch."""
    out = _out(command)
    unit = "patches" if "--patch-size" in command else "images"
    seen = {(r["epoch"], r["epoch_seconds"]) for r in read_metrics(out)}
    fresh: list[dict] = []  # this process's epochs: their times give the ETA
    start = time.monotonic()
    with open(log, "a") as handle:  # a rerun continues the run (and its log)
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while True:
                finished = process.poll() is not None  # looked at before reading: no last epoch missed
                for record in read_metrics(out):
                    if (record["epoch"], record["epoch_seconds"]) not in seen:
                        seen.add((record["epoch"], record["epoch_seconds"]))
                        fresh.append(record)
                        line = progress_line(name, record, fresh, time.monotonic() - start, unit)
                        print(line, flush=True)
                if finished:
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            try:  # Ctrl-C on a terminal reached the training command too: let it stop by itself
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait()
            stopped = f"[{name}] stopped; run the same command again to continue from the last checkpoint"
            raise SystemExit(stopped) from None
    if process.returncode:
        raise SystemExit(f"[{name}] {out.name} failed (exit {process.returncode}); see {log}")
    print(f"[{name}] {out.name} trained in {_clock(time.monotonic() - start)}", flush=True)


def _portable(value):
    """Paths of this checkout written relative to the repository (bundle.json is shipped)."""
    if isinstance(value, str):
        return value.replace(str(BENCH), "../shared/benchmarks/denoise").replace(str(ROOT) + "/", "")
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item) for item in value]
    return value


def _cpu_facts(description: str) -> dict:
    """The CPU's model and whether it has AMX / AVX-512-BF16, from a `cpu_description()` string
    ("NAME (amx_bf16, avx512_bf16, amx_tile)" or "NAME (no native bf16)")."""
    model, bracket, units = description.rpartition(" (")
    flags = set(units.rstrip(")").split(", ")) if bracket else set()
    return {
        "cpu": model if bracket else description,
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
    }


def _distinct(values) -> list:
    return list(dict.fromkeys(value for value in values if value is not None))


def _stage_facts(command: list[str]) -> dict:
    """Command, wall time, speed, precision and machine of one finished stage, from its metrics.jsonl
    and the training record that `raeflow train` wrote in its model/bundle.json."""
    out = _out(command)
    records = read_metrics(out)
    trained = json.loads((out / "model" / "bundle.json").read_text()).get("training", {})
    device = trained.get("device", "cpu")  # "cpu" or the GPU's name
    if "cpu" in trained:  # the machine that finished the run, not the one measuring it now
        cpu = _cpu_facts(trained["cpu"])
    else:
        from raeflow.hardware import cpu_description

        cpu = _cpu_facts(cpu_description()) | {"cpu_recorded_at": "install"}
    ran = [*command, "--gpu"] if device != "cpu" and "--gpu" not in command else command
    images = sum(r["train_images"] for r in records)
    train_seconds = sum(r["train_seconds"] for r in records)
    loads = [r["load_average"][0] for r in records if r.get("load_average")]
    facts = {
        "command": _portable(shlex.join(["raeflow", *ran[3:]])),
        "wall_seconds": round(sum(r["epoch_seconds"] for r in records), 1),
        "epochs": len(records),
        "train_images_seen": images,
        "train_items": "patches" if "--patch-size" in command else "images",
        "train_seconds": round(train_seconds, 1),
        "images_per_s": round(images / max(1e-9, train_seconds), 1),
        "precisions": _distinct(r.get("precision") for r in records) or _distinct([trained.get("precision")]),
        "threads": _distinct(r.get("threads") for r in records) or _distinct([trained.get("threads")]),
        **cpu,
        "device": "cpu" if device == "cpu" else "cuda",
    }
    if device != "cpu":
        facts["gpu"] = device
    if loads:  # the 1-minute load at each epoch's end: a speed from a busy machine is not a result
        facts["load_average"] = {"max": max(loads), "mean": round(sum(loads) / len(loads), 2)}
    return facts


def _machine(stage: dict) -> str:
    units = [unit for unit, has in (("AMX", stage["amx"]), ("AVX-512-BF16", stage["avx512_bf16"])) if has]
    threads = "/".join(str(t) for t in stage["threads"])
    gpu = f"GPU {stage['gpu']}" if "gpu" in stage else "no GPU"
    return f"{stage['cpu']} ({', '.join(units) or 'no native bf16'}), {threads} torch threads, {gpu}"


def _training_facts(commands: list[list[str]]) -> dict:
    """Commands, wall time, speed and machine of every stage of a run (`stages`) and of all together."""
    stages = [_stage_facts(command) for command in commands]
    last = read_metrics(_out(commands[-1]))[-1]
    images = sum(stage["train_images_seen"] for stage in stages)
    train_seconds = sum(stage["train_seconds"] for stage in stages)
    return {
        "command": stages[-1]["command"],
        "commands": [stage["command"] for stage in stages],
        "made_by": "bench/make_bundles.py (make bundles)",
        "wall_seconds": round(sum(stage["wall_seconds"] for stage in stages), 1),
        "epochs": sum(stage["epochs"] for stage in stages),
        "train_images_seen": images,
        "images_per_s": round(images / max(1e-9, train_seconds), 1),
        "machine": _machine(stages[-1]),
        "stages": stages,
        "last_epoch": {k: last[k] for k in ("epoch", "val_psnr", "val_ssim", "val_noisy_psnr") if k in last},
    }


def _benchmark(name: str, model_dir: Path) -> tuple[dict, str]:
    """PSNR/SSIM on the benchmark sets (grey), the held-out colour crops (rgb) or MNIST validation."""
    sys.path.insert(0, str(ROOT))
    from bench import denoise_quality as dq

    results: dict = {}
    # denoise_quality's own per-image cache (keyed by the weights' checksum): it reuses these rows
    caches = dq.Caches(dq.RESULTS.with_suffix("") / dq.CACHE_VERSION, fresh=set())
    plan = dq.Plan(caches=caches, sigmas=None, limit=None)
    if name == "denoise-grey":
        dq.run_grey(dq.make_methods(["ours"], str(model_dir), threads=2), 1, plan, results)
        table = {k.removeprefix("grey/").removesuffix("/ours"): _brief(v) for k, v in results.items()}
        bsd25 = results["grey/BSD68/25/ours"]["psnr"]
        summary = f"BSD68 sigma 25: {bsd25:.2f} dB PSNR (BM3D published 28.57)"
    elif name == "denoise-rgb":
        methods = dq.make_methods(["ours"], str(model_dir), threads=2)
        dq.run_cbsd68(methods, 1, plan, results)
        dq.run_rgb(methods, plan, results)
        table = {k.removeprefix("rgb/").removesuffix("/ours"): _brief(v) for k, v in results.items()}
        c25 = results["rgb/CBSD68/25/ours"]["psnr"]
        summary = f"CBSD68 sigma 25: {c25:.2f} dB PSNR (CBM3D published 30.71)"
    elif name == "photo-ae":
        table = {"CBSD68 64x64": photo_reconstruction(model_dir)}
        summary = f"CBSD68 at 64x64: {table['CBSD68 64x64']['psnr']:.2f} dB reconstruction PSNR"
    else:
        meta = json.loads((model_dir / "bundle.json").read_text())
        table = {
            "builtin:mnist validation": {
                "psnr": meta["metrics"]["val_psnr"],
                "ssim": meta["metrics"]["val_ssim"],
            }
        }
        summary = f"MNIST validation: {meta['metrics']['val_psnr']:.2f} dB reconstruction PSNR"
    if results:  # bench/denoise_quality.py reuses these rows instead of measuring them again
        (OUT / f"{name}-benchmark.json").write_text(json.dumps(results, indent=1))
        dq.save(results)
    return table, summary


def photo_reconstruction(model_dir: Path) -> dict:
    """Mean reconstruction PSNR and SSIM of the photo encoder on CBSD68's 68 test photos (never
    trained on), each resized to 64x64 as `raeflow embed` resizes it; the input's own numbers beside
    them would be infinite, so the seconds per image are given instead."""
    import torch
    from PIL import Image
    from skimage.metrics import structural_similarity

    from raeflow.bundles import psnr
    from raeflow.data.images import fit_to_contract
    from raeflow.models import load_bundle

    model = load_bundle(str(model_dir)).model.eval()
    paths = sorted((BENCH / "CBSD68").glob("*.png"))
    clean = (
        np.stack(
            [fit_to_contract(np.asarray(Image.open(path).convert("RGB")), 64, 64) for path in paths]
        ).astype(np.float32)
        / 255.0
    )  # (N, 64, 64, 3)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(torch.from_numpy(clean.transpose(0, 3, 1, 2).copy()))["recon"].float().numpy()
    seconds = (time.perf_counter() - start) / len(paths)
    out = out.transpose(0, 2, 3, 1)
    ssims = [
        structural_similarity(c, o, channel_axis=2, data_range=1.0) for c, o in zip(clean, out, strict=True)
    ]
    return {
        "psnr": round(float(np.mean([psnr(c, o) for c, o in zip(clean, out, strict=True)])), 4),
        "ssim": round(float(np.mean(ssims)), 4),
        "noisy_psnr": None,
        "seconds_per_image": round(seconds, 5),
        "images": len(paths),
    }


VALIDATION_SIGMAS = (15, 25, 50)


def validation_psnr(model_uri: str) -> dict[str, float]:
    """Mean PSNR of a colour denoiser on the colour run's own validation photos (those `raeflow
    train` held out of rgb-train/ by the hash of their key), whole, with unclipped noise of
    `VALIDATION_SIGMAS` seeded per photo: how the colour models are compared, never on a test set."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from bench import denoise_quality as dq
    from raeflow.train.batches import is_validation

    folder = OUT / "rgb-train"
    ours = dq.Ours(model_uri, threads=2)
    paths = [
        path
        for path in sorted(folder.rglob("*.*"))
        if not path.name.startswith("_")
        and is_validation(path.relative_to(folder).with_suffix("").as_posix(), 0.1)
    ]
    scores = {}
    for sigma in VALIDATION_SIGMAS:
        values = []
        for index, path in enumerate(paths):
            clean = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
            noisy = dq.add_noise(clean, sigma, 5000 + 1000 * sigma + index, clip=False)
            values.append(dq.psnr(clean, ours(noisy, sigma)))
        scores[str(sigma)] = round(float(np.mean(values)), 4)
    scores["images"] = len(paths)
    return scores


def _compare_colour(source: Path) -> dict:
    """The new colour model against the shipped one on the validation photos; which is better."""
    new = validation_psnr(str(source))
    shipped = validation_psnr("builtin:denoise-rgb")
    mean = {
        label: float(np.mean([scores[str(s)] for s in VALIDATION_SIGMAS]))
        for label, scores in (("new", new), ("shipped", shipped))
    }
    return {"new": new, "shipped": shipped, "better": "new" if mean["new"] > mean["shipped"] else "shipped"}


def _brief(result: dict) -> dict:
    """The numbers bundle.json keeps of one benchmark row; a noise-free input's infinite PSNR is
    written as null (bundle.json stays strict JSON, which has no Infinity)."""
    keys = ("psnr", "ssim", "noisy_psnr", "seconds_per_image", "images")
    brief = {}
    for key in keys:
        value = result[key]
        if isinstance(value, float):
            value = round(value, 4) if math.isfinite(value) else None
        brief[key] = value
    return brief


def install(name: str) -> None:
    """Measure a finished run, record it in its bundle.json and copy the bundle into the package."""
    import torch

    from raeflow.bundles import HELDOUT_CROPS, HELDOUT_PHOTOS, HELDOUT_SEED, HELDOUT_SIGMA, heldout_psnr
    from raeflow.models import load_bundle

    torch.set_num_threads(2)
    source = _out(COMMANDS[name][-1]) / "model"
    bundle = load_bundle(str(source))
    comparison = _compare_colour(source) if name == "denoise-rgb" else None
    if comparison is not None:
        print(f"[{name}] validation PSNR, sigma {VALIDATION_SIGMAS}: {comparison}", flush=True)
        if comparison["better"] == "shipped":
            print(f"[{name}] the shipped model is better on validation: kept, nothing installed", flush=True)
            return
    benchmark, summary = _benchmark(name, source)
    heldout = {
        "psnr": round(heldout_psnr(name, bundle.model), 4),
        "sample": "first 64 builtin:mnist validation digits, clean"
        if name == "mnist-conv"
        else f"scikit-image photos {', '.join(HELDOUT_PHOTOS)} resized to 64x64, clean"
        if name == "photo-ae"
        else f"96x96 crops {HELDOUT_CROPS[name]} of scikit-image photos, sigma {HELDOUT_SIGMA:g} "
        f"unclipped, seed {HELDOUT_SEED}",
    }
    meta = json.loads((source / "bundle.json").read_text())
    meta["training"] = _portable(meta["training"]) | _training_facts(COMMANDS[name])
    meta["settings"] = _portable(meta["settings"])
    meta["benchmark"] = benchmark
    meta["heldout"] = heldout
    meta["summary"] = summary
    if comparison is not None:
        meta["validation_comparison"] = comparison
        meta["training"]["held_out_photos"] = list(RGB_TEST_PHOTOS)
        meta["training"]["photos"] = list(RGB_TRAIN_PHOTOS)
    target = PACKAGE / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(source / "weights.safetensors", target / "weights.safetensors")
    (target / "bundle.json").write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    check = load_bundle(f"builtin:{name}")  # checksum and architecture verified again
    print(f"[{name}] installed {target} ({check.model.num_parameters} parameters): {summary}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=sorted(COMMANDS), help="bundle(s) to make")
    parser.add_argument("--stage", choices=("prepare", "train", "install", "all"), default="all")
    args = parser.parse_args()
    names = args.only or list(COMMANDS)
    if args.stage in ("prepare", "all") and "denoise-rgb" in names:
        print(f"colour training data: {prepare_rgb_data()}")
    if args.stage in ("prepare", "all") and "photo-ae" in names:
        print(f"photo training data: {prepare_photo_data()}")
    if args.stage in ("train", "all"):
        for name in names:
            train(name)
    if args.stage in ("install", "all"):
        for name in names:
            install(name)


if __name__ == "__main__":
    main()

"""Precision and recall of `raeflow embed` + `raeflow dedup` on planted near-duplicates, per transform,
against imagededup's perceptual hash (PHash) on the same corpus, in the same run.

    .venv/bin/python bench/dedup_quality.py                                # builtin:photo-ae, full corpus
    .venv/bin/python bench/dedup_quality.py --model runs/photos/model --thresholds 0.9,0.95,0.98
    .venv/bin/python bench/dedup_quality.py --quick --model builtin:denoise-rgb --image-size 64x64

Corpus (bench-out/dedup-corpus/, or dedup-corpus-quick/; the same arguments give the same files):
the test photos only, never an encoder's training photos: CBSD68's 68 colour photos, Set12's 12
grey ones (../shared/benchmarks/denoise) and scikit-image's held-out photos (`HELD_OUT_SKIMAGE`,
the ones bench/make_bundles.py keeps out of training). Each original is saved as PNG with:
- `jpeg`: re-encoded as JPEG at quality 30, 50, 70 and 95;
- `resize`: scaled by 0.5, 0.7 and 0.9 (Lanczos);
- `brightness`: brightened or darkened by 15 % and 8 % (PIL's ImageEnhance.Brightness);
- `crop`: 5 % and 10 % of the width and of the height cut off, split at random between the two sides;
- `grey`: converted to grey (colour originals only);
- hard negatives: the first and the last 45 % of the photo along its longer side (two crops that
  share no pixel): images of the same scene that are NOT duplicates of it nor of each other.
Copies other than `jpeg` are PNG, so each copy differs from its original by its transform alone.
truth.json maps each key (file name without extension) to its original, transform and kind.

Runs, each a fresh process as a user would type it: `raeflow embed --model M` on the corpus folder,
then `raeflow dedup --threshold T` for each threshold; the baseline is imagededup's PHash (64-bit
DCT hash, `pip install raeflow[bench]`), its pairs at each Hamming distance joined into groups
(connected components) as `raeflow dedup` joins its pairs, so both are scored on the same grounds.

Scores, from the groups: a predicted pair is two images in one group; a true pair is two images of
the same original that are not hard negatives. Overall precision and recall are over all pairs.
Per transform: recall is the share of its copies that landed in their original's group; precision
is the share of true pairs among the predicted pairs that hold one of its copies. Hard negatives:
the share of them put in a group with their own photo. The operating point of each method is its
threshold of highest overall recall at precision >= 0.99 (the target: recall >= 0.95 there for
jpeg, resize and brightness; >= 0.8 and above PHash for crops). Results also go to
bench-out/dedup_quality.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
BENCH = Path(os.environ.get("RAEFLOW_DENOISE_BENCH", ROOT.parent / "shared" / "benchmarks" / "denoise"))
HELD_OUT_SKIMAGE = ("astronaut", "coffee")
"""scikit-image photos no shipped model trains on (bench/make_bundles.py RGB_TEST_PHOTOS)."""
FAMILIES = ("jpeg", "resize", "brightness", "crop", "grey")
JPEG_QUALITIES = (30, 50, 70, 95)
SCALES = (0.5, 0.7, 0.9)
BRIGHTNESS = (0.85, 0.92, 1.08, 1.15)
CROPS = (0.05, 0.10)
NEGATIVE_SHARE = 0.45
"""Each hard negative keeps this share of the photo's longer side (two of them share no pixel)."""
THRESHOLDS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99)
DISTANCES = (2, 4, 6, 8, 10, 12, 14)
TARGET_PRECISION = 0.99
CORPUS_VERSION = "1"
"""Change it when the corpus changes, so an old cached corpus is made again."""


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def originals(quick: bool) -> list[tuple[str, Image.Image]]:
    """(name, photo) of the test photos: CBSD68, Set12, scikit-image's held-out ones."""
    import skimage.data

    sets = {"cbsd68": BENCH / "CBSD68", "set12": BENCH / "Set12"}
    for folder in sets.values():
        if not folder.is_dir():
            sys.exit(f"error: {folder} not found; set RAEFLOW_DENOISE_BENCH to the denoise benchmark folder")
    photos = []
    for prefix, folder in sets.items():
        paths = sorted(folder.glob("*.png"))[: 2 if quick and prefix == "cbsd68" else 1 if quick else None]
        photos += [
            (f"{prefix}-{p.stem}", Image.open(p).convert("RGB" if prefix == "cbsd68" else "L")) for p in paths
        ]
    for name in HELD_OUT_SKIMAGE[:1] if quick else HELD_OUT_SKIMAGE:
        photos.append((f"skimage-{name}", Image.fromarray(getattr(skimage.data, name)()[:, :, :3])))
    return photos


def crop_sides(image: Image.Image, cut: float, rng: np.random.Generator) -> Image.Image:
    """`image` with `cut` of its width and of its height removed, split at random between the sides."""
    w, h = image.size
    dw, dh = round(w * cut), round(h * cut)
    left, top = int(rng.integers(0, dw + 1)), int(rng.integers(0, dh + 1))
    return image.crop((left, top, left + w - dw, top + h - dh))


def copies(image: Image.Image, rng: np.random.Generator) -> list[tuple[str, str, Image.Image, int]]:
    """(family, transform, image, JPEG quality or 0 for PNG) of every planted copy of `image`."""
    w, h = image.size
    made = [("jpeg", f"jpeg-q{q}", image, q) for q in JPEG_QUALITIES]
    made += [
        (
            "resize",
            f"resize-{round(s * 100)}",
            image.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS),
            0,
        )
        for s in SCALES
    ]
    made += [
        ("brightness", f"brightness-{round(f * 100)}", ImageEnhance.Brightness(image).enhance(f), 0)
        for f in BRIGHTNESS
    ]
    made += [("crop", f"crop-{round(c * 100)}", crop_sides(image, c, rng), 0) for c in CROPS]
    if image.mode == "RGB":
        made.append(("grey", "grey", image.convert("L"), 0))
    return made


def hard_negatives(image: Image.Image) -> list[tuple[str, Image.Image]]:
    """The first and the last `NEGATIVE_SHARE` of the photo along its longer side."""
    w, h = image.size
    if w >= h:
        cut = round(w * NEGATIVE_SHARE)
        return [("negative-a", image.crop((0, 0, cut, h))), ("negative-b", image.crop((w - cut, 0, w, h)))]
    cut = round(h * NEGATIVE_SHARE)
    return [("negative-a", image.crop((0, 0, w, cut))), ("negative-b", image.crop((0, h - cut, w, h)))]


def build_corpus(quick: bool) -> tuple[Path, dict[str, dict]]:
    """The corpus folder (made once, cached) and its truth: key -> original, family, transform, kind."""
    folder = OUT / ("dedup-corpus-quick" if quick else "dedup-corpus")
    truth_file = folder / "truth.json"
    if truth_file.is_file():
        stored = json.loads(truth_file.read_text())
        if stored.get("version") == CORPUS_VERSION:
            return folder, stored["keys"]
    shutil.rmtree(folder, ignore_errors=True)
    images = folder / "images"
    images.mkdir(parents=True)
    truth: dict[str, dict] = {}
    for index, (name, photo) in enumerate(originals(quick)):
        rng = np.random.default_rng(1000 + index)  # one seed per original: the same crops every time
        photo.save(images / f"{name}.png")
        truth[name] = {"original": name, "family": "original", "transform": "original", "kind": "original"}
        for family, transform, image, quality in copies(photo, rng):
            key = f"{name}__{transform}"
            if quality:
                image.save(images / f"{key}.jpg", quality=quality)
            else:
                image.save(images / f"{key}.png")
            truth[key] = {"original": name, "family": family, "transform": transform, "kind": "copy"}
        for transform, image in hard_negatives(photo):
            key = f"{name}__{transform}"
            image.save(images / f"{key}.png")
            truth[key] = {"original": name, "family": "negative", "transform": transform, "kind": "negative"}
    truth_file.write_text(json.dumps({"version": CORPUS_VERSION, "keys": truth}, indent=1))
    return folder, truth


def run_cli(command: list[str], tries: int = 3) -> tuple[float, str]:
    """Run a raeflow command as a fresh process; its wall seconds and output. Exits on failure. A run
    whose Ray did not come up (an overloaded machine) is tried again, and says so."""
    env = {
        **os.environ,
        "RAY_raylet_start_wait_time_s": os.environ.get("RAY_raylet_start_wait_time_s", "180"),
    }
    for attempt in range(1, tries + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "raeflow.cli", *command], capture_output=True, text=True, cwd=ROOT, env=env
        )
        seconds = time.perf_counter() - started
        if done.returncode == 0:
            return seconds, done.stdout
        output = f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        if "timed out during startup" not in output or attempt == tries:
            sys.exit(f"raeflow {command[0]} failed ({done.returncode}):\n{output}")
        print(f"  raeflow {command[0]}: Ray did not start ({load_line()}); trying again", flush=True)
    raise AssertionError("unreachable")


def default_model() -> str:
    """builtin:photo-ae when this raeflow ships it; otherwise stop and say what to pass instead."""
    from raeflow.bundles import DESCRIPTIONS

    if "photo-ae" in DESCRIPTIONS:
        return "builtin:photo-ae"
    sys.exit(
        "error: this raeflow ships no photo encoder yet (builtin:photo-ae); give --model BUNDLE. "
        "The shipped bundles are denoisers and an MNIST model: builtin:denoise-rgb embeds photos (its "
        "code averaged over space, 48 values; add --image-size 64x64) but was not trained to embed, so "
        "its numbers say how the pipeline runs, not how well a photo encoder finds duplicates"
    )


def raeflow_groups(args: argparse.Namespace, corpus: Path, work: Path) -> tuple[dict, dict]:
    """Groups found by `raeflow dedup` at each threshold (threshold -> list of key lists), and timings."""
    emb = work / "emb"
    shutil.rmtree(emb, ignore_errors=True)
    embed = ["embed", "--data", str(corpus / "images"), "--model", args.model, "--out", str(emb), "--quiet"]
    embed += ["--image-size", args.image_size] if args.image_size else []
    seconds, _ = run_cli(embed)
    timings = {"embed": seconds}
    print(f"  raeflow embed: {seconds:.1f} s ({load_line()})", flush=True)
    found = {}
    for threshold in args.thresholds:
        out = work / f"dedup-{threshold:.3f}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, stdout = run_cli(
            ["dedup", "--data", str(emb), "--out", str(out), "--threshold", f"{threshold}", "--quiet"]
        )
        timings[f"dedup {threshold:g}"] = seconds
        table = pq.read_table(out / "groups.parquet", columns=["key", "group"]).to_pylist()
        groups: dict[int, list[str]] = defaultdict(list)
        for row in table:
            groups[row["group"]].append(row["key"])
        found[threshold] = list(groups.values())
        print(
            f"  raeflow dedup --threshold {threshold:g}: {seconds:.1f} s, {len(groups)} groups "
            f"({load_line()})",
            flush=True,
        )
    return found, timings


def components(keys: list[str], pairs: list[tuple[str, str]]) -> list[list[str]]:
    """Connected components (of more than one key) of the graph of `pairs` over `keys`."""
    parent = {key: key for key in keys}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        groups[root(key)].append(key)
    return [members for members in groups.values() if len(members) > 1]


def phash_groups(corpus: Path, distances: list[int]) -> tuple[dict, dict]:
    """Groups of imagededup's PHash pairs at each Hamming distance, and timings."""
    try:
        from imagededup.methods import PHash
    except ImportError:
        sys.exit(
            "error: imagededup is not installed; `pip install -c constraints.txt -e .[bench]` installs it"
        )
    logging.getLogger("imagededup").setLevel(logging.WARNING)  # its INFO lines would fill the tables
    warnings.filterwarnings("ignore", message="Parameter num_enc_workers has no effect")
    hasher = PHash(verbose=False)
    started = time.perf_counter()
    hashes = hasher.encode_images(image_dir=str(corpus / "images"), num_enc_workers=1)
    timings = {"phash encode": time.perf_counter() - started}
    print(f"  PHash encode: {timings['phash encode']:.1f} s ({load_line()})", flush=True)
    stems = {name: Path(name).stem for name in hashes}
    found = {}
    for distance in distances:
        started = time.perf_counter()
        pairs_of = hasher.find_duplicates(
            encoding_map=hashes, max_distance_threshold=distance, num_dist_workers=1
        )
        timings[f"phash find {distance}"] = time.perf_counter() - started
        pairs = [(stems[a], stems[b]) for a, others in pairs_of.items() for b in others]
        found[distance] = components(list(stems.values()), pairs)
    return found, timings


def score(groups: list[list[str]], truth: dict[str, dict]) -> dict[str, dict]:
    """Precision and recall overall, per family and per transform, for these groups (see module)."""
    group_of = {key: g for g, members in enumerate(groups) for key in members}
    predicted: Counter[str] = Counter()  # label -> predicted pairs holding one of its copies
    correct: Counter[str] = Counter()
    for members in groups:
        for a, b in itertools.combinations(members, 2):
            ta, tb = truth[a], truth[b]
            true = ta["original"] == tb["original"] and "negative" not in (ta["kind"], tb["kind"])
            labels = {"all"} | {
                t[field] for t in (ta, tb) if t["kind"] == "copy" for field in ("family", "transform")
            }
            for label in labels:
                predicted[label] += 1
                correct[label] += true
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for key, t in truth.items():
        size[t["original"]] += t["kind"] != "negative"
        if t["kind"] == "negative":  # merged with any image of its own photo: a mistake
            mates = groups[group_of[key]] if key in group_of else []
            together = any(truth[m]["original"] == t["original"] for m in mates if m != key)
        else:
            together = key in group_of and group_of[key] == group_of.get(t["original"])
        for label in (t["family"], t["transform"]) if t["kind"] != "original" else ():
            total[label] += 1
            found[label] += together
    true_pairs = sum(n * (n - 1) // 2 for n in size.values())
    result = {
        "all": {
            "images": len(truth),
            "recall": correct["all"] / max(1, true_pairs),
            "precision": _ratio(correct["all"], predicted["all"]),
            "pairs": predicted["all"],
        }
    }
    for label in total:
        result[label] = {
            "images": total[label],
            "recall": found[label] / total[label],
            "precision": _ratio(correct[label], predicted[label]),
            "pairs": predicted[label],
        }
    result["negative"]["merged"] = result["negative"].pop("recall")  # a negative "found" is a mistake
    return result


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def _f(value: float) -> str:
    """A share as printed: 3 decimals, or a dash where there was nothing to count."""
    return "-" if value != value else f"{value:.3f}"


def print_threshold(method: str, setting: str, scores: dict[str, dict]) -> None:
    """One markdown table: each transform family's copies, recall and precision at one setting."""
    print(
        f"\n{method}, {setting}: overall precision {scores['all']['precision']:.3f}, "
        f"recall {scores['all']['recall']:.3f} over {scores['all']['pairs']:,} predicted pairs"
    )
    print("\n| transform | copies | recall | precision |\n| --- | ---: | ---: | ---: |")
    for family in FAMILIES:
        if family in scores:
            row = scores[family]
            print(f"| {family} | {row['images']} | {row['recall']:.3f} | {_f(row['precision'])} |")
    negatives = scores["negative"]
    print(
        f"| hard negatives put with their photo | {negatives['images']} | {negatives['merged']:.3f} "
        f"(lower is better) | |"
    )


def operating_point(by_setting: dict) -> tuple[object, str]:
    """The setting of highest overall recall whose overall precision reaches the target; where none
    does, the one of highest precision (then recall). With a word on which it is."""
    good = [s for s, sc in by_setting.items() if sc["all"]["precision"] >= TARGET_PRECISION]
    if good:
        return max(good, key=lambda s: by_setting[s]["all"]["recall"]), "reaches it"
    best = max(by_setting, key=lambda s: (by_setting[s]["all"]["precision"], by_setting[s]["all"]["recall"]))
    return best, f"none reaches it; the most precise, {by_setting[best]['all']['precision']:.3f}"


def print_summary(ours: dict, theirs: dict, model: str, truth: dict[str, dict]) -> None:
    """Both methods at their operating points, per transform, side by side with ratios."""
    (t, t_note), (d, d_note) = operating_point(ours), operating_point(theirs)
    print(
        f"\nat precision >= {TARGET_PRECISION}: raeflow {model} + dedup at cosine {t:g} ({t_note}), "
        f"PHash at Hamming distance {d} ({d_note})"
    )
    a, b = ours[t], theirs[d]
    transforms = [x for x in dict.fromkeys(v["transform"] for v in truth.values() if v["kind"] == "copy")]
    print(
        "\n| transform | images | raeflow recall | PHash recall | raeflow precision | PHash precision "
        "| recall ratio |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for label in [*FAMILIES, *(x for x in transforms if x not in FAMILIES), "all"]:
        if label not in a:
            continue
        ratio = a[label]["recall"] / b[label]["recall"] if b[label]["recall"] else float("inf")
        name = f"**{label}**" if label in FAMILIES or label == "all" else label
        print(
            f"| {name} | {a[label]['images']} | {a[label]['recall']:.3f} | {b[label]['recall']:.3f} | "
            f"{_f(a[label]['precision'])} | {_f(b[label]['precision'])} | {ratio:.2f}x |"
        )
    print(
        f"| hard negatives put with their photo | {a['negative']['images']} | {a['negative']['merged']:.3f} "
        f"| {b['negative']['merged']:.3f} | | | |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="embedding bundle (default: builtin:photo-ae where shipped)")
    parser.add_argument("--image-size", help="raeflow embed --image-size (for a fully convolutional model)")
    parser.add_argument("--thresholds", type=lambda s: [float(x) for x in s.split(",")], default=THRESHOLDS)
    parser.add_argument(
        "--distances",
        type=lambda s: [int(x) for x in s.split(",")],
        default=DISTANCES,
        help="PHash Hamming distances (of 64 bits)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny corpus (4 photos): a smoke run")
    args = parser.parse_args()
    args.model = args.model or default_model()

    print(f"{load_line()} at start")
    corpus, truth = build_corpus(args.quick)
    kinds = Counter(t["kind"] for t in truth.values())
    print(
        f"corpus {corpus}: {len(truth):,} images: {kinds['original']} originals, {kinds['copy']} copies, "
        f"{kinds['negative']} hard negatives"
    )
    work = OUT / "dedup-runs"
    ours_groups, timings = raeflow_groups(args, corpus, work)
    theirs_groups, phash_timings = phash_groups(corpus, args.distances)
    timings.update(phash_timings)
    ours = {t: score(g, truth) for t, g in ours_groups.items()}
    theirs = {d: score(g, truth) for d, g in theirs_groups.items()}
    for threshold, scores in ours.items():
        print_threshold(f"raeflow {args.model} + dedup", f"cosine >= {threshold:g}", scores)
    for distance, scores in theirs.items():
        print_threshold("imagededup PHash", f"Hamming distance <= {distance}", scores)
    print_summary(ours, theirs, args.model, truth)
    embed_dedup = timings["embed"] + min(v for k, v in timings.items() if k.startswith("dedup"))
    phash_total = timings["phash encode"] + min(v for k, v in timings.items() if k.startswith("phash find"))
    print(
        f"\nseconds: raeflow embed + one dedup {embed_dedup:.1f} (whole processes), PHash encode + one "
        f"search {phash_total:.1f} (this process, 1 worker): {embed_dedup / phash_total:.2f}x PHash's time"
    )
    result = {
        "model": args.model,
        "quick": args.quick,
        "images": len(truth),
        "timings": timings,
        "raeflow": {str(k): v for k, v in ours.items()},
        "phash": {str(k): v for k, v in theirs.items()},
    }
    (OUT / ("dedup_quality-quick.json" if args.quick else "dedup_quality.json")).write_text(
        json.dumps(result, indent=1)
    )
    print(f"\n{load_line()} at the end")


if __name__ == "__main__":
    main()

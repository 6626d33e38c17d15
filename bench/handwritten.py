"""The scripts a user writes by hand instead of `raeflow embed` / `raeflow denoise`: the baselines
of `bench/embed_throughput.py`, each run there as a whole process.

    python bench/handwritten.py dataloader --data DIR_OR_TARS --model BUNDLE --out OUT
    python bench/handwritten.py raydata    --data DIR_OR_TARS --model BUNDLE --out OUT
    python bench/handwritten.py denoise    --data DIR --model BUNDLE --out OUT

- `dataloader`: PyTorch `DataLoader(num_workers=2)` over the files (a map-style Dataset) or the
  tars (the `webdataset` library), PIL decode + resize in the workers, the model in the main
  process, one Parquet file written with pyarrow's `ParquetWriter`.
- `raydata`: Ray Data as its docs show it: `read_images(size=...)` or `read_webdataset` + a resize
  `map_batches`, the model in a `map_batches` actor class, `write_parquet`; a private local Ray.
- `denoise`: a loop over the files: PIL decode, one forward pass on the whole image, JPEG out.
Written plainly, the way the PyTorch, WebDataset and Ray Data tutorials do it: no raeflow code
except `load_bundle` for the weights.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from raeflow.models import load_bundle

SIZE = 64
BATCH = 256


class FolderPhotos(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        with Image.open(self.paths[i]) as image:
            pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        return self.paths[i].stem, torch.from_numpy(pixels).permute(2, 0, 1)  # (3, 64, 64)


def _tar_dataset(tars: list[str]):
    import webdataset as wds

    def to_tensor(image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        return torch.from_numpy(pixels).permute(2, 0, 1)

    return (
        wds.WebDataset(tars, shardshuffle=False, empty_check=False)
        .decode("pil")
        .to_tuple("__key__", "jpg")
        .map_tuple(lambda key: key, to_tensor)
    )


def inputs(data: str) -> tuple[str, list]:
    """('tars', tar paths) or ('folder', image paths) under `data`."""
    root = Path(data)
    tars = sorted(str(p) for p in root.glob("*.tar"))
    if tars:
        return "tars", tars
    return "folder", sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def dataloader(data: str, bundle: str, out: str) -> int:
    kind, found = inputs(data)
    dataset = _tar_dataset(found) if kind == "tars" else FolderPhotos(found)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=2)
    model = load_bundle(bundle).model.eval()
    Path(out).mkdir(parents=True, exist_ok=True)
    writer = None
    rows = 0
    with torch.inference_mode():
        for keys, pixels in loader:
            vectors = model.embed(pixels.float() / 255).numpy()  # (B, D)
            flat = pa.array(vectors.reshape(-1), pa.float32())
            table = pa.table(
                {"key": list(keys), "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
            )
            if writer is None:
                writer = pq.ParquetWriter(f"{out}/embeddings.parquet", table.schema)
            writer.write_table(table)
            rows += len(keys)
    if writer is not None:
        writer.close()
    return rows


class Embedder:
    def __init__(self, bundle: str) -> None:
        torch.set_num_threads(1)
        self.model = load_bundle(bundle).model.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2)  # (B, 3, H, W)
        with torch.inference_mode():
            vectors = self.model.embed(pixels.float() / 255).numpy()
        return {"key": batch["key"], "embedding": vectors}


def resize_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    images = [
        np.asarray(Image.fromarray(a).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        for a in batch["jpg"]
    ]
    return {"key": batch["__key__"], "image": np.stack(images)}


def raydata(data: str, bundle: str, out: str) -> int:
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    kind, found = inputs(data)
    if kind == "tars":
        ds = ray.data.read_webdataset(found).map_batches(resize_batch, batch_format="numpy")
    else:
        ds = ray.data.read_images(data, size=(SIZE, SIZE), mode="RGB", include_paths=True)
        ds = ds.rename_columns({"path": "key"})
    ds = ds.map_batches(Embedder, fn_constructor_args=(bundle,), concurrency=1, batch_size=BATCH)
    ds.write_parquet(out)
    rows = pq.read_table(out, columns=["key"]).num_rows
    ray.shutdown()
    return rows


def denoise(data: str, bundle: str, out: str) -> int:
    model = load_bundle(bundle).model.eval()
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(data).glob("*.jpg"))
    with torch.inference_mode():
        for path in paths:
            with Image.open(path) as image:
                pixels = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)[None]
            recon = model(pixels.float() / 255)["recon"]  # (1, 3, H, W)
            clean = (recon[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(clean).save(Path(out) / path.name, "JPEG", quality=95)
    return len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=["dataloader", "raydata", "denoise"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = {"dataloader": dataloader, "raydata": raydata, "denoise": denoise}[args.script](
        args.data, args.model, args.out
    )
    print(f"rows {rows}")


if __name__ == "__main__":
    main()

"""The map step of `raeflow report`: decoded images -> per-image metrics, in the predictor actors.

Each batch is scored where the model runs, so only numbers travel to the driver, plus the
thumbnails and embeddings of the few rows that may end up in the report's sample (see
`raeflow.report.samples`: every actor keeps a running selection and attaches pixels only to rows
that enter it). Ray-free: Ray Data runs it in an actor pool, tests call it directly:

    predict = ReportPredictor("runs/mnist/model", noise="gaussian:0.1")
    table = predict(decode_rows(source_rows, spec))   # key, ..., reason, mse, psnr, ssim, noisy_psnr, ...

With a noise model the model gets a noisy copy of each image, drawn from a generator seeded by
the image's key, so every run (and every resume) scores the same noisy input; metrics always
compare the model's output to the clean image, and `noisy_psnr` / `noisy_ssim` score the noisy
input itself (what the model has to improve on).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from raeflow.batch.decoding import pixels_of
from raeflow.batch.predictors import SIZE_MULTIPLE, Predictor, to_tensor, to_uint8
from raeflow.batch.tiling import padded_apply
from raeflow.data import images
from raeflow.data.noise import parse_noise
from raeflow.report.metrics import image_metrics
from raeflow.report.outliers import OutlierCandidates, hashes_of
from raeflow.report.samples import SampleKeeper, gallery_rank, key_hash, outlier_rank, worst_rank

THUMBNAIL_SIDE = 96
"""Longest side of the thumbnails shown in the report (larger images are scaled down)."""
MAP_SIDE = 32
"""Longest side of the original-pixel thumbnails mapped by t-SNE beside the embeddings."""
MAP_COLUMN = "map_png"
"""Column of the map rows' small original-pixel thumbnails (null for other rows)."""
OUTLIER_RANK_COLUMN = "outlier_rank"
"""Column of dedup's outlier rank, for rows among its candidates (with --neighbors; else null)."""

METRIC_COLUMNS = ("mse", "psnr", "ssim")
NOISY_COLUMNS = ("noisy_psnr", "noisy_ssim")
THUMBNAIL_COLUMNS = ("clean_png", "noisy_png", "output_png")


class ReportPredictor(Predictor):
    """Loads the bundle once (the batch predictor base); scores one batch of decoded rows per call."""

    def __init__(
        self,
        bundle: str,
        *,
        noise: str | None = None,
        gallery_size: int = 16,
        worst_k: int = 16,
        map_size: int = 0,
        outliers_size: int = 0,
        outliers: OutlierCandidates | None = None,
        device: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        worker_memory_gb: float | None = None,
    ) -> None:
        super().__init__(
            bundle, device=device, precision=precision, threads=threads, worker_memory_gb=worker_memory_gb
        )
        self.noise = parse_noise(noise)
        self.noisy = self.noise.spec != "none"
        self.keeper = SampleKeeper(
            gallery_size=gallery_size, worst_k=worst_k, map_size=map_size, outliers_size=outliers_size
        )
        self.outliers = outliers if outliers_size > 0 else None
        # Fully convolutional models too: their `embed` averages the code over space (one length).
        self.embeds = map_size > 0

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        arrays = pixels_of(batch)
        keys = batch.column("key").to_pylist()
        labels = batch.column("label").to_pylist()
        reasons = batch.column("reason").to_pylist()
        n = batch.num_rows
        values = {name: np.full(n, np.nan) for name in METRIC_COLUMNS + NOISY_COLUMNS}
        thumbnails: dict[str, list[bytes | None]] = {name: [None] * n for name in THUMBNAIL_COLUMNS}
        embeddings: list[list[float] | None] = [None] * n
        map_pngs: list[bytes | None] = [None] * n
        ranks = self.outliers.ranks_of(hashes_of(keys)) if self.outliers else np.full(n, -1)  # (n,)

        # Images of one shape run as one batch (fixed-size models: the whole batch), in several when
        # it does not fit a worker's memory; an image that does not fit alone is rejected.
        for rows, group in self.passes(arrays, reasons):
            clean = self.on_device(to_tensor(group))  # (B, C, H, W)
            noisy = self._corrupt(clean, [keys[i] for i in rows])
            row_labels = [labels[i] for i in rows]
            y = None if None in row_labels else torch.tensor(row_labels, device=self.device)
            output = self._reconstruct(noisy, y)  # (B, C, H, W)
            # Scored in float64: the table's numbers are exact, at a cost far below the model's.
            reference = clean.double()
            scores = {k: v.cpu().numpy() for k, v in image_metrics(reference, output.double()).items()}
            if self.noisy:
                noisy_scores = image_metrics(reference, noisy.double())
                scores["noisy_psnr"] = noisy_scores["psnr"].cpu().numpy()
                scores["noisy_ssim"] = noisy_scores["ssim"].cpu().numpy()
            for name, column in scores.items():
                values[name][rows] = column
            self._attach_samples(
                rows, keys, scores["psnr"], ranks, (clean, noisy, output), thumbnails, embeddings, map_pngs
            )

        payload: dict[str, pa.Array] = {
            name: pa.array(values[name], pa.float64(), mask=np.isnan(values[name]))
            for name in METRIC_COLUMNS + (NOISY_COLUMNS if self.noisy else ())
        }
        for name in THUMBNAIL_COLUMNS:
            payload[name] = pa.array(thumbnails[name], pa.binary())
        payload["embedding"] = pa.array(embeddings, pa.list_(pa.float32()))
        payload[MAP_COLUMN] = pa.array(map_pngs, pa.binary())
        payload[OUTLIER_RANK_COLUMN] = pa.array(ranks, pa.int64(), mask=ranks < 0)
        return self.result(batch, reasons, payload)

    def _corrupt(self, clean: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """The model's input: `clean`, or a noisy copy seeded per image by its key."""
        if not self.noisy:
            return clean
        noisy = torch.empty_like(clean)
        for i, key in enumerate(keys):
            generator = torch.Generator(device=clean.device).manual_seed(key_hash(key))
            noisy[i : i + 1] = self.noise(clean[i : i + 1], generator=generator)
        return noisy

    def _reconstruct(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The model's output in [0, 1], same shape as `x`."""

        def recon(batch: torch.Tensor) -> torch.Tensor:
            return self.run_model(batch, y)["recon"].clamp(0.0, 1.0)  # float32: metrics stay exact

        if self.any_size:
            return padded_apply(recon, x, SIZE_MULTIPLE)
        return recon(x)

    def _attach_samples(
        self,
        rows: list[int],
        keys: list[str],
        psnr: np.ndarray,
        ranks: np.ndarray,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        thumbnails: dict[str, list[bytes | None]],
        embeddings: list[list[float] | None],
        map_pngs: list[bytes | None],
    ) -> None:
        """Give thumbnails (and embeddings) to the rows that enter this actor's running sample
        (`ranks`: each row's outlier rank, -1 for rows that are not outlier candidates)."""
        clean, noisy, _ = tensors
        wanted_map: list[int] = []
        for j, i in enumerate(rows):
            rank = gallery_rank(keys[i])
            in_gallery = self.keeper.gallery.offer(rank, None)
            in_worst = self.keeper.worst.offer(worst_rank(keys[i], float(psnr[j])), None)
            in_outliers = ranks[i] >= 0 and self.keeper.outliers.offer(
                outlier_rank(keys[i], int(ranks[i])), None
            )
            if in_gallery or in_worst or in_outliers:
                for name, tensor in zip(THUMBNAIL_COLUMNS, tensors, strict=True):
                    if name != "noisy_png" or self.noisy:
                        thumbnails[name][i] = thumbnail_png(tensor[j])
            if self.embeds and self.keeper.map.offer(rank, None):
                wanted_map.append(j)
        if wanted_map:
            codes = self.embed(noisy[wanted_map]).cpu().numpy()  # (M, D) float32
            for j, code in zip(wanted_map, codes, strict=True):
                embeddings[rows[j]] = code.tolist()
                map_pngs[rows[j]] = thumbnail_png(clean[j], side=MAP_SIDE)


def thumbnail_png(image: torch.Tensor, side: int = THUMBNAIL_SIDE) -> bytes:
    """A float image `(C, H, W)` in [0, 1] as PNG bytes, longest side at most `side`."""
    height, width = image.shape[-2:]
    scale = side / max(height, width)
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="area")[0]  # (C, h, w)
    return images.encode_image(to_uint8(image), "png")

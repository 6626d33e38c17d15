"""The map step of the batch jobs: plain callables that load a bundle once and process one batch.

Each predictor takes a `pyarrow.Table` of decoded rows (`raeflow.batch.decoding.DECODED_SCHEMA`)
and returns one row per input row: the pass-through columns (`key`, `source`, `label`, `shard`),
`reason` (null, or why the row was rejected) and its own payload columns. They import no Ray:
Ray Data runs them in an actor pool (`map_batches(Predictor, batch_format="pyarrow")`), tests and
notebooks call them directly:

    predict = EncodePredictor("runs/mnist/model")
    table = predict(decode_rows(source_rows, spec))   # key, source, label, shard, reason, embedding
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from raeflow.batch.decoding import PASS_THROUGH, alphas_of, pixels_of, worker_memory
from raeflow.batch.tiling import padded_apply, tiled_apply_uint8
from raeflow.data import images
from raeflow.models import Autoencoder, load_bundle
from raeflow.models.denoiser import noise_sample
from raeflow.models.precision import (
    Precision,
    as_model_input,
    checked_precision,
    prepare_model,
    resolve_precision,
)

PRECISION_METADATA = "raeflow.precision"
"""Schema metadata key of a predictor's result (and of the embedding table): bf16 or fp32."""

SIZE_MULTIPLE = 32
"""Fully convolutional models run on images padded to a multiple of this (at least their stride)."""

PASS_MEMORY_MARGIN = 2.0
"""What a model pass takes beyond the tensors it makes (convolution scratch buffers, the allocator's
slack), as a factor on their measured peak: measured (peak RSS of one 1-megapixel pass) at 1.0-1.45
times the tensors' peak for the shipped denoisers and a 3-channel default U-Net, fp32 and bf16, and
1.2-1.85 times for a 4-channel U-Net, whose many small tensors leave relatively more slack."""


@dataclass(frozen=True)
class PassMemory:
    """Bytes one model pass over `count` images of `pixels` pixels each takes:
    `fixed + per_pixel x count x pixels` (`measure_pass`)."""

    fixed: int
    per_pixel: float

    def need(self, count: int, pixels: int) -> int:
        """Bytes a pass over `count` images of `pixels` pixels each takes."""
        return int(self.fixed + self.per_pixel * count * pixels)

    def most_images(self, pixels: int, budget: int) -> int:
        """How many images of `pixels` pixels fit in one pass within `budget` bytes (0: not one)."""
        return max(0, int((budget - self.fixed) // max(1.0, self.per_pixel * pixels)))


class _PeakTensorBytes(TorchDispatchMode):
    """While active: the peak bytes of the tensors alive at once among those its ops made."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}  # inputs and weights: not counted
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for key, (ref, size) in list(self.live.items()):  # storages freed since the last op
            if ref.expired():
                del self.live[key]
                self.current -= size
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.known and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def tensor_peak(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, known: list[torch.Tensor]) -> int:
    """Peak bytes of the tensors `fn(x)` makes and holds at once (besides `x` and `known`)."""
    tracker = _PeakTensorBytes([x, *known])
    with tracker:
        fn(x)
    return tracker.peak


def measure_pass(
    fn: Callable[[torch.Tensor], Any],
    shape: tuple[int, int, Any, Any],
    known: list[torch.Tensor],
    device: torch.device,
) -> PassMemory:
    """The memory of passes of `fn` over `(B, C, H, W)` inputs, measured on two small ones.

    `shape` is (B, C, H, W) of the first probe; "any" sides are probed at 64 and 128 pixels (memory
    grows with the pixels), fixed ones with one image, then two. The tensors' peak is scaled by
    `PASS_MEMORY_MARGIN`; the input's own float copy (and its `uint8` source) is counted too.
    """
    channels = shape[1]
    if isinstance(shape[2], int) and isinstance(shape[3], int):
        sizes = [(1, shape[2], shape[3]), (2, shape[2], shape[3])]
    else:
        sizes = [(1, 64, 64), (1, 128, 128)]
    points = []
    for count, height, width in sizes:
        x = torch.rand((count, channels, height, width), device=device)  # `known` may be empty
        points.append((count * height * width, tensor_peak(fn, x, known) * PASS_MEMORY_MARGIN))
    (small, small_bytes), (large, large_bytes) = points
    # The input's float copy and its uint8 source (`to_tensor`) come on top: 5 bytes a sample.
    per_pixel = max(0.0, (large_bytes - small_bytes) / (large - small)) + channels * 5
    fixed = max(0.0, small_bytes - per_pixel * small)
    return PassMemory(fixed=int(fixed), per_pixel=per_pixel)


def pick_device(device: str | None) -> torch.device:
    """`device` as given, else CUDA when this process sees a GPU, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack equal-shaped `uint8` or `uint16` `(H, W, C)` images into a float batch `(B, C, H, W)`, 0..1.

    The batch is channels_last in memory (the decoded arrays' own layout, permuted without a copy):
    what the convolutions want (`raeflow.models.precision`).
    """
    top = float(np.iinfo(arrays[0].dtype).max)
    if arrays[0].dtype == np.uint8:
        batch = torch.from_numpy(np.stack(arrays))  # (B, H, W, C) uint8
    else:
        batch = torch.from_numpy(np.stack(arrays).astype(np.float32))  # torch has no uint16 maths
    # (B, C, H, W) view of NHWC memory; .float() keeps that layout
    return batch.permute(0, 3, 1, 2).float().div_(top)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """A float image `(C, H, W)` in [0, 1] as `uint8` `(H, W, C)`."""
    return x.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_pixels(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A float image `(C, H, W)` in [0, 1] as `dtype` (`uint8` or `uint16`) `(H, W, C)`."""
    if dtype == np.uint8:
        return to_uint8(x)
    top = float(np.iinfo(dtype).max)
    return x.clamp(0, 1).mul(top).round().permute(1, 2, 0).cpu().numpy().astype(dtype)


class Predictor:
    """The base of every predictor: loads the bundle once; subclasses implement `__call__`.

    Gives them the model on its device in its precision (`run_model`: bf16 autocast where it pays,
    channels_last, float32 out), its input contract, images grouped by shape (`same_shape_groups`)
    and the result table (`result`: pass-through columns, `reason`, payload). `threads` sets
    torch's CPU threads (the CPUs Ray reserved for the actor); `precision` is auto, bf16 or fp32.
    `memory_budget` is what one model pass may take here (`worker_memory_gb`; else on a GPU 90 % of
    its memory less the model's, on a CPU the worker's share of its node, `worker_memory`), and
    `pass_memory` what a pass takes, measured once on small inputs.
    """

    def __init__(
        self,
        bundle: str,
        *,
        device: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        worker_memory_gb: float | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.bundle = load_bundle(bundle)
        contract = self.bundle.model.input_contract
        self.channels: int = contract["channels"]
        self.height = contract["height"]
        self.width = contract["width"]
        self.any_size = self.height == "any" or self.width == "any"
        wanted = resolve_precision(precision, self.device)  # decided once, where the model runs
        self.model = prepare_model(self.bundle.model.to(self.device).eval(), wanted)
        self.precision: Precision = checked_precision(self.model, wanted, self._probe())
        self.memory_budget = self._memory_budget(worker_memory_gb, threads)
        self._pass_memory: PassMemory | None = None

    def _memory_budget(self, memory_gb: float | None, threads: int | None) -> int:
        if memory_gb is not None:
            return worker_memory(memory_gb)
        if self.device.type == "cuda":
            gpu = torch.cuda.get_device_properties(self.device).total_memory
            return int(0.9 * gpu - torch.cuda.memory_allocated(self.device))
        # The model and libraries this worker loaded are not counted: on a node of many cores and
        # little memory, they could leave a share nothing, and reject every image.
        return worker_memory(None, threads or 1)

    def measured_pass(self, x: torch.Tensor) -> Any:
        """The model pass whose memory `pass_memory` measures (subclasses: the one they run)."""
        return self.run_model(x)

    @property
    def pass_memory(self) -> PassMemory:
        """What a model pass takes (`measure_pass`), measured the first time it is asked for."""
        if self._pass_memory is None:
            shape = (1, self.channels, self.height, self.width)
            with torch.inference_mode():
                self._pass_memory = measure_pass(
                    self.measured_pass, shape, list(self.model.parameters()), self.device
                )
        return self._pass_memory

    def too_large(self, height: int, width: int, count: int = 1) -> str:
        """The rejection reason of an image that does not fit in one pass (`count`: the images the model
        sees for it, e.g. 3 for an RGB photo through a grey model)."""
        need = self.pass_memory.need(count, height * width)
        return (
            f"too_large_for_memory: {width}x{height} takes about {images.gib(need)} in this model, more "
            f"than the {images.gib(self.memory_budget)} a worker has (--worker-memory-gb)"
        )

    def _probe(self) -> torch.Tensor:
        """A small input of the model's shape (for the bf16 check)."""
        height = self.height if isinstance(self.height, int) else SIZE_MULTIPLE
        width = self.width if isinstance(self.width, int) else SIZE_MULTIPLE
        return torch.rand((2, self.channels, height, width), device=self.device)

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        """A CPU batch on the model's device (on a GPU through pinned memory, without blocking)."""
        if self.device.type != "cuda":
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def run_model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The model's forward on `x` `(B, C, H, W)` in this predictor's precision; float32 outputs."""
        with self.precision.autocast():
            out = self.model(as_model_input(x), y)
        return {name: value.float() for name, value in out.items()}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """`model.embed(x)` in this predictor's precision -> float32 `(B, D)`."""
        with self.precision.autocast():
            return self.model.embed(as_model_input(x)).float()

    def result(self, batch: pa.Table, reasons: list[str | None], payload: dict[str, pa.Array]) -> pa.Table:
        """One output row per input row: the pass-through columns, `reason`, then `payload`; the
        schema's metadata says which precision computed it (`raeflow.precision`)."""
        columns = {name: batch.column(name) for name in PASS_THROUGH if name in batch.column_names}
        columns["reason"] = pa.array(reasons, pa.string())
        columns.update(payload)
        return pa.table(columns, metadata={PRECISION_METADATA: self.precision.name})

    def passes(
        self, arrays: list[np.ndarray | None], reasons: list[str | None]
    ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        """`same_shape_groups`, each cut into passes of as many images as `memory_budget` holds (a
        batch too large for memory runs in several); the rows of an image that does not fit alone get
        its `too_large_for_memory` reason in `reasons` and are not yielded."""
        for rows, group in self.same_shape_groups(arrays):
            height, width, _ = group[0].shape  # (H, W, C)
            most = min(len(group), self.pass_memory.most_images(height * width, self.memory_budget))
            if most == 0:
                for row in rows:
                    reasons[row] = self.too_large(height, width)
                continue
            for start in range(0, len(group), most):
                yield rows[start : start + most], group[start : start + most]

    @staticmethod
    def same_shape_groups(arrays: list[np.ndarray | None]) -> list[tuple[list[int], list[np.ndarray]]]:
        """The usable images grouped by shape (row indices, images), so each group stacks into one batch."""
        groups: dict[tuple[int, ...], tuple[list[int], list[np.ndarray]]] = {}
        for i, array in enumerate(arrays):
            if array is not None:
                rows, group = groups.setdefault(array.shape, ([], []))
                rows.append(i)
                group.append(array)
        return list(groups.values())


class EncodePredictor(Predictor):
    """Images -> their embeddings (`embed`: the code flattened; a VAE's posterior mean).

    The decode step gives the images the model's channels and, for fixed-size models (or with
    `image_size`), its size; a fully convolutional model embeds each image at its own size.
    Output payload: `embedding`, `fixed_size_list<float32>[D]` (zeros on rejected rows).
    Images of one shape run in passes of as many as `memory_budget` holds (all of them, normally);
    an image that does not fit alone is rejected as `too_large_for_memory`.
    """

    def __init__(
        self,
        bundle: str,
        *,
        image_size: tuple[int, int] | None = None,
        device: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        worker_memory_gb: float | None = None,
    ):
        super().__init__(
            bundle, device=device, precision=precision, threads=threads, worker_memory_gb=worker_memory_gb
        )
        self.dim = embedding_dim(self.model, self.channels, *(image_size or (self.height, self.width)))

    def measured_pass(self, x: torch.Tensor) -> Any:
        return self.embed(x)

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        arrays = pixels_of(batch)
        reasons = batch.column("reason").to_pylist()
        vectors = np.zeros((batch.num_rows, self.dim), dtype=np.float32)  # (N, D)
        for rows, group in self.passes(arrays, reasons):
            x = self.on_device(to_tensor(group))  # (B, C, H, W)
            vectors[rows] = self.embed(x).cpu().numpy()  # (B, D) float32 whatever the precision
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return self.result(batch, reasons, {"embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim)})


def embedding_dim(model: Autoencoder, channels: int, height: object, width: object) -> int:
    """Length of one image's embedding (probed at `height` x `width` when the model cannot say)."""
    try:
        return int(model.embedding_dim)
    except (TypeError, ValueError):
        pass
    if not isinstance(height, int) or not isinstance(width, int):
        raise ValueError("this model's embedding length depends on the image size: give one")
    with torch.inference_mode():
        probe = torch.zeros((1, channels, height, width), device=next(model.parameters()).device)
        return int(model.embed(probe).shape[1])


class DenoisePredictor(Predictor):
    """Images -> denoised images, each at its own size, mode and (by default) format.

    Channel rule: a grey image through an RGB model is copied to three channels and averaged
    back; an RGB image through a grey model is denoised one channel at a time. Size: fully
    convolutional models take any size (tiled above `max_pixels_per_pass`, or at `tile`); a
    fixed-size model rejects other sizes unless `resize` (then resize to its size and back).
    Memory: an image whose one pass would not fit `memory_budget` is tiled, in fewer tiles per
    pass and then smaller tiles until it fits (slower, same size out); one that does not fit even
    in the smallest tiles is rejected as `too_large_for_memory`.
    Output payload: `data` (encoded image bytes) and `out_format` (png, jpeg, ...).
    """

    def __init__(
        self,
        bundle: str,
        *,
        out_format: str = "same",
        resize: bool = False,
        tile: int | None = None,
        tile_overlap: int = 32,
        max_pixels_per_pass: int = 1024 * 1024,
        jpeg_quality: int = 95,
        device: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        worker_memory_gb: float | None = None,
    ) -> None:
        super().__init__(
            bundle, device=device, precision=precision, threads=threads, worker_memory_gb=worker_memory_gb
        )
        self.out_format = out_format
        self.resize = resize
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.max_pixels_per_pass = max_pixels_per_pass
        self.jpeg_quality = jpeg_quality

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        arrays = pixels_of(batch)
        alphas = alphas_of(batch)
        reasons = batch.column("reason").to_pylist()
        formats = batch.column("format").to_pylist()
        datas: list[bytes] = []
        out_formats: list[str | None] = []
        for i, array in enumerate(arrays):
            data, fmt = b"", None
            if array is not None:
                try:
                    fmt = output_format(self.out_format, formats[i])
                    denoised = self.denoise(array)  # (H, W, C), uint8 or uint16 as the input
                    alpha = alphas[i]
                    if alpha is not None:  # alpha is carried through untouched
                        denoised = np.concatenate([denoised, alpha[:, :, None]], axis=2)
                    data = encode_output(denoised, fmt, quality=self.jpeg_quality)
                except images.ImageRejected as rejected:
                    reasons[i], fmt = str(rejected), None
                except (ValueError, OSError) as err:  # the encoder refused this image
                    reasons[i], fmt = f"encode_error: {err}", None
            datas.append(data)
            out_formats.append(fmt)
        payload = {
            "data": pa.array(datas, pa.large_binary()),
            "out_format": pa.array(out_formats, pa.string()),
        }
        return self.result(batch, reasons, payload)

    @torch.inference_mode()
    def denoise(self, array: np.ndarray) -> np.ndarray:
        """One image `uint8` `(H, W, C)` -> denoised, same shape; raises `ImageRejected` for a size misfit.

        Large images (above `max_pixels_per_pass`, or any with `tile`) go through the model tile by
        tile, blended straight into the `uint8` result, so an actor's memory stays bounded by the
        tile size, not the photo's (`raeflow.batch.tiling.tiled_apply_uint8`).
        """
        height, width, channels = array.shape
        if self.any_size and (
            self.tile is not None
            or height * width > self.max_pixels_per_pass
            or self._one_pass_need(height, width, channels) > self.memory_budget
        ):
            side, per_pass = self._tiling(height, width, channels)

            def run_tiles(x: torch.Tensor) -> torch.Tensor:  # (n, C, t, t) on the CPU
                return self._with_channels(self.on_device(x), self._padded_recon)

            with self._one_noise_level(array):
                return tiled_apply_uint8(
                    run_tiles,
                    array,
                    tile=side,
                    overlap=self.tile_overlap,
                    multiple=SIZE_MULTIPLE,
                    tiles_per_pass=per_pass,
                )
        x = self.on_device(to_tensor([array]))  # (1, C, H, W)
        return to_pixels(self._with_channels(x, self._run)[0], array.dtype)

    def measured_pass(self, x: torch.Tensor) -> Any:
        return self._padded_recon(x) if self.any_size else self._recon(x)

    def _one_pass_need(self, height: int, width: int, channels: int) -> int:
        """Bytes the model takes on the whole image at once (padded to `SIZE_MULTIPLE`)."""
        pixels = _padded(height) * _padded(width)
        return self.pass_memory.need(self._images_per_image(channels), pixels)

    def _images_per_image(self, channels: int) -> int:
        """Images the model sees per image of `channels` (an RGB photo through a grey model: 3)."""
        return channels if self.channels == 1 else 1

    def _tiling(self, height: int, width: int, channels: int) -> tuple[int, int]:
        """(tile side, tiles per pass) for an image, within `memory_budget`: as asked (--tile, or the
        side of --max-pixels-per-pass, 4 tiles a pass), else one tile a pass, then halved sides down to
        `TILE_MIN`; raises `ImageRejected` (`too_large_for_memory`) when even that does not fit."""
        side = self.tile or _default_tile(self.max_pixels_per_pass)
        least = max(TILE_MIN, 2 * self.tile_overlap + SIZE_MULTIPLE)
        per_pass = TILES_PER_PASS
        while self._tiled_need(side, per_pass, height, width, channels) > self.memory_budget:
            if per_pass > 1:
                per_pass = 1
            elif side > least:
                side = max(least, side // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE)
            else:
                need = self._tiled_need(side, per_pass, height, width, channels)
                raise images.ImageRejected(
                    "too_large_for_memory",
                    f"{width}x{height} takes about {images.gib(need)} even in tiles of {side} pixels, more "
                    f"than the {images.gib(self.memory_budget)} a worker has (--worker-memory-gb)",
                )
        return side, per_pass

    def _tiled_need(self, side: int, per_pass: int, height: int, width: int, channels: int) -> int:
        """Bytes of a tiled run (`tiled_apply_uint8`): a pass over `per_pass` tiles, the blend
        accumulators of one row of tiles (float32: sums, weights and the finished rows' copies) and
        the output image."""
        tile_pixels = min(side, _padded(height)) * min(side, _padded(width))
        model = self.pass_memory.need(per_pass * self._images_per_image(channels), tile_pixels)
        rows = min(side, _padded(height)) * _padded(width) * (3 * channels + 1) * 4
        return model + rows + height * width * channels * 2

    @contextmanager
    def _one_noise_level(self, array: np.ndarray) -> Iterator[None]:
        """While tiles of `array` go through a model with a noise guard, it uses the whole image's
        noise level (from a sample of its blocks), so a flat tile and a textured one of the same
        photo are denoised alike."""
        pin = getattr(self.model, "pinned_noise", None)
        if pin is None or getattr(self.model, "noise_guard", None) is None:
            yield
            return
        sample = self.on_device(to_tensor([noise_sample(array)]))  # (1, C, h, w)
        with ExitStack() as stack:

            def enter(x: torch.Tensor) -> torch.Tensor:  # x: the sample as the model will see images
                stack.enter_context(pin(x))
                return x

            self._with_channels(sample, enter)
            yield

    def _with_channels(self, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`run` (the model at its channels) on `x` `(B, C, H, W)` of any channel count -> `(B, C, H, W)`."""
        batch, channels, height, width = x.shape
        if channels == self.channels:
            return run(x)
        if channels == 1:  # grey image, RGB model: copy to RGB, average back
            return run(x.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
        # RGB image, grey model: each channel is a grey image
        return run(x.reshape(batch * channels, 1, height, width)).reshape(batch, channels, height, width)

    def _padded_recon(self, x: torch.Tensor) -> torch.Tensor:
        return padded_apply(self._recon, x, SIZE_MULTIPLE)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The model on `(B, C_model, H, W)` in one pass -> `(B, C_model, H, W)`."""
        height, width = x.shape[-2:]
        if self.any_size:
            return self._padded_recon(x)
        if (height, width) == (self.height, self.width):
            return self._recon(x)
        if not self.resize:
            raise images.ImageRejected(
                f"size_mismatch: the model takes {self.height}x{self.width} images, this one is "
                f"{height}x{width}; pass --resize to resize it and back"
            )
        small = F.interpolate(x, size=(self.height, self.width), mode="bilinear", antialias=True)
        return F.interpolate(self._recon(small), size=(height, width), mode="bilinear")

    def _recon(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_model(x)["recon"]  # (B, C, H, W) float32: pixels are quantised from it


TILES_PER_PASS = 4
"""Tiles the model sees at once when an image is tiled (`tiled_apply_uint8`)."""
TILE_MIN = 64
"""The smallest tile side memory pressure shrinks tiles to."""


def _padded(size: int) -> int:
    return math.ceil(size / SIZE_MULTIPLE) * SIZE_MULTIPLE


def _default_tile(max_pixels: int) -> int:
    return max(64, int(max_pixels**0.5) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def encode_output(pixels: np.ndarray, fmt: str, *, quality: int) -> bytes:
    """Encode `(H, W, C)` as `fmt`: PNG, JPEG, WebP (raeflow's encoder), BMP or TIFF (Pillow).

    C may include alpha (2: grey + alpha, 4: RGBA), dropped for JPEG and BMP; `uint16` (grey) stays
    16-bit in PNG and TIFF and becomes 8-bit in the other formats.
    """
    if pixels.shape[2] in (2, 4) and fmt in ("jpeg", "bmp"):
        pixels = np.ascontiguousarray(pixels[:, :, :-1])
    if pixels.dtype == np.uint16:
        if fmt in ("png", "tiff") and pixels.shape[2] == 1:
            import io

            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(pixels[:, :, 0]).save(buffer, fmt.upper())  # mode I;16
            return buffer.getvalue()
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if fmt in images.ENCODE_FORMATS:
        return images.encode_image(pixels, fmt, quality=quality)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, fmt.upper())
    return buffer.getvalue()


def output_format(wanted: str, found: str | None) -> str:
    """The format to write: `wanted` (png/jpeg), or for "same" the input's own (PNG if it has none)."""
    if wanted != "same":
        return wanted
    return found if found in ("png", "jpeg", "webp", "bmp", "tiff") else "png"

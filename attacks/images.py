"""Image reconstruction metrics and grids: PSNR, SSIM, optional LPIPS, batch matching.

Images are tensors ``[B, C, H, W]`` (or ``[B, H, W]``) in the range the caller names
with ``data_range``; nothing is clamped or rescaled here. Scores are per image, then
averaged over the batch, after :func:`match_batch` has put the reconstruction in the
reference's order when the attack does not know it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from privlab.errors import PrivlabError, check

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SSIM_SIGMA = 1.5
"""Standard deviation of SSIM's Gaussian window (Wang et al. 2004: 11 taps, sigma 1.5)."""
SSIM_WINDOW = 11
"""Width of that window; images whose smaller side is below it are scored on every pixel."""
LPIPS_BACKBONES = {"alex": "alexnet-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}
"""torchvision checkpoint name prefixes that ``lpips`` loads from the torch hub cache."""


def psnr(reconstruction: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` per image, averaged
    over the batch (the convention of breaching's ``psnr``; Huynh-Thu and Ghanbari 2008).

    An exact reconstruction scores ``inf``, and so does any batch containing one.
    """
    check(data_range > 0, "data_range", "> 0", data_range)
    mse = _per_image(reconstruction, reference).square().mean(dim=1)
    with np.errstate(divide="ignore"):
        scores = 10 * np.log10(data_range**2 / mse.numpy())
    return float(scores.mean())


def ssim(
    reconstruction: torch.Tensor,
    reference: torch.Tensor,
    data_range: float = 1.0,
) -> float:
    """Structural similarity (Wang, Bovik, Sheikh and Simoncelli 2004, Eq. 13) per image,
    averaged over the batch.

    The standard Gaussian-window SSIM via ``skimage.metrics.structural_similarity``
    (``gaussian_weights=True``, ``sigma=1.5``, population covariance, K1 0.01, K2 0.03),
    on each channel, averaged. The SSIM map is averaged over the pixels whose 11-pixel
    window lies inside the image, the reference convention. Decision for images with a
    side under 11 pixels (digits' 8x8): no such pixel exists, so the map is averaged over
    every pixel (``win_size=1``, no crop; the window still reflects at the border).
    """
    from skimage.metrics import structural_similarity

    check(data_range > 0, "data_range", "> 0", data_range)
    first, second = _batched(reconstruction, reference)
    height, width = first.shape[-2:]
    win_size = SSIM_WINDOW if min(height, width) >= SSIM_WINDOW else 1
    first = first.reshape(-1, height, width).double().numpy()
    second = second.reshape(-1, height, width).double().numpy()
    channels = first.shape[0] // len(reconstruction)
    scores = [
        structural_similarity(
            a,
            b,
            win_size=win_size,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            data_range=data_range,
        )
        for a, b in zip(first, second)
    ]
    return float(np.mean(np.reshape(scores, (-1, channels)).mean(axis=1)))


def match_batch(reconstruction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The order ``[B]`` such that ``reconstruction[order]`` best lines up with ``reference``.

    Hungarian matching (Kuhn 1955; ``scipy.optimize.linear_sum_assignment``) on the mean
    squared error of every (reference, reconstruction) pair, minimising the total; the
    way breaching re-orders a batch before scoring (it matches on LPIPS).
    """
    rec, ref = _batched(reconstruction, reference)
    cost = torch.cdist(ref.flatten(1).double(), rec.flatten(1).double()).square()
    rows, columns = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(columns[np.argsort(rows)], dtype=torch.int64)


def lpips(
    reconstruction: torch.Tensor,
    reference: torch.Tensor,
    net: str = "alex",
    data_range: float = 1.0,
) -> float:
    """LPIPS distance (Zhang, Isola, Efros, Shechtman and Wang 2018), batch mean.

    Needs the optional ``lpips`` package and the torchvision ``net`` backbone weights
    already in the torch hub cache (privlab never downloads); otherwise a
    ``PrivlabError`` says what is missing. Images in ``[0, data_range]`` are mapped to
    ``[-1, 1]``; grey images are repeated over 3 channels. The backbone needs images of
    at least about 32x32 pixels: upsample small ones first.
    """
    check(net in LPIPS_BACKBONES, "net", f"one of {sorted(LPIPS_BACKBONES)}", net)
    _require_lpips(net)
    import lpips as lpips_package

    rec, ref = (2 * t / data_range - 1 for t in _batched(reconstruction, reference))
    if rec.shape[1] == 1:
        rec, ref = rec.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
    metric = lpips_package.LPIPS(net=net, verbose=False)
    with torch.no_grad():
        return float(metric(rec.float(), ref.float()).mean())


def _require_lpips(net: str) -> None:
    if importlib.util.find_spec("lpips") is None or importlib.util.find_spec("torchvision") is None:
        raise PrivlabError(
            "lpips needs the optional packages 'lpips' and 'torchvision' "
            "(pip install lpips torchvision); use psnr or ssim without them"
        )
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    prefix = LPIPS_BACKBONES[net]
    if not any(checkpoints.glob(f"{prefix}*.pth")):
        raise PrivlabError(
            f"lpips net={net!r} needs the torchvision weights {prefix}*.pth in {checkpoints}; "
            "privlab never downloads them"
        )


def save_image_grid(
    images_rows: Sequence[torch.Tensor],
    path: str | Path,
    titles: Sequence[str] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Save ``image_grid(images_rows, titles, value_range)`` to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images_rows, titles, value_range).savefig(path, bbox_inches="tight")
    return path


def image_grid(
    images_rows: Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """A grid with one row per tensor ``[B, C, H, W]`` (C = 1 or 3) or ``[B, H, W]``,
    e.g. ground truth over reconstruction, each row titled on its left.

    Grey images use the ``gray`` colour map over ``value_range``; colour images are
    clipped to it.
    """
    from matplotlib.figure import Figure

    check(len(images_rows) >= 1, "images_rows", "a non-empty sequence of tensors", "[]")
    check(
        titles is None or len(titles) == len(images_rows),
        "titles",
        f"None or {len(images_rows)} strings",
        titles,
    )
    columns = max(len(row) for row in images_rows)
    figure = Figure(figsize=(1.2 * columns + 0.8, 1.2 * len(images_rows)))
    axes = figure.subplots(len(images_rows), columns, squeeze=False)
    for r, row in enumerate(images_rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(c < len(row))
            if c < len(row):
                _show(ax, row[c], value_range)
        if titles is not None:
            axes[r][0].set_ylabel(titles[r])
    return figure


def _show(ax, image: torch.Tensor, value_range: tuple[float, float]) -> None:
    picture = image.detach().cpu().float()
    if picture.dim() == 3 and picture.shape[0] == 1:
        picture = picture[0]
    low, high = value_range
    if picture.dim() == 2:
        ax.imshow(picture.numpy(), cmap="gray", vmin=low, vmax=high)
        return
    check(picture.dim() == 3 and picture.shape[0] == 3, "image", "[H, W], [1|3, H, W]", "")
    scaled = ((picture - low) / (high - low)).clamp(0, 1)
    ax.imshow(scaled.permute(1, 2, 0).numpy())


def _batched(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both batches as ``[B, C, H, W]`` CPU tensors of the same shape."""
    check(
        first.shape == second.shape,
        "reconstruction",
        f"of the reference's shape {tuple(second.shape)}",
        tuple(first.shape),
    )
    check(first.dim() in (3, 4), "images", "[B, H, W] or [B, C, H, W]", tuple(first.shape))
    if first.dim() == 3:
        first, second = first.unsqueeze(1), second.unsqueeze(1)
    return first.detach().cpu(), second.detach().cpu()


def _per_image(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The difference of two batches, one flat row per image, in float64."""
    check(
        first.shape == second.shape,
        "reconstruction",
        f"of the reference's shape {tuple(second.shape)}",
        tuple(first.shape),
    )
    check(first.dim() >= 1 and len(first) >= 1, "images", "a non-empty batch [B, ...]", "")
    return (first.detach().cpu().double() - second.detach().cpu().double()).reshape(len(first), -1)

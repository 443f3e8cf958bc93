"""MTCNN face detection for ``preprocess.video.face_crop: mtcnn``.

The cascade of Zhang et al. (2016), "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks": P-Net slides over an image pyramid and proposes windows,
R-Net (24x24 crops) and O-Net (48x48 crops) each reject and refine the survivors. The three
networks have the layout of facenet-pytorch (``models/mtcnn.py``), so its ``pnet.pt``,
``rnet.pt`` and ``onet.pt`` state dicts load as they are (``python -m pipeline.fetch mtcnn``
installs them); the cascade around them is written here, in 0-based pixel coordinates, with
boxes as Float[K, 4] ``(x1, y1, x2, y2)``.

Shapes: images go in as uint8[N, H, W, 3] RGB; ``detect`` returns, per image, Float[K, 5]
boxes with their O-Net face probability.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from encoders.models_home import require_model

MIN_FACE = 20  # pixels: the smallest face searched for, the pyramid's first scale is 12 / MIN_FACE
SCALE_FACTOR = 0.709  # between pyramid levels (sqrt(0.5) rounded as in the paper's code)
THRESHOLDS = (0.6, 0.7, 0.7)  # face probability that P-, R- and O-Net candidates must reach
CELL, STRIDE = 12, 2  # P-Net's window and step in the pixels of its pyramid level


class PNet(nn.Module):
    """Proposal network, fully convolutional: Float[B,3,H,W] -> (offsets Float[B,4,h,w],
    face probability Float[B,h,w]); output cell (i, j) sees the 12x12 window at (2j, 2i)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


class RNet(nn.Module):
    """Refinement network: Float[B,3,24,24] -> (offsets Float[B,4], face probability Float[B])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The dense weights were converted from Caffe, which flattens width-major.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Output network: Float[B,3,48,48] -> (offsets Float[B,4], face probability Float[B]).
    Its landmark layer (``dense6_3``) is kept so that the state dict loads; it is not used."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # five facial landmarks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_1(x).softmax(1)[:, 1]


# --------------------------------------------------------------------------- box logic
def proposals(offsets: torch.Tensor, probability: torch.Tensor, scale: float,
              threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """P-Net cells of one pyramid level whose face probability reaches ``threshold``.

    ``offsets`` Float[B,4,h,w], ``probability`` Float[B,h,w] at a level scaled by ``scale``.
    Returns (boxes Float[K,4]: each cell's 12x12 window in the original image's pixels,
    scores Float[K], offsets Float[K,4], image index Long[K])."""
    image, row, col = (probability >= threshold).nonzero(as_tuple=True)
    x1, y1 = STRIDE * col.to(offsets.dtype), STRIDE * row.to(offsets.dtype)
    boxes = torch.stack([x1, y1, x1 + CELL, y1 + CELL], dim=1) / scale
    return boxes, probability[image, row, col], offsets[image, :, row, col], image


def regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes moved by a network's offsets, which are fractions of the box's width (x1, x2)
    and height (y1, y2): Float[K,4], Float[K,4] -> Float[K,4]."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [w, h, w, h]
    return boxes + offsets * size


def square(boxes: torch.Tensor) -> torch.Tensor:
    """The square of side max(width, height) centred on each box: Float[K,4] -> Float[K,4]."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True) / 2
    return torch.cat([centre - half, centre + half], dim=1)


def nms_min(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression where the overlap is the intersection over the smaller
    box, so that a box lying inside a better one goes even when their IoU is low (O-Net's
    last step). Boxes of different ``groups`` (images) never suppress each other. Returns the
    kept indices, best score first."""
    order = scores.argsort(descending=True)
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(int(best))
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(1)
        overlap = inter / torch.minimum(areas[best], areas[rest]).clamp(min=1e-6)
        order = rest[(overlap <= threshold) | (groups[rest] != groups[best])]
    return torch.tensor(keep, dtype=torch.long)


def crop_patches(images: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, size: int) -> torch.Tensor:
    """The pixels of each box (rounded to whole pixels; zeros where it leaves the image),
    resized to ``size`` x ``size`` by area averaging: images Float[N,3,H,W] -> Float[K,3,size,size]."""
    height, width = images.shape[2:]
    corners = boxes.round().long().tolist()
    patches = images.new_zeros(len(corners), 3, size, size)
    for k, ((x1, y1, x2, y2), index) in enumerate(zip(corners, image_index.tolist())):
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        patch = images.new_zeros(3, y2 - y1, x2 - x1)
        left, top, right, bottom = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if right > left and bottom > top:
            patch[:, top - y1: bottom - y1, left - x1: right - x1] = images[index, :, top:bottom, left:right]
        patches[k] = nn.functional.interpolate(patch[None], size=(size, size), mode="area")[0]
    return patches


def pyramid(height: int, width: int, min_face: float) -> list[float]:
    """Scales at which P-Net's 12-pixel window sees faces from ``min_face`` pixels up to the
    image's short side, each ``SCALE_FACTOR`` times the one before."""
    scales, scale = [], CELL / min_face
    while min(height, width) * scale >= CELL:
        scales.append(scale)
        scale *= SCALE_FACTOR
    return scales


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8-valued pixels to the networks' input range, about [-1, 1]."""
    return (pixels - 127.5) * 0.0078125


# --------------------------------------------------------------------------- the cascade
class MTCNN(nn.Module):
    """The three networks and the cascade over them."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "MTCNN":
        """The detector with the state dicts ``pnet.pt``, ``rnet.pt``, ``onet.pt`` of ``folder``, in eval mode."""
        detector = cls()
        for name in ("pnet", "rnet", "onet"):
            state = torch.load(Path(folder) / f"{name}.pt", map_location="cpu", weights_only=True)
            getattr(detector, name).load_state_dict(state)
        return detector.eval()

    @torch.inference_mode()
    def detect(self, images: np.ndarray | torch.Tensor, min_face: float = MIN_FACE) -> list[torch.Tensor]:
        """Faces of each image uint8[N,H,W,3]: per image Float[K,5] ``(x1, y1, x2, y2, p)``,
        best first, K = 0 without a face."""
        pixels = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        boxes, scores, offsets, index = self.propose(pixels, min_face)
        boxes, scores, offsets, index = self.refine(self.rnet, 24, THRESHOLDS[1], pixels, boxes, offsets, index)
        keep = batched_nms(boxes, scores, index, 0.7)
        boxes, scores, offsets, index = boxes[keep], scores[keep], offsets[keep], index[keep]
        boxes, scores, offsets, index = self.refine(self.onet, 48, THRESHOLDS[2], pixels, boxes, offsets, index)
        boxes = regress(boxes, offsets)
        keep = nms_min(boxes, scores, index, 0.7)
        found = torch.cat([boxes, scores[:, None]], dim=1)[keep]
        return [found[index[keep] == i] for i in range(len(pixels))]

    @staticmethod
    def refine(network: nn.Module, size: int, threshold: float, pixels: torch.Tensor, boxes: torch.Tensor,
               offsets: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The candidates that ``network`` still takes for faces: each box moved by its
        ``offsets`` and squared, cropped at ``size`` pixels and scored. Returns (boxes, scores,
        the network's offsets, image index) of those scoring at least ``threshold``."""
        if not len(boxes):
            return boxes, boxes.new_zeros(0), offsets, index
        boxes = square(regress(boxes, offsets))
        offsets, scores = network(normalise(crop_patches(pixels, boxes, index, size)))
        passed = scores >= threshold
        return boxes[passed], scores[passed], offsets[passed], index[passed]

    def propose(self, pixels: torch.Tensor, min_face: float) -> tuple[torch.Tensor, ...]:
        """P-Net's candidates over the pyramid: (boxes, scores, offsets, image index), after
        non-maximum suppression within each level and then across levels."""
        height, width = pixels.shape[2:]
        found = []
        for scale in pyramid(height, width, min_face):
            level = nn.functional.interpolate(pixels, size=(math.ceil(height * scale), math.ceil(width * scale)),
                                              mode="area")
            boxes, scores, offsets, index = proposals(*self.pnet(normalise(level)), scale, THRESHOLDS[0])
            keep = batched_nms(boxes, scores, index, 0.5)
            found.append((boxes[keep], scores[keep], offsets[keep], index[keep]))
        if not found:
            return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
        boxes, scores, offsets, index = (torch.cat(parts) for parts in zip(*found))
        keep = batched_nms(boxes, scores, index, 0.7)
        return boxes[keep], scores[keep], offsets[keep], index[keep]


@functools.lru_cache(maxsize=1)
def detector() -> MTCNN:
    """The MTCNN of the models home (loaded once per process); ModelNotInstalledError, naming
    ``python -m pipeline.fetch mtcnn``, when its weights are not installed."""
    return MTCNN.from_folder(require_model("mtcnn"))


def largest_faces(frames: np.ndarray) -> Sequence[tuple[int, int, int, int] | None]:
    """(x, y, w, h) of the largest face in each RGB frame uint8[N,H,W,3], or None where there
    is none; faces smaller than a tenth of the short side are not searched for (as with the
    OpenCV detector), which keeps the pyramid short."""
    height, width = frames.shape[1:3]
    results: list[tuple[int, int, int, int] | None] = []
    for faces in detector().detect(frames, min_face=max(MIN_FACE, min(height, width) / 10)):
        if not len(faces):
            results.append(None)
            continue
        x1, y1, x2, y2 = faces[((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])).argmax(), :4].tolist()
        x1, y1 = max(0, round(x1)), max(0, round(y1))
        x2, y2 = min(width, round(x2)), min(height, round(y2))
        results.append((x1, y1, x2 - x1, y2 - y1) if x2 > x1 and y2 > y1 else None)
    return results

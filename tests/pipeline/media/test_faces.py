"""MTCNN: the cascade's box logic on hand-computed inputs, the networks' layout, the missing
weights error, and (when the weights are installed) a real face through the detector and the
face crop of pipeline.media."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.models_home import ModelNotInstalledError, installed_model
from pipeline.media import decode as media
from pipeline.media import faces

torch.set_num_threads(1)


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def test_proposals_map_cells_to_their_windows_in_the_image():
    probability = torch.zeros(2, 3, 4)
    probability[1, 1, 2] = 0.9  # image 1, output row 1, column 2
    probability[0, 2, 0] = 0.5  # below the threshold
    offsets = torch.arange(2 * 4 * 3 * 4, dtype=torch.float32).reshape(2, 4, 3, 4)
    boxes, scores, cell_offsets, image = faces.proposals(offsets, probability, scale=0.5, threshold=0.6)
    # The cell sees the 12x12 window at (2 * 2, 2 * 1) of a level at half size: x 8..32, y 4..28.
    assert boxes.tolist() == [[8.0, 4.0, 32.0, 28.0]]
    assert scores.tolist() == [pytest.approx(0.9)] and image.tolist() == [1]
    assert cell_offsets.tolist() == [offsets[1, :, 1, 2].tolist()]


def test_regress_square_and_the_pyramid():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 wide, 40 high
    moved = faces.regress(box, torch.tensor([[0.1, -0.05, 0.2, 0.0]]))
    assert moved.tolist() == [pytest.approx([12.0, 18.0, 34.0, 60.0])]
    assert faces.square(box).tolist() == [[0.0, 20.0, 40.0, 60.0]]  # side 40 around the centre (20, 40)
    # 12 / 20 = 0.6 first, then times 0.709 while the short side (100) still spans 12 pixels:
    # 60, 42.5, 30.2, 21.4, 15.2 pixels (10.7 is too few).
    assert faces.pyramid(100, 300, 20) == pytest.approx([0.6 * 0.709 ** k for k in range(5)])


def test_nms_min_drops_a_box_inside_a_better_one_but_not_across_images():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 6.0, 6.0], [2.0, 2.0, 6.0, 6.0], [20.0, 0, 30, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    groups = torch.tensor([0, 0, 1, 0])
    # IoU of the small box with the big one is 0.16, but it lies wholly inside it.
    assert faces.nms_min(boxes, scores, groups, 0.7).tolist() == [0, 2, 3]


def test_crop_patches_pads_with_zeros_outside_the_image():
    image = torch.arange(1.0, 101.0).reshape(1, 1, 10, 10).repeat(1, 3, 1, 1)
    patch = faces.crop_patches(image, torch.tensor([[-2.0, -2.0, 4.0, 4.0]]), torch.tensor([0]), size=6)
    assert patch.shape == (1, 3, 6, 6)
    assert patch[0, :, :2].eq(0).all() and patch[0, :, :, :2].eq(0).all()
    assert torch.equal(patch[0, :, 2:, 2:], image[0, :, :4, :4])
    half = faces.crop_patches(image, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0]), size=2)
    assert half[0, 0].tolist() == [[(1 + 2 + 11 + 12) / 4, (3 + 4 + 13 + 14) / 4],
                                   [(21 + 22 + 31 + 32) / 4, (23 + 24 + 33 + 34) / 4]]  # area averaging


def test_networks_take_their_input_sizes():
    detector = faces.MTCNN().eval()
    offsets, probability = detector.pnet(torch.zeros(2, 3, 12, 16))
    assert offsets.shape == (2, 4, 1, 3) and probability.shape == (2, 1, 3)
    for network, size in ((detector.rnet, 24), (detector.onet, 48)):
        offsets, probability = network(torch.zeros(5, 3, size, size))
        assert offsets.shape == (5, 4) and probability.shape == (5,) and probability.le(1).all()


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MELD_FUSION_MODELS", str(tmp_path))
    faces.detector.cache_clear()
    try:
        with pytest.raises(ModelNotInstalledError, match=r"python -m pipeline\.fetch mtcnn"):
            faces.largest_faces(np.zeros((1, 48, 48, 3), np.uint8))
    finally:
        faces.detector.cache_clear()


# --------------------------------------------------------------------------- real weights
def face_photo() -> np.ndarray | None:
    """Grace Hopper's portrait (matplotlib's sample data), RGB 600x512, or None."""
    try:
        import cv2
        from matplotlib import cbook

        path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (ImportError, OSError, ValueError):
        return None
    image = cv2.imread(str(path)) if path.is_file() else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# Her face from the chin to the hairline under the cap, ear to ear, by eye.
FACE_BOX = (168, 120, 360, 330)
needs_weights = pytest.mark.skipif(installed_model("mtcnn") is None or face_photo() is None,
                                   reason="needs `python -m pipeline.fetch mtcnn` and matplotlib's grace_hopper.jpg")


@needs_weights
def test_the_detector_finds_the_face_of_a_photo_and_nothing_on_a_blank_frame():
    photo = face_photo()
    (found,) = faces.detector().detect(photo[None])
    (blank,) = faces.detector().detect(np.full((1, 300, 400, 3), 128, np.uint8))
    assert found.shape == (1, 5) and found[0, 4] > 0.99
    assert iou(found[0, :4].tolist(), FACE_BOX) > 0.7
    assert blank.shape == (0, 5)


@needs_weights
def test_mtcnn_face_crop_centres_the_face_and_counts_the_frames():
    import cv2

    photo = face_photo()
    # A wide frame, the portrait at its left: a centre crop would miss most of the face.
    frame = np.zeros((300, 800, 3), np.uint8)
    frame[:, :256] = cv2.resize(photo, (256, 300), interpolation=cv2.INTER_AREA)
    frames = np.stack([frame, frame, np.full_like(frame, 128)])
    crops, found = media.face_crop(frames, 64, "mtcnn")
    assert crops.shape == (3, 64, 64, 3) and found == 2  # the blank frame shows none
    (x, y, w, h), = faces.largest_faces(frames[:1])
    scale_x, scale_y = 256 / 512, 300 / 600
    expected = (FACE_BOX[0] * scale_x, FACE_BOX[1] * scale_y, FACE_BOX[2] * scale_x, FACE_BOX[3] * scale_y)
    assert iou((x, y, x + w, y + h), expected) > 0.6
    # The crop is twice the face's width, centred on it: the face, half as wide, in its middle.
    (x, y, w, h), = faces.largest_faces(crops[:1])
    assert abs(x + w / 2 - 32) < 5 and abs(y + h / 2 - 32) < 8 and 24 < w < 40


@needs_weights
def test_each_network_tells_the_face_from_the_background():
    """Each stage alone, on the face and on a patch of the flag beside it: a network whose
    layout did not match its weights (e.g. flattening in the wrong order) scores at random."""
    pixels = torch.from_numpy(face_photo()).permute(2, 0, 1)[None].float()
    boxes = faces.square(torch.tensor([FACE_BOX, (0, 0, 150, 150)], dtype=torch.float32))
    detector = faces.detector()
    for network, size in ((detector.pnet, 12), (detector.rnet, 24), (detector.onet, 48)):
        _, probability = network(faces.normalise(faces.crop_patches(pixels, boxes, torch.tensor([0, 0]), size)))
        face, flag = probability.flatten().tolist()
        assert face > 0.9 and flag < 0.5, (type(network).__name__, face, flag)

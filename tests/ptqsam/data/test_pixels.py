"""Every image mode becomes the same picture in 8-bit RGB (checked against pixels computed by hand
from the colour-space formulas), or is skipped and counted; image paths stay inside the images
folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ptqsam.data import CocoDataset
from ptqsam.data.pixels import UnsupportedImage, rgb8


def _grey(*levels: int) -> list[list[int]]:
    return [[v, v, v] for v in levels]


def _cmyk(c: int, m: int, y: int, k: int) -> list[int]:
    """Naive CMYK -> RGB: R = (255 − C)(255 − K)/255, rounded."""
    return [round((255 - v) * (255 - k) / 255) for v in (c, m, y)]


def _ycbcr(y: int, cb: int, cr: int) -> list[int]:
    """JFIF YCbCr -> RGB, rounded and clipped."""
    rgb = (y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128))
    return [int(np.clip(round(v), 0, 255)) for v in rgb]


def _lab_grey(lightness_byte: int) -> int:
    """sRGB level of the grey with CIE L* = byte·100/255 (a* = b* = 0, D50 white)."""
    fy = (lightness_byte * 100 / 255 + 16) / 116
    y = fy**3 if fy**3 > 0.008856 else (fy - 16 / 116) / 7.787
    srgb = 12.92 * y if y <= 0.0031308 else 1.055 * y ** (1 / 2.4) - 0.055
    return round(srgb * 255)


def _palette_image(mode: str) -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    image.putdata([0, 1, 2])
    return image if mode == "P" else image.convert("PA")


def _uint16(mode: str) -> Image.Image:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    return Image.frombytes(mode, (4, 1), data)


#: mode -> (image, the RGB pixels expected, computed by hand); ``None``: the image is refused
CASES = {
    "1": (Image.fromarray(np.array([[False, True]])), _grey(0, 255)),
    "L": (Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8)), _grey(0, 128, 255)),
    "LA": (Image.fromarray(np.array([[[10, 0], [200, 255]]], dtype=np.uint8), "LA"), _grey(10, 200)),
    "La": (Image.frombytes("La", (2, 1), bytes([50, 128, 200, 255])), _grey(50 * 255 // 128, 200)),  # unpremultiplied
    "RGBa": (Image.frombytes("RGBa", (1, 1), bytes([50, 25, 10, 128])), [[v * 255 // 128 for v in (50, 25, 10)]]),
    "P": (_palette_image("P"), [[255, 0, 0], [0, 255, 0], [0, 0, 255]]),
    "PA": (_palette_image("PA"), [[255, 0, 0], [0, 255, 0], [0, 0, 255]]),
    "RGBA": (Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8), "RGBA"),
             [[10, 20, 30], [40, 50, 60]]),
    "CMYK": (Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [100, 50, 25, 10]]], dtype=np.uint8), "CMYK"),
             [_cmyk(0, 0, 0, 0), _cmyk(255, 0, 0, 0), _cmyk(100, 50, 25, 10)]),
    "YCbCr": (Image.fromarray(np.array([[[76, 85, 255], [128, 128, 128], [200, 60, 90]]], dtype=np.uint8), "YCbCr"),
              [_ycbcr(76, 85, 255), _ycbcr(128, 128, 128), _ycbcr(200, 60, 90)]),
    "HSV": (Image.fromarray(np.array([[[0, 255, 255], [85, 255, 255], [0, 0, 128]]], dtype=np.uint8), "HSV"),
            [[255, 0, 0], [0, 255, 0], [128, 128, 128]]),
    "LAB": (Image.fromarray(np.array([[[0, 0, 0], [128, 0, 0], [255, 0, 0]]], dtype=np.uint8), "LAB"),
            _grey(_lab_grey(0), _lab_grey(128), _lab_grey(255))),
    "I;16": (_uint16("I;16"), _grey(0, 1, 128, 255)),  # v / 257: 32768 / 257 = 127.5 -> 128
    "I;16B": (_uint16("I;16B"), _grey(0, 1, 128, 255)),
    "I": (Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.int32)), _grey(0, 1, 128, 255)),
    "I out of range": (Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), None),
    "I negative": (Image.fromarray(np.array([[-1, 5]], dtype=np.int32)), None),
    "F": (Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)), _grey(0, 64, 128, 255)),
    "F above 1": (Image.fromarray(np.array([[0.0, 1.5]], dtype=np.float32)), None),
    "F NaN": (Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)), None),
}


@pytest.mark.parametrize("name", CASES)
def test_every_mode_is_the_same_picture_or_refused(name):
    image, expected = CASES[name]
    if expected is None:
        with pytest.raises(UnsupportedImage, match="values outside"):
            rgb8(image)
        return
    got = rgb8(image)
    assert got.dtype == np.uint8 and got.shape == (image.height, image.width, 3)
    tolerance = 1 if name in ("LAB", "YCbCr", "La", "RGBa") else 0  # colour management, rounding: one level
    assert np.abs(got.reshape(-1, 3).astype(int) - np.array(expected)).max() <= tolerance, got.reshape(-1, 3)


def test_every_pillow_mode_is_handled_and_an_unknown_one_refused():
    for mode in Image.MODES:  # a blank image of each: in range for every mode
        assert rgb8(Image.new(mode, (2, 1))).shape == (1, 2, 3), mode

    class Future:
        mode = "RGB;99"

    with pytest.raises(UnsupportedImage, match="RGB;99"):
        rgb8(Future())


#: (file format, mode as read back) of the files the dataset test writes; each reads back in that mode
ON_DISK = {"1": ("PNG", "1"), "L": ("PNG", "L"), "LA": ("PNG", "LA"), "P": ("PNG", "P"), "RGBA": ("PNG", "RGBA"),
           "CMYK": ("TIFF", "CMYK"), "YCbCr": ("TIFF", "YCbCr"), "LAB": ("TIFF", "LAB"), "I;16": ("PNG", "I;16"),
           "I": ("TIFF", "I"), "I out of range": ("TIFF", "I"), "F": ("TIFF", "F"), "F above 1": ("TIFF", "F")}


def _write_dataset(root, entries):
    """A COCO dataset of one image per entry ``(file_name, image or None)``, each with one box."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id, (file_name, image, fmt) in enumerate(entries, start=1):
        width, height = (image.width, image.height) if image is not None else (4, 1)
        if image is not None:
            image.save(images_dir / file_name, format=fmt)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1,
                            "segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]], "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return CocoDataset(images_dir, root / "annotations.json")


def test_a_dataset_reads_every_mode_from_disk_or_skips_and_counts_it(tmp_path):
    entries = [(f"{i}.{fmt.lower()}", CASES[name][0], fmt) for i, (name, (fmt, _)) in enumerate(ON_DISK.items())]
    dataset = _write_dataset(tmp_path / "data", entries)
    for (file_name, _, _), (name, (_, mode)) in zip(entries, ON_DISK.items()):
        with Image.open(dataset.images_dir / file_name) as img:
            assert img.mode == mode, name  # the file really holds that mode
    loaded = {s.image_id: s.image for s in dataset.samples()}
    for image_id, name in enumerate(ON_DISK, start=1):
        expected = CASES[name][1]
        if expected is None:
            assert image_id not in loaded and image_id in dataset.skips.keys("unsupported_image")
            continue
        tolerance = 1 if name in ("LAB", "YCbCr") else 0
        assert np.abs(loaded[image_id].reshape(-1, 3).astype(int) - np.array(expected)).max() <= tolerance, name
    assert dataset.skips.count("unsupported_image") == sum(CASES[n][1] is None for n in ON_DISK)


def test_paths_leaving_the_images_folder_are_skipped_and_counted(tmp_path, caplog):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 1)).save(outside)
    inside = Image.new("RGB", (4, 1), (9, 9, 9))
    entries = [("ok.png", inside, "PNG"), ("../secret.png", None, None), (str(outside), None, None),
               ("sub/../../secret.png", None, None)]
    dataset = _write_dataset(tmp_path / "data", entries)
    assert dataset.image_ids == [1]
    assert dataset.skips.keys("path_outside_images") == {2, 3, 4}
    assert "3 image entries" in caplog.text and "outside" in caplog.text
    assert [s.image_id for s in dataset.samples([1, 2, 3, 4])] == [1]

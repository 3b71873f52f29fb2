"""Tests for the stimulus layer: IDX parsing, Fashion-MNIST, image folders, composites, tasks."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioattn.data import (
    FASHION_MNIST_CATEGORIES,
    IMAGE_TYPES,
    QUADRANTS,
    ImageSet,
    TaskSet,
    array_grid,
    embed_in_noise,
    find_data_dir,
    load_fashion_mnist,
    load_image_folder,
    load_image_folder_report,
    make_task_set,
    make_task_sets,
    measured_snr,
    merge,
    quadrant_slices,
    read_idx,
    resolve_quadrant,
    snr_db_to_ratio,
    snr_ratio_to_db,
)
from bioattn.errors import CategoryError, ConfigError, DataError

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
REAL_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
HAVE_REAL = all((REAL_DIR / name).is_file() for name in REAL_FILES)

_TYPE_CODES = {np.dtype("u1"): 0x08, np.dtype("i2"): 0x0B, np.dtype("f4"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise ``array`` in the IDX format (big-endian header and payload)."""
    code = _TYPE_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fake_fashion_mnist(directory: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """Four small, valid Fashion-MNIST-style IDX files (gzipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, gz=True)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, gz=True)
    return directory


# ---------------------------------------------------------------------------------------------
# IDX parsing


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / "a.idx", images, gz=gz))
    assert out.dtype == np.uint8
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)
    out[0, 0, 0] = 7  # writable


def test_read_idx_multibyte_big_endian(tmp_path: Path) -> None:
    values = np.array([-2, 300, 1000], dtype=np.int16)
    out = read_idx(write_idx(tmp_path / "b.idx", values))
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    floats = np.array([[0.5, -1.25]], dtype=np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx", floats)), floats)


def test_read_idx_truncated_payload(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    path = tmp_path / "short.idx"
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "hdr.idx"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8) % 7))
    path = tmp_path / "short.idx.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_unknown_type_code_and_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "code.idx"
    path.write_bytes(bytes([0, 0, 0x42, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match="type code 0x42"):
        read_idx(path)
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)) + b"extra")
    with pytest.raises(DataError, match="trailing"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope.idx")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.skipif(not HAVE_REAL, reason="Fashion-MNIST is not installed in /usr/share/datasets")
def test_real_fashion_mnist_headers_and_load() -> None:
    expected = {"train": 60000, "t10k": 10000}
    for prefix, n in expected.items():
        with gzip.open(REAL_DIR / f"{prefix}-images-idx3-ubyte.gz", "rb") as f:
            assert struct.unpack(">4I", f.read(16)) == (2051, n, 28, 28)
        with gzip.open(REAL_DIR / f"{prefix}-labels-idx1-ubyte.gz", "rb") as f:
            assert struct.unpack(">2I", f.read(8)) == (2049, n)
    for split, n in (("train", 60000), ("test", 10000)):
        data = load_fashion_mnist(split, data_dir=REAL_DIR)
        assert data.images.shape == (n, 1, 28, 28)
        assert data.images.dtype == torch.float32
        assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
        assert data.labels.dtype == torch.int64
        assert torch.equal(torch.unique(data.labels), torch.arange(10))
        assert data.split == split
        assert data.categories == FASHION_MNIST_CATEGORIES


def test_fashion_mnist_categories() -> None:
    assert len(FASHION_MNIST_CATEGORIES) == 10
    assert FASHION_MNIST_CATEGORIES[0] == "T-shirt/top"
    assert FASHION_MNIST_CATEGORIES[9] == "Ankle boot"


def test_find_data_dir_missing_files_message(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")  # un-gzipped name also counts
    with pytest.raises(DataError) as info:
        find_data_dir(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    listed = message.split("): ", 1)[1].split(" (gzipped or not)")[0]
    assert listed.split(", ") == ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message
    assert "BIOATTN_DATA" in message


def test_find_data_dir_nonexistent(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        find_data_dir(tmp_path / "absent")
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_find_data_dir_env_and_plain_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REAL_FILES:
        (tmp_path / name.removesuffix(".gz")).write_bytes(b"")
    monkeypatch.setenv("BIOATTN_DATA", str(tmp_path))
    assert find_data_dir() == tmp_path.resolve()
    monkeypatch.setenv("BIOATTN_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"\$BIOATTN_DATA"):
        find_data_dir()


def test_load_fake_fashion_mnist(tmp_path: Path) -> None:
    directory = write_fake_fashion_mnist(tmp_path / "fm")
    train = load_fashion_mnist("train", data_dir=directory)
    test = load_fashion_mnist("test", data_dir=directory)
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.split == "train" and test.split == "test"
    raw = read_idx(directory / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(train.images[:, 0].numpy(), raw / 255.0, rtol=0, atol=1e-7)
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    # cached, but every call returns fresh tensors
    train.images.zero_()
    again = load_fashion_mnist("train", data_dir=directory)
    assert float(again.images.max()) > 0


def test_load_fashion_mnist_rejects_inconsistent_files(tmp_path: Path) -> None:
    directory = write_fake_fashion_mnist(tmp_path / "fm")
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match=r"10 images but .* 9 labels"):
        load_fashion_mnist("test", data_dir=directory)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="label 12"):
        load_fashion_mnist("test", data_dir=directory)
    with pytest.raises(DataError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("validation", data_dir=directory)


# ---------------------------------------------------------------------------------------------
# Image folders


def _save(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def make_image_folder(root: Path) -> Path:
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    (root / "bird").mkdir()
    (root / ".hidden").mkdir()
    _save(root / "cat" / "a.png", np.full((12, 16, 3), 200, dtype=np.uint8))
    _save(root / "cat" / "b.PNG", np.full((20, 10), 50, dtype=np.uint8))  # grey, upper-case ext
    _save(root / "dog" / "c.jpg", np.full((16, 16, 3), 100, dtype=np.uint8))
    _save(root / "bird" / "d.bmp", np.full((10, 30, 3), 10, dtype=np.uint8))
    (root / "dog" / "broken.png").write_bytes(b"this is not a png")
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_image_folder_loads_and_skips_corrupt(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pets")
    with pytest.warns(UserWarning, match="broken.png"):
        report = load_image_folder_report(root, size=8, resize=10)
    data = report.image_set
    assert report.n_skipped == 1
    assert report.skipped[0][0] == root / "dog" / "broken.png"
    assert data.categories == ("bird", "cat", "dog")
    assert data.images.shape == (4, 3, 8, 8)
    assert data.labels.tolist() == [0, 1, 1, 2]
    assert [p.name for p in report.paths] == ["d.bmp", "a.png", "b.PNG", "c.jpg"]
    assert data.split == "pets"
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    assert torch.allclose(data.images[1], torch.full((3, 8, 8), 200 / 255))

    with pytest.warns(UserWarning):
        grey = load_image_folder(root, size=6, resize=None, grayscale=True)
    assert grey.images.shape == (4, 1, 6, 6)


def test_image_folder_centre_crop(tmp_path: Path) -> None:
    root = tmp_path / "crop"
    (root / "x").mkdir(parents=True)
    columns = np.tile(np.arange(20, dtype=np.uint8) * 10, (10, 1))  # 10 rows × 20 columns
    _save(root / "x" / "wide.png", columns)
    data = load_image_folder(root, size=10, resize=10, grayscale=True)
    # the short side is already 10, so only the centre 10 columns (5..14) remain
    expected = torch.tensor(np.arange(5, 15) * 10 / 255, dtype=torch.float32)
    assert torch.allclose(data.images[0, 0, 0], expected)


def test_image_folder_sizes_must_match_without_resizing(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="differ in shape"):
            load_image_folder(root, size=None, resize=None)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no category sub-folders") as info:
        load_image_folder(empty)
    assert str(empty) in str(info.value)
    (empty / "cat").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(empty)
    (empty / "cat" / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="could be read"):
        load_image_folder(empty)
    with pytest.raises(ConfigError, match="larger than"):
        load_image_folder(empty, size=300, resize=256)
    with pytest.raises(ConfigError, match="positive integer"):
        load_image_folder(empty, size=0)


# ---------------------------------------------------------------------------------------------
# Composites


def test_merge_is_pixel_mean() -> None:
    a = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    b = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(merge(a, b), (a + b) / 2)
    with pytest.raises(ValueError, match="same shape"):
        merge(a, b[:, :, :4])


def test_array_grid_quadrants() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    tiles = values.view(1, 4, 1, 1, 1).expand(2, 4, 3, 5, 7).clone()
    grid = array_grid(tiles)
    assert grid.shape == (2, 3, 10, 14)
    for q in range(4):
        rows, cols = quadrant_slices(10, 14, q)
        assert torch.all(grid[:, :, rows, cols] == values[q])
    assert torch.all(grid[:, :, :5, :7] == 1)  # top-left
    assert torch.all(grid[:, :, :5, 7:] == 2)  # top-right
    assert torch.all(grid[:, :, 5:, :7] == 3)  # bottom-left
    assert torch.all(grid[:, :, 5:, 7:] == 4)  # bottom-right
    with pytest.raises(ValueError, match="N, 4, C, H, W"):
        array_grid(torch.zeros(1, 3, 1, 2, 2))


def test_quadrant_slices_and_names() -> None:
    assert QUADRANTS == ("top-left", "top-right", "bottom-left", "bottom-right")
    assert quadrant_slices(56, 56, "bottom-right") == (slice(28, 56), slice(28, 56))
    assert quadrant_slices(56, 56, 1) == (slice(0, 28), slice(28, 56))
    # odd sizes: the middle row/column belongs to both halves
    assert quadrant_slices(7, 7, "top-left") == (slice(0, 4), slice(0, 4))
    assert quadrant_slices(7, 7, "bottom-right") == (slice(3, 7), slice(3, 7))
    assert resolve_quadrant("Top Right") == 1
    assert resolve_quadrant("2") == 2
    with pytest.raises(ConfigError, match="top-left"):
        resolve_quadrant("middle")
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        resolve_quadrant(4)


def test_snr_conversions() -> None:
    assert snr_db_to_ratio(0) == 1.0
    assert snr_db_to_ratio(10) == pytest.approx(10.0)
    assert snr_db_to_ratio(-3) == pytest.approx(0.501, rel=1e-3)
    assert snr_ratio_to_db(snr_db_to_ratio(7.5)) == pytest.approx(7.5)


@pytest.mark.parametrize("snr", [0.25, 1.0, 4.0])
def test_embed_in_noise_snr(snr: float) -> None:
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    noisy = embed_in_noise(images, snr, torch.Generator().manual_seed(4))
    assert noisy.shape == images.shape
    measured = measured_snr(images, noisy)
    assert torch.allclose(measured, torch.full((6,), snr), rtol=0.03)
    noise = noisy - images
    assert float(noise.flatten(1).mean(dim=1).abs().max()) < 1e-5  # zero mean
    again = embed_in_noise(images, snr, torch.Generator().manual_seed(4))
    assert torch.equal(noisy, again)
    other = embed_in_noise(images, snr, torch.Generator().manual_seed(5))
    assert not torch.equal(noisy, other)


def test_embed_in_noise_not_clipped_and_errors() -> None:
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = embed_in_noise(images, 0.1, torch.Generator().manual_seed(0))
    assert float(noisy.min()) < 0 or float(noisy.max()) > 1
    assert torch.equal(embed_in_noise(images, float("inf")), images)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="positive"):
            embed_in_noise(images, bad)


# ---------------------------------------------------------------------------------------------
# Task sets

N_CATEGORIES = 6
PER_CATEGORY = 10
CATEGORY_NAMES = tuple(f"c{i}" for i in range(N_CATEGORIES))


def constant_source(split: str = "test") -> ImageSet:
    """Images whose every pixel is (category + 1) / 10: composites can be decoded exactly."""
    labels = torch.arange(N_CATEGORIES).repeat_interleave(PER_CATEGORY)
    values = (labels.to(torch.float32) + 1) / 10
    images = values.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    return ImageSet(images, labels, CATEGORY_NAMES, split)


def unique_source() -> ImageSet:
    """Every image has its own constant value, index / 100, so repeats can be detected."""
    labels = torch.arange(N_CATEGORIES).repeat_interleave(PER_CATEGORY)
    values = torch.arange(len(labels), dtype=torch.float32) / 100
    images = values.view(-1, 1, 1, 1).expand(-1, 1, 3, 3).clone()
    return ImageSet(images, labels, CATEGORY_NAMES, "test")


def category_value(contents: torch.Tensor) -> torch.Tensor:
    return (contents.to(torch.float32) + 1) / 10


@pytest.mark.parametrize("image_type", IMAGE_TYPES)
def test_positives_contain_target_negatives_never(image_type: str) -> None:
    snr = 1.0 if image_type == "noise" else None
    task = make_task_set(constant_source(), "c2", image_type, n_pos=40, n_neg=30, seed=1, snr=snr)
    assert isinstance(task, TaskSet)
    assert task.target == 2 and task.target_name == "c2"
    assert task.n_pos == 40 and task.n_neg == 30 and len(task) == 70
    assert task.is_target[:40].all() and not task.is_target[40:].any()
    assert task.split == "test" and task.image_type == image_type
    k = {"standard": 1, "noise": 1, "merged": 2, "array": 4}[image_type]
    assert task.contents.shape == (70, k) and task.contents.dtype == torch.int64
    has_target = (task.contents == 2).sum(dim=1)
    assert torch.all(has_target[:40] == 1)
    assert torch.all(has_target[40:] == 0)
    for row in task.contents.tolist():  # categories within one image are distinct
        assert len(set(row)) == len(row)
    assert set(task.contents.flatten().tolist()) <= set(range(N_CATEGORIES))


def test_standard_and_merged_pixels_match_contents() -> None:
    source = constant_source()
    standard = make_task_set(source, "c0", "standard", n_pos=10, n_neg=10)
    assert standard.images.shape == (20, 1, 4, 4)
    expected = category_value(standard.contents[:, 0]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    assert torch.allclose(standard.images, expected)

    merged = make_task_set(source, "c0", "merged", n_pos=10, n_neg=10)
    assert merged.images.shape == (20, 1, 4, 4)
    assert torch.all(merged.contents[:10, 0] == 0)  # target first in positives
    mean = category_value(merged.contents).mean(dim=1)
    assert torch.allclose(merged.images, mean.view(-1, 1, 1, 1).expand(-1, 1, 4, 4))


def test_array_pixels_match_contents_and_quadrants() -> None:
    task = make_task_set(constant_source(), "c5", "array", n_pos=75, n_neg=20, seed=3)
    assert task.images.shape == (95, 1, 8, 8)
    values = category_value(task.contents)
    for q in range(4):
        rows, cols = quadrant_slices(8, 8, q)
        patch = task.images[:, 0, rows, cols]
        assert torch.allclose(patch, values[:, q].view(-1, 1, 1).expand_as(patch))
    quadrant = task.target_quadrant
    assert torch.all(quadrant[75:] == -1)
    assert set(quadrant[:75].tolist()) == {0, 1, 2, 3}  # target position varies
    assert torch.all(task.contents[torch.arange(75), quadrant[:75]] == 5)
    with pytest.raises(ConfigError, match="array"):
        _ = make_task_set(constant_source(), 0, "standard", 2, 2).target_quadrant


def test_images_drawn_without_replacement() -> None:
    task = make_task_set(unique_source(), "c1", "standard", n_pos=PER_CATEGORY, n_neg=20)
    values = task.images[:, 0, 0, 0]
    assert len(torch.unique(values[:PER_CATEGORY])) == PER_CATEGORY  # all ten target images
    assert len(torch.unique(values)) == len(values)
    more = make_task_set(unique_source(), "c1", "standard", n_pos=25, n_neg=5)
    assert len(torch.unique(more.images[:25, 0, 0, 0])) == PER_CATEGORY  # reuse once exhausted


def test_noise_task_snr() -> None:
    source = constant_source()
    # give the images some structure so that they have pixel variance
    ramp = torch.linspace(0, 0.3, 16).view(1, 1, 4, 4)
    source = ImageSet(source.images + ramp, source.labels, source.categories, source.split)
    task = make_task_set(source, "c1", "noise", n_pos=20, n_neg=20, seed=0, snr=2.0)
    assert task.snr == 2.0
    clean = make_task_set(source, "c1", "standard", n_pos=20, n_neg=20, seed=0)
    assert torch.equal(task.contents, clean.contents)
    assert torch.allclose(
        measured_snr(clean.images, task.images), torch.full((40,), 2.0), rtol=0.03
    )


def test_task_set_determinism() -> None:
    source = constant_source()
    for image_type in ("merged", "array"):
        a = make_task_set(source, "c3", image_type, seed=7)
        b = make_task_set(source, "c3", image_type, seed=7)
        c = make_task_set(source, "c3", image_type, seed=8)
        assert torch.equal(a.images, b.images) and torch.equal(a.contents, b.contents)
        assert not torch.equal(a.contents, c.contents)
    noisy = [make_task_set(source, "c3", "noise", 5, 5, seed=1, snr=1.0).images for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1])


def test_task_set_records_split_and_defaults() -> None:
    task = make_task_set(constant_source(split="train"), "c0")
    assert task.split == "train"
    assert task.image_type == "merged" and task.n_pos == 75 and task.n_neg == 75
    assert task.seed == 0 and task.snr is None


def test_task_set_errors() -> None:
    source = constant_source()
    with pytest.raises(CategoryError, match="c0, c1"):
        make_task_set(source, "zebra")
    with pytest.raises(ConfigError, match="standard, merged, array, noise"):
        make_task_set(source, "c0", "mosaic")
    with pytest.raises(ConfigError, match="n_pos"):
        make_task_set(source, "c0", n_pos=0)
    with pytest.raises(ConfigError, match="n_neg"):
        make_task_set(source, "c0", n_neg=-3)
    with pytest.raises(ConfigError, match="snr"):
        make_task_set(source, "c0", "noise")
    # a shared sweep setting: snr is ignored for image types other than noise
    assert make_task_set(source, "c0", "merged", 2, 2, snr=1.0).snr is None
    with pytest.raises(ConfigError, match="positive number"):
        make_task_set(source, "c0", "noise", snr="loud")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="positive"):
        make_task_set(source, "c0", "noise", snr=0.0)
    without_c4 = source.subset(torch.nonzero(source.labels != 4).squeeze(1))
    with pytest.raises(DataError, match="'c4' has no images"):
        make_task_set(without_c4, "c4")
    # a category without images is left out of the distractors
    task = make_task_set(without_c4, "c0", "array", n_pos=30, n_neg=30)
    assert not torch.any(task.contents == 4)
    four = source.subset(torch.nonzero(source.labels < 4).squeeze(1))
    with pytest.raises(DataError, match="4 distinct non-target categories"):
        make_task_set(four, "c0", "array")
    two = source.subset(torch.nonzero(source.labels < 2).squeeze(1))
    with pytest.raises(DataError, match="2 distinct non-target categories"):
        make_task_set(two, "c0", "merged")
    assert make_task_set(two, "c0", "standard", 3, 3).n_neg == 3


def test_make_task_sets() -> None:
    source = constant_source()
    sets = make_task_sets(source, ["c1", 3], "standard", n_pos=4, n_neg=4, seed=2)
    assert list(sets) == ["c1", "c3"]
    single = make_task_set(source, 3, "standard", n_pos=4, n_neg=4, seed=2)
    assert torch.equal(sets["c3"].images, single.images)
    assert len(make_task_sets(source, image_type="standard", n_pos=2, n_neg=2)) == N_CATEGORIES
    with pytest.raises(CategoryError):
        make_task_sets(source, ["c1", "nope"])


@pytest.mark.skipif(not HAVE_REAL, reason="Fashion-MNIST is not installed in /usr/share/datasets")
def test_fashion_mnist_array_task() -> None:
    test = load_fashion_mnist("test", data_dir=REAL_DIR)
    task = make_task_set(test, "bag", "array", seed=0)
    assert task.images.shape == (150, 1, 56, 56)
    assert task.split == "test" and task.target_name == "Bag"
    assert torch.all((task.contents == 8).any(dim=1) == task.is_target)


# --- image folders brought to the model's input ------------------------------------------------


def test_folder_geometry_follows_the_model_unless_data_says_otherwise():
    from bioattn.experiments.config import DataSection
    from bioattn.experiments.prepare import folder_geometry
    from bioattn.models.zoo import build_network
    from tests.conftest import make_tiny_network

    folder = {"kind": "image-folder", "path": "x"}
    grey_any_size = make_tiny_network()  # 1 input channel, any size
    assert folder_geometry(DataSection(**folder), grey_any_size) == (None, None, True)
    assert folder_geometry(DataSection(**folder, size=20), grey_any_size) == (20, 23, True)
    assert folder_geometry(DataSection(**folder, size=20, resize=20), grey_any_size)[1] == 20
    alexnet = build_network("alexnet")  # 3 channels, 224 px
    assert folder_geometry(DataSection(**folder), alexnet) == (224, 256, False)
    assert folder_geometry(DataSection(**folder, channels=1), alexnet) == (224, 256, True)
    with pytest.raises(ConfigError, match="channels = 3 but model 'tiny' takes 1-channel"):
        folder_geometry(DataSection(**folder, channels=3), grey_any_size)
    with pytest.raises(ConfigError, match="channels must be 1"):
        DataSection(**folder, channels=2)


def test_a_grey_folder_loads_at_its_own_size_and_upscaling_is_announced(tmp_path):
    from bioattn.experiments.config import DataSection
    from bioattn.experiments.prepare import load_images
    from tests.conftest import make_tiny_network

    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(
                    tmp_path / split / name / f"{i}.png"
                )
    data = DataSection(kind="image-folder", path=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no upscaling at the images' own size
        train, _test = load_images(data, make_tiny_network())
    assert train.images.shape == (4, 1, 28, 28)
    with pytest.warns(UserWarning, match=r"4 of 4 images .* upscaled \(e.g. 0.png: 28x28"):
        load_images(DataSection(kind="image-folder", path=str(tmp_path), size=56), None)

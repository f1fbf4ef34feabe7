"""Data: image folders, embedded images, shared paths, noise."""

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from invprox.data import (
    EMBEDDED_SPLITS,
    EmbeddedPatches,
    ImageFolder,
    NoisyPairs,
    add_gaussian_noise,
    dataset_path,
    embedded_images,
    load_image,
    make_dataset,
    random_patches,
    shared_data_dir,
)
from invprox.data import embedded as embedded_mod


def _save(path, h=40, w=50, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 4 if mode == "RGBA" else 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    _save(tmp_path / "a.png", 40, 50, "RGB", 0)
    _save(tmp_path / "b.JPG", 64, 48, "RGB", 1)
    _save(tmp_path / "c.png", 30, 30, "L", 2)
    _save(tmp_path / "d.png", 33, 35, "RGBA", 3)
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / "e.gif", 20, 20, "L", 4)  # extension not in the list: ignored
    return tmp_path


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_shapes_and_range(folder, channels):
    ds = ImageFolder(folder, size=32, channels=channels)
    assert [p.name for p in ds.paths] == ["a.png", "b.JPG", "c.png", "d.png"]
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (channels, 32, 32) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_channel_conversions(folder):
    gray = ImageFolder(folder, size=None, channels=3)[2]
    assert gray.shape == (3, 30, 30)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    lum = load_image(folder / "a.png", channels=1)
    ref = np.asarray(Image.open(folder / "a.png").convert("L"), dtype=np.float32) / 255.0
    assert lum.shape == (1, 40, 50)
    assert np.abs(lum[0].numpy() - ref).max() <= 1.0 / 255.0 + 1e-6


def test_center_crop_and_resize_modes(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 10:30] = 255  # the centred 20x20 square is white
    Image.fromarray(arr, "L").save(tmp_path / "x.png")
    crop = ImageFolder(tmp_path, size=20, channels=1)[0]
    assert torch.all(crop == 1.0)
    whole = ImageFolder(tmp_path, size=20, channels=1, resize="resize")[0]
    assert float(whole[0, :, 0].max()) < 0.1 and float(whole[0, :, 10].min()) > 0.9
    native = ImageFolder(tmp_path, size=None, channels=1)[0]
    assert native.shape == (1, 20, 40)


def test_sixteen_bit(tmp_path):
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png", channels=1)
    assert torch.allclose(x[0], torch.from_numpy(arr.astype(np.float32) / 65535.0))


def test_folder_errors_name_the_culprit(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty.*\.png"):
        ImageFolder(empty)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path, channels=2)


def test_corrupt_files(tmp_path):
    _save(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"definitely not a png")
    _save(tmp_path / "full.png", 64, 64)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "full.png").unlink()
    ds = ImageFolder(tmp_path, size=16)
    names = [p.name for p in ds.paths]
    with pytest.raises(ValueError, match="garbage.png"):
        ds[names.index("garbage.png")]
    with pytest.raises(ValueError, match="truncated.png"):
        ds[names.index("truncated.png")]
    assert ds[names.index("good.png")].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"(?s)2 of 3.*garbage\.png.*truncated\.png"):
        ds.verify()
    assert sorted(p.name for p, _ in ds.verify(raise_on_error=False)) == [
        "garbage.png",
        "truncated.png",
    ]


def test_recursive_and_cache(tmp_path):
    _save(tmp_path / "top.png")
    (tmp_path / "sub").mkdir()
    _save(tmp_path / "sub" / "deep.png")
    assert len(ImageFolder(tmp_path)) == 1
    ds = ImageFolder(tmp_path, size=8, recursive=True, cache=True)
    assert len(ds) == 2
    x = ds[0]
    x.zero_()  # must not reach the cached copy
    assert float(ds[0].abs().sum()) > 0
    assert ds.load_all().shape == (2, 3, 8, 8)


def test_random_patches():
    imgs = [torch.rand(1, 50, 60), torch.rand(1, 40, 40)]
    a = random_patches(imgs, 16, 10, generator=torch.Generator().manual_seed(0))
    b = random_patches(imgs, 16, 10, generator=torch.Generator().manual_seed(0), augment=False)
    assert a.shape == (10, 1, 16, 16) and torch.equal(a, b)
    c = random_patches(torch.rand(3, 3, 20, 20), 20, 4, torch.Generator().manual_seed(1), True)
    assert c.shape == (4, 3, 20, 20)
    with pytest.raises(ValueError, match="image 1"):
        random_patches([torch.rand(1, 30, 30), torch.rand(1, 10, 30)], 16, 2)


def test_embedded_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("embedded data tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    embedded_mod._load.cache_clear()
    rgb = embedded_images(channels=3)
    gray = embedded_images(channels=1, split="val")
    assert len(rgb) == len(EMBEDDED_SPLITS["train"]) + len(EMBEDDED_SPLITS["val"]) >= 12
    assert all(x.ndim == 3 and x.shape[0] == 3 and min(x.shape[1:]) >= 128 for x in rgb)
    assert len(gray) == 3 and all(x.shape[0] == 1 for x in gray)
    assert not set(EMBEDDED_SPLITS["train"]) & set(EMBEDDED_SPLITS["val"])


def test_embedded_patches_deterministic_and_disjoint():
    tr = EmbeddedPatches(size=24, channels=3, n=64, split="train", seed=3)
    tr2 = EmbeddedPatches(size=24, channels=3, n=64, split="train", seed=3)
    other = EmbeddedPatches(size=24, channels=3, n=64, split="train", seed=4)
    va = EmbeddedPatches(size=24, channels=1, n=32, split="val", seed=3)
    assert len(tr) == 64 and tr[0].shape == (3, 24, 24) and va[5].shape == (1, 24, 24)
    assert all(torch.equal(tr[i], tr2[i]) for i in range(64))
    assert not all(torch.equal(tr[i], other[i]) for i in range(64))
    src_tr = {tr.source(i) for i in range(len(tr))}
    src_va = {va.source(i) for i in range(len(va))}
    assert src_va <= set(EMBEDDED_SPLITS["val"]) and src_tr <= set(EMBEDDED_SPLITS["train"])
    assert len(src_tr) > 5
    x = torch.stack([tr[i] for i in range(64)])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    with pytest.raises(ValueError, match="split"):
        EmbeddedPatches(split="test")


def test_paths_and_make_dataset(tmp_path, monkeypatch):
    (tmp_path / "faces" / "train").mkdir(parents=True)
    _save(tmp_path / "faces" / "train" / "0.png", 70, 70)
    _save(tmp_path / "faces" / "train" / "1.png", 70, 90)
    monkeypatch.setenv("INVPROX_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    assert dataset_path("faces/train") == tmp_path.resolve() / "faces" / "train"
    ds = make_dataset("faces", size=32, channels=1, split="train")
    assert isinstance(ds, ImageFolder) and len(ds) == 2 and ds[1].shape == (1, 32, 32)
    direct = make_dataset(str(tmp_path / "faces" / "train"), size=16)
    assert direct[0].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="faces/val"):
        dataset_path("faces/val")
    with pytest.raises(FileNotFoundError, match="no_such_set"):
        make_dataset("no_such_set")
    with pytest.raises(ValueError, match="relative"):
        dataset_path("../etc")
    emb = make_dataset("embedded", size=16, channels=3, split="val", n=4)
    assert isinstance(emb, EmbeddedPatches) and emb[3].shape == (3, 16, 16)
    monkeypatch.setenv("INVPROX_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="INVPROX_DATA"):
        shared_data_dir()


def test_shared_celeba64_val(monkeypatch):
    monkeypatch.delenv("INVPROX_DATA", raising=False)
    try:
        folder = dataset_path("celeba64/val")
    except FileNotFoundError:
        pytest.skip("shared data (../shared/data/celeba64/val) not present")
    ds = ImageFolder(folder, size=64, channels=3)
    assert len(ds) > 3
    for i in range(3):
        x = ds[i]
        assert x.shape == (3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_add_gaussian_noise():
    x = torch.ones(4, 1, 16, 16)
    a = add_gaussian_noise(x, 0.5, generator=torch.Generator().manual_seed(0))
    b = add_gaussian_noise(x, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and float(a.max()) > 1.0  # not clipped
    assert abs(float((a - x).std()) - 0.5) < 0.05
    per = add_gaussian_noise(x, torch.tensor([0.0, 0.1, 0.2, 0.3]))
    assert torch.equal(per[0], x[0]) and not torch.equal(per[1], x[1])
    with pytest.raises(ValueError, match="non-negative"):
        add_gaussian_noise(x, -1.0)
    with pytest.raises(TypeError):
        add_gaussian_noise(torch.ones(2, dtype=torch.int64), 0.1)


def test_noisy_pairs():
    clean = torch.rand(5, 3, 8, 8)
    val = NoisyPairs(list(clean), sigma=0.1, seed=7)
    n0, c0 = val[0]
    assert torch.equal(c0, clean[0]) and torch.equal(n0, val[0][0])
    assert torch.equal(val[3][0], NoisyPairs(list(clean), 0.1, seed=7)[3][0])
    assert not torch.equal(val[1][0] - clean[1], n0 - c0)
    assert not torch.equal(NoisyPairs(list(clean), 0.1, seed=8)[0][0], n0)
    train = NoisyPairs(list(clean), sigma=0.1, fixed=False)
    torch.manual_seed(0)
    first = train[0][0]
    assert not torch.equal(first, train[0][0])
    torch.manual_seed(0)
    assert torch.equal(first, train[0][0])
    blind = NoisyPairs(list(clean), sigma=(0.05, 0.2), return_sigma=True)
    noisy, c, s = blind[2]
    assert 0.05 <= float(s) <= 0.2 and noisy.shape == c.shape
    with pytest.raises(ValueError):
        NoisyPairs(list(clean), sigma=(0.3, 0.1))


def test_data_folder_comes_from_the_caller_not_the_checkout(tmp_path, monkeypatch):
    """Without INVPROX_DATA the folder is found from the working directory only, wherever the package is."""
    monkeypatch.delenv("INVPROX_DATA", raising=False)
    work = tmp_path / "elsewhere" / "project"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(FileNotFoundError, match="INVPROX_DATA"):
        shared_data_dir()
    (tmp_path / "elsewhere" / "shared" / "data").mkdir(parents=True)
    assert shared_data_dir() == (tmp_path / "elsewhere" / "shared" / "data").resolve()

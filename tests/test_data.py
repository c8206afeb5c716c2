"""Data loaders on small stand-in files; the network is never touched."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothgeo.data import datasets as data
from smoothgeo.data import fashion


pytestmark = pytest.mark.usefixtures("no_network")   # tests/conftest.py


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None) -> None:
    array = np.asarray(array, dtype=np.uint8)
    header = magic or bytes([0, 0, 8, array.ndim])
    header += np.asarray(array.shape, dtype=">i4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def fake_fashion(folder: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = np.arange(n, dtype=np.uint8) % 10
        img_name, lab_name = fashion.FASHION_FILES[split]
        write_idx(folder / img_name, images)
        write_idx(folder / lab_name, labels)
        out[split] = (images, labels)
    return out


def test_fashion_standin_shapes_range_labels(tmp_path):
    truth = fake_fashion(tmp_path / "fashion-mnist")
    for split, (images, labels) in truth.items():
        ds = data.load_dataset("fashion_mnist", split, root=tmp_path, download=False, search_dirs=[])
        assert len(ds) == len(images)
        x, y = ds[0]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        xs, ys = data.load_tensors("fashion_mnist", split, root=tmp_path, download=False, search_dirs=[])
        assert xs.shape == (len(images), 1, 28, 28) and ys.dtype == torch.int64
        assert torch.equal(ys, torch.from_numpy(labels.astype(np.int64)))
        assert torch.allclose(xs[:, 0] * 255, torch.from_numpy(images).float())


def test_fashion_found_in_search_dir(tmp_path):
    fake_fashion(tmp_path / "elsewhere")
    x, y = data.load_tensors("fashion_mnist", "train", root=tmp_path / "root", download=False,
                             search_dirs=[tmp_path / "nothing", tmp_path / "elsewhere"])
    assert x.shape == (5, 1, 28, 28)


def test_fashion_env_search_dirs(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "env")
    monkeypatch.setenv("SMOOTHGEO_DATA_DIRS", str(tmp_path / "env"))
    monkeypatch.setattr(fashion, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    assert len(data.load_dataset("fashion_mnist", "test", root=tmp_path / "root", download=False)) == 3


def test_fashion_bad_magic_names_file(tmp_path):
    folder = tmp_path / "fashion-mnist"
    fake_fashion(folder)
    bad = folder / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((5, 28, 28)), magic=b"\x00\x00\x08\x01")  # says 1-D labels, not images
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*magic"):
        data.load_dataset("fashion_mnist", "train", root=tmp_path, download=False, search_dirs=[])


def test_fashion_corrupt_gzip_and_truncated(tmp_path):
    notgz = tmp_path / "a.gz"
    notgz.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="a.gz.*gzip"):
        fashion.read_idx(notgz)
    short = tmp_path / "b.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + np.asarray([5, 28, 28], ">i4").tobytes() + b"\x00" * 100)
    with pytest.raises(ValueError, match="b.gz.*holds 100 bytes"):
        fashion.read_idx(short, ndim=3)


def test_fashion_missing_lists_every_place(tmp_path):
    places = [tmp_path / "one", tmp_path / "two"]
    (tmp_path / "two").mkdir()
    for download in (False, None):  # None tries the (disabled) network and reports why it failed
        with pytest.raises(FileNotFoundError) as err:
            data.load_dataset("fashion_mnist", "train", root=tmp_path / "root", download=download,
                              search_dirs=places)
        msg = str(err.value)
        for place in [tmp_path / "root" / "fashion-mnist", *places]:
            assert str(place) in msg
        assert "apt-get install dataset-fashion-mnist" in msg and fashion.FASHION_URL in msg
    assert "network disabled in tests" in msg


def test_offline_env_skips_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHGEO_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not attempted"):
        data.load_dataset("fashion_mnist", "train", root=tmp_path, search_dirs=[])


def test_load_tensors_limit_and_seed(tmp_path):
    fake_fashion(tmp_path / "fashion-mnist", n_train=20)
    kw = dict(root=tmp_path, download=False, search_dirs=[])
    x_all, y_all = data.load_tensors("fashion_mnist", "train", **kw)
    x, y = data.load_tensors("fashion_mnist", "train", limit=4, **kw)
    assert torch.equal(x, x_all[:4]) and torch.equal(y, y_all[:4])
    a = data.load_tensors("fashion_mnist", "train", limit=6, seed=3, **kw)
    b = data.load_tensors("fashion_mnist", "train", limit=6, seed=3, **kw)
    c = data.load_tensors("fashion_mnist", "train", limit=6, seed=4, **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert len(data.load_tensors("fashion_mnist", "train", limit=100, **kw)[1]) == 20
    with pytest.raises(ValueError, match="limit"):
        data.load_tensors("fashion_mnist", "train", limit=0, **kw)


def test_prepare_copies_atomically(tmp_path, capsys, monkeypatch):
    src = tmp_path / "debian"
    fake_fashion(src)
    root = tmp_path / "raw"
    # an interrupted copy leaves neither a partial file nor a temporary one behind
    def broken_copy(a, b):
        Path(b).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(fashion.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        data.prepare("fashion_mnist", root=root, download=False, search_dirs=[src])
    assert list((root / "fashion-mnist").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(fashion, "_fetch", lambda *a: pytest.fail("no download expected"))
    folder = data.prepare("fashion_mnist", root=root, download=False, search_dirs=[src])
    assert folder == root / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(fashion._ALL_FASHION)
    for f in fashion._ALL_FASHION:
        assert (folder / f).read_bytes() == (src / f).read_bytes()
    out = capsys.readouterr().out
    assert f"found the four IDX files in {src}" in out and "copied" in out
    data.prepare("fashion_mnist", root=root, download=False, search_dirs=[])  # now found under root
    assert f"found the four IDX files in {folder}" in capsys.readouterr().out


def write_cifar_batch(path: Path, images_hwc: np.ndarray, labels) -> None:
    flat = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), 3072)  # R plane, G plane, B plane
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({b"data": flat.astype(np.uint8), b"labels": list(labels)}, fh)


def test_cifar_standin_channel_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        imgs = np.zeros((2, 32, 32, 3), np.uint8)
        imgs[0, 3, 5] = (255, 0, 0)  # a red pixel at row 3, column 5
        write_cifar_batch(folder / f"data_batch_{i}", imgs, [i, 9])
    test_imgs = np.zeros((3, 32, 32, 3), np.uint8)
    test_imgs[1, 31, 0] = (0, 0, 255)  # blue, bottom-left
    write_cifar_batch(folder / "test_batch", test_imgs, [7, 8, 9])
    x, y = data.load_tensors("cifar10", "train", root=tmp_path, download=False)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
    assert x[0, :, 3, 5].tolist() == [1.0, 0.0, 0.0] and x[0].sum() == 1.0
    ds = data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    img, lab = ds[1]
    assert img[:, 31, 0].tolist() == [0.0, 0.0, 1.0] and lab.item() == 8


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*prepare cifar10"):
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="network disabled"):
        data.load_dataset("cifar10", "test", root=tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="test_batch"):
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_flowers_standin_splits(tmp_path):
    from PIL import Image
    from scipy.io import savemat

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for i, size in zip(range(1, 4), [(40, 30), (30, 50), (64, 64)]):
        Image.new("RGB", size, (200, 100, 50)).save(folder / "jpg" / f"image_{i:05d}.jpg")
    savemat(folder / "imagelabels.mat", {"labels": np.array([[5, 1, 102]])})
    savemat(folder / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2]]),
                                   "tstid": np.array([[3]])})
    expected = {"train": [4, 101], "val": [0], "test": [101]}
    for split, labels in expected.items():
        x, y = data.load_tensors("flowers102", split, root=tmp_path, download=False, image_size=16)
        assert x.shape == (len(labels), 3, 16, 16) and y.tolist() == labels and y.dtype == torch.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
    x, _ = data.load_dataset("flowers102", "train", root=tmp_path, download=False)[0]
    assert x.shape == (3, 224, 224)
    assert abs(x[0].mean().item() - 200 / 255) < 0.03


def test_imagenet_standin_and_missing(tmp_path):
    from PIL import Image

    folder = tmp_path / "imagenet" / "val"
    for wnid, n in (("n02", 2), ("n01", 1)):
        (folder / wnid).mkdir(parents=True)
        for k in range(n):
            Image.new("L", (70, 50), 128).save(folder / wnid / f"img{k}.JPEG")
    (folder / "n01" / "README.txt").write_text("not an image")
    ds = data.load_dataset("imagenet", "val", root=tmp_path, image_size=32)
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 1]
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.int64
    with pytest.raises(FileNotFoundError, match=r"imagenet/val.*ImageFolder layout.*licence"):
        data.load_dataset("imagenet", "test", root=tmp_path / "none")
    with pytest.raises(ValueError, match="split 'train'"):
        data.load_dataset("imagenet", "train", root=tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.dataset_info("mnist")
    with pytest.raises(ValueError, match="split 'val' is not available for fashion_mnist"):
        data.load_dataset("fashion_mnist", "val")
    with pytest.raises(ValueError, match="image_size"):
        data.load_dataset("cifar10", "test", image_size=64)
    info = data.dataset_info("cifar10")
    assert (info["num_classes"], info["channels"], info["image_size"]) == (10, 3, 32)
    assert set(data.DATASETS) == {"fashion_mnist", "cifar10", "flowers102", "imagenet"}


@pytest.mark.parametrize("kind", ["moons", "circles"])
def test_toy_2d(kind):
    x, y = data.toy_2d(101, seed=1, kind=kind)
    assert x.shape == (101, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(y.unique().tolist()) == [0, 1] and abs(int(y.sum()) - 50) <= 1
    x2, y2 = data.toy_2d(101, seed=1, kind=kind)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.toy_2d(101, seed=2, kind=kind)[0])
    # the two classes are apart on average: the moons interleave, the circles nest
    if kind == "circles":
        r = x.norm(dim=1)
        assert r[y == 0].mean() > r[y == 1].mean() + 0.3
    else:
        assert x[y == 0, 1].mean() > x[y == 1, 1].mean() + 0.5


def test_real_fashion_mnist_if_installed():
    if not all((fashion.DEBIAN_FASHION_DIR / f).is_file() for f in fashion._ALL_FASHION):
        pytest.skip(f"{fashion.DEBIAN_FASHION_DIR} not installed")
    kw = dict(root="/nonexistent-root", download=False, search_dirs=[fashion.DEBIAN_FASHION_DIR])
    train = data.load_dataset("fashion_mnist", "train", **kw)
    x, y = data.load_tensors("fashion_mnist", "test", **kw)
    assert len(train) == 60000 and x.shape == (10000, 1, 28, 28)
    assert y.unique().tolist() == list(range(10)) and (torch.bincount(y) == 1000).all()
    assert 0.0 <= x.min() and x.max() <= 1.0


class _RunsShell:
    """Pickles into a call of os.system (what a crafted CIFAR batch could hold)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_reader_never_runs_code_from_a_crafted_batch(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    crafted = {b"data": _RunsShell(marker), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(crafted, protocol=protocol))
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load global (posix|os)\.system"):
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_reader_reads_real_batch_layout(tmp_path, protocol):
    """The original batches (bytes keys, list labels, file names, uint8 array) pass the restricted unpickler."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 9],
             b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251,
             b"filenames": [b"a.png", b"b.png"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = data.load_tensors("cifar10", "test", root=tmp_path, download=False)
    assert y.tolist() == [3, 9] and x.shape == (2, 3, 32, 32)


def test_cifar_labels_out_of_range(tmp_path):
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.zeros((2, 32, 32, 3), np.uint8), [0, 10])
    with pytest.raises(ValueError, match="labels are 0..9"):
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_copied_files_get_ordinary_permissions(tmp_path):
    import os
    src = tmp_path / "src"
    for split, (img, lab) in fashion.FASHION_FILES.items():
        write_idx(src / img, np.zeros((2, 28, 28)))
        write_idx(src / lab, np.zeros(2))
    old = os.umask(0o022)
    try:
        folder = data.prepare("fashion_mnist", root=tmp_path / "raw", download=False, search_dirs=[src])
    finally:
        os.umask(old)
    modes = {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert modes == {"0o644"}
    assert not list(folder.glob("*.smoothgeo-tmp"))

"""Your own data: folder:PATH, npz:PATH and csv:PATH through load_dataset, and `diffusekit train` on them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffusekit.data import dataset_options, load_dataset
from diffusekit.data import user as U


def _png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def _solid(h: int, w: int, colour) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


# ------------------------------------------------------------------------------------------ folders


def test_folder_pixels_scale_exactly_and_the_data_is_memory_mapped(tmp_path, cache):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (6, 5, 3)) for _ in range(4)]
    for i, im in enumerate(images):
        _png(tmp_path / "imgs" / f"{i:02d}.png", im)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    d = load_dataset(f"folder:{tmp_path / 'imgs'}", cache_dir=cache)
    assert d.x.shape == (4, 3, 6, 5) and d.x.dtype == torch.float32 and d.y is None
    expected = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2)).float() / 127.5 - 1.0
    assert torch.equal(d.x, expected)  # p / 127.5 - 1, sorted file order
    assert d.info["value_range"] == (-1.0, 1.0) and d.info["memory_mapped"]
    if _mapped_files():  # the tensor's memory is a map of the cache file, not a copy
        assert d.info["cache_file"] in _mapped_files()
    assert load_dataset(f"folder:{tmp_path / 'imgs'}", n=2, cache_dir=cache).x.shape[0] == 2


def test_class_subfolders_give_labels_and_names(tmp_path, cache):
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(3):
            _png(tmp_path / "pets" / cls / f"{i}.png", _solid(4, 4, colour))
    d = load_dataset(f"folder:{tmp_path / 'pets'}", cache_dir=cache, grey=False)
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.info["num_classes"] == 2 and d.info["class_names"] == ["cat", "dog"]
    assert torch.all(d.x[:3, 0] == 1.0) and torch.all(d.x[3:, 2] == 1.0)  # red cats, blue dogs


def test_size_center_crops_then_resizes(tmp_path, cache):
    # 12 wide, 8 high: the centred 8x8 square is green, the 2-pixel side bands red
    wide = _solid(8, 12, (0, 255, 0))
    wide[:, :2] = wide[:, -2:] = (255, 0, 0)
    _png(tmp_path / "mixed" / "a.png", wide)
    _png(tmp_path / "mixed" / "b.png", _solid(6, 6, (0, 0, 255)))
    with pytest.raises(ValueError, match=r"different sizes .*12x8.*--size N"):
        load_dataset(f"folder:{tmp_path / 'mixed'}", cache_dir=cache)
    d = load_dataset(f"folder:{tmp_path / 'mixed'}", size=4, cache_dir=cache)
    assert d.x.shape == (2, 3, 4, 4)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    assert torch.equal(d.x[0], green.expand(3, 4, 4))  # no red left after the centre crop
    grey = load_dataset(f"folder:{tmp_path / 'mixed'}", size=4, grey=True, cache_dir=cache)
    assert grey.x.shape == (2, 1, 4, 4)


def test_unreadable_files_are_skipped_with_a_printed_count(tmp_path, cache, capsys, monkeypatch):
    folder = tmp_path / "some_bad"
    for i in range(3):
        _png(folder / f"{i}.png", _solid(4, 4, (10 * i, 0, 0)))
    (folder / "garbage.png").write_bytes(b"not a png at all")
    good = (folder / "0.png").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[:30])
    d = load_dataset(f"folder:{folder}", cache_dir=cache)
    assert len(d) == 3 and sorted(d.info["skipped"]) == ["garbage.png", "truncated.jpg"]
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err
    # the second load maps the cache (nothing is decoded) and still says what was skipped
    monkeypatch.setattr(U, "_open_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load_dataset(f"folder:{folder}", cache_dir=cache)
    assert torch.equal(again.x, d.x) and "skipped 2 unreadable" in capsys.readouterr().err


def test_folder_errors_are_one_line(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .png/.jpg/.jpeg images"):
        load_dataset(f"folder:{tmp_path / 'empty'}", cache_dir=cache)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"xx")
    with pytest.raises(ValueError, match="none of its 1 image files could be read"):
        load_dataset(f"folder:{tmp_path / 'junk'}", cache_dir=cache)
    with pytest.raises(ValueError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}", cache_dir=cache)
    _png(tmp_path / "both" / "top.png", _solid(4, 4, (0, 0, 0)))
    _png(tmp_path / "both" / "cls" / "in.png", _solid(4, 4, (0, 0, 0)))
    with pytest.raises(ValueError, match="mixes images"):
        load_dataset(f"folder:{tmp_path / 'both'}", cache_dir=cache)
    with pytest.raises(ValueError, match="unknown option 'colour'.*size, grey, cache_dir"):
        load_dataset(f"folder:{tmp_path / 'both'}", colour=True)
    with pytest.raises(ValueError, match="one split"):
        load_dataset(f"folder:{tmp_path / 'both'}", "test")
    assert dataset_options("folder:x") == {"size": None, "grey": False, "cache_dir": None}


# ---------------------------------------------------------------------------------------------- npz


def test_npz_uint8_channels_last_in_small_chunks(tmp_path, cache, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 4])
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    monkeypatch.setattr(U, "CHUNK_BYTES", 100)  # a few rows per read: the streamed path
    with pytest.raises(ValueError, match="looks channels-last"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}", cache_dir=cache)
    d = load_dataset(f"npz:{tmp_path / 'd.npz'}", layout="nhwc", cache_dir=cache)
    assert d.x.shape == (7, 3, 6, 6)
    assert torch.equal(d.x, torch.from_numpy(x.transpose(0, 3, 1, 2)).float() / 127.5 - 1.0)
    assert d.y.tolist() == y.tolist() and d.info["num_classes"] == 5 and d.info["value_range"] == (-1.0, 1.0)


def test_npz_float_rules(tmp_path, cache, capsys):
    v = np.linspace(0, 1, 24, dtype=np.float64).reshape(6, 4)
    np.savez(tmp_path / "v.npz", x=v, extra=np.zeros(2))
    kept = load_dataset(f"npz:{tmp_path / 'v.npz'}", cache_dir=cache)
    assert torch.allclose(kept.x, torch.from_numpy(v).float()) and kept.info["value_range"] is None
    assert "ignored arrays extra" in capsys.readouterr().err
    unit = load_dataset(f"npz:{tmp_path / 'v.npz'}", scale="unit", cache_dir=cache)
    assert torch.allclose(unit.x, torch.from_numpy(2 * v - 1).float())
    np.savez(tmp_path / "big.npz", x=v * 3)
    with pytest.raises(ValueError, match="scale 'unit' needs x in"):
        load_dataset(f"npz:{tmp_path / 'big.npz'}", scale="unit", cache_dir=cache)


@pytest.mark.parametrize("arrays, message", [
    ({"data": np.zeros((3, 2))}, "has no array 'x'"),
    ({"x": np.zeros((3, 2), dtype=np.int32)}, "dtype int32"),
    ({"x": np.zeros(5)}, "has shape"),
    ({"x": np.array([[0.0, np.nan], [1.0, 2.0]])}, "NaN or infinite values"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(2, dtype=np.int64)}, "integer vector of length 3"),
    ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 2])}, "integer vector"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 2])}, ">= 0"),
])
def test_npz_errors(tmp_path, cache, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", cache_dir=cache)


def test_npz_not_a_zip_or_missing(tmp_path, cache):
    (tmp_path / "x.npz").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not an .npz file"):
        load_dataset(f"npz:{tmp_path / 'x.npz'}", cache_dir=cache)
    with pytest.raises(ValueError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}", cache_dir=cache)
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as zf:  # an object array (would need pickle)
        with zf.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    with pytest.raises(ValueError, match="Python objects"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}", cache_dir=cache)


# ---------------------------------------------------------------------------------------------- csv


def test_csv_windows_standardised_with_train_stats(tmp_path, capsys):
    t = np.arange(50)
    a = np.sin(t / 3.0) * 5 + 20
    frame = pd.DataFrame({"time": t, "a": a, "b": np.cos(t / 4.0)})
    frame.loc[7, "a"] = np.nan
    frame.to_csv(tmp_path / "s.csv", index=False)
    spec = f"csv:{tmp_path / 's.csv'}"
    with pytest.raises(ValueError, match="numeric columns time, a, b; choose one"):
        load_dataset(spec)
    d = load_dataset(spec, column="a", window=8, stride=2)
    assert "filled 1 missing value" in capsys.readouterr().err
    filled = a.copy()
    filled[7] = (a[6] + a[8]) / 2
    s = d.info["split_index"]
    assert s == 40 and d.x.shape == ((40 - 8) // 2 + 1, 1, 8)
    assert d.info["mean"] == pytest.approx(filled[:40].mean()) and d.info["std"] == pytest.approx(filled[:40].std())
    raw = d.x * d.info["std"] + d.info["mean"]
    for k in (0, 5, len(d) - 1):
        start = int(d.info["starts"][k])
        assert torch.allclose(raw[k, 0].double(), torch.from_numpy(filled[start:start + 8]), atol=1e-4)
    test = load_dataset(spec, "test", column="a", window=8, stride=2)
    assert int(test.info["starts"][0]) == 40 and test.x.shape == (2, 1, 8)
    two = U.load_frame(frame, column=["a", 2], window=8)
    assert two.x.shape[1] == 2 and two.info["columns"] == ["a", "b"]
    with pytest.raises(ValueError, match="no column 'c'"):
        U.load_frame(frame, column="c")
    with pytest.raises(ValueError, match="is constant"):
        U.load_frame(pd.DataFrame({"c": np.ones(20)}), window=4)


# ------------------------------------------------------------------------------------------ the CLI


def test_train_cli_on_a_class_folder_then_sample(tmp_path, monkeypatch):
    """The issue's "done when": `diffusekit train --data folder:PATH --backbone diffusers-unet2d` (the UNet when
    the diffusers backbone is not registered), class subfolders as labels, accumulation and channels-last."""
    from diffusekit.cli import main
    from diffusekit.nets import NETS

    backbone = "diffusers-unet2d" if "diffusers_unet2d" in NETS else "unet"
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        for i in range(8):
            _png(tmp_path / "faces" / cls / (f"{i}.jpg" if i % 2 else f"{i}.png"), rng.integers(0, 256, (10, 12, 3)))
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{tmp_path / 'faces'}", "--size", "8", "--conditional", "--steps", "2",
                 "--batch-size", "8", "--grad-accum-steps", "2", "--backbone", backbone, "--channels-last",
                 "--out", str(out), "--no-progress"]) == 0
    saved = (out / "config.yaml").read_text()
    for line in ("size: 8", "grad_accum_steps: 2", "loss_noise: per_example", "channels_last: true",
                 f"name: {backbone.replace('-', '_')}", "in_channels: 3", "num_classes: 2"):
        assert line in saved
    assert main(["sample", "--model", str(out), "--count", "2", "--steps", "2", "--out", str(tmp_path / "s.npz"),
                 "--no-progress"]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 3, 8, 8)

"""``diffusekit personalize``: a run writes the subject + sample grid; every bad input is one error line."""

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main
from diffusekit.methods.eclipse_data import render_subjects


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """Two held-out subject PNGs: test-split digit instances drawn alone (a 3 and a 7 where available)."""
    folder = tmp_path_factory.mktemp("subjects")
    images = render_subjects([3, 7], [0, 2], [0, 1], "test")  # source indices 3 and 7 of the test digits
    paths = []
    for i, x in enumerate(images):
        arr = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        path = folder / f"s{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    bad = folder / "bad.png"
    bad.write_bytes(b"not a png")
    return paths, str(bad)


def test_personalize_writes_grid_and_refuses_to_overwrite(tmp_path, capsys, subjects):
    paths, _ = subjects
    out = tmp_path / "grid.png"
    argv = ["personalize", "--subject", paths[0], "--subject", paths[1], "--prompt",
            "a thick green 3 on the left and a thin yellow 7 on the right", "--num", "3", "--steps", "4",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.mode == "RGB" and img.width > img.height  # one row of subjects, one of 3 samples
    before = out.read_bytes()
    assert "--overwrite" in _error(capsys, argv)
    assert out.read_bytes() == before


@pytest.mark.parametrize("prompt, n_subjects, bad_image, match", [
    ("a purple 3", 1, False, "'purple' is not in the vocabulary"),
    ("a red 3 on the left and a 7 on the right", 1, False, "2 digit word(s)"),
    ("a red 3", 2, False, "1 digit word(s)"),
    ("a red digit", 1, False, "must name one or two digits"),
    ("a red 3", 1, True, "not a readable image"),
])
def test_personalize_bad_inputs_are_one_error_line(tmp_path, capsys, subjects, prompt, n_subjects, bad_image, match):
    paths, bad = subjects
    given = [bad] if bad_image else paths[:n_subjects]
    argv = ["personalize", "--prompt", prompt, "--out", str(tmp_path / "g.png"), "--no-progress"]
    for p in given:
        argv += ["--subject", p]
    assert match in _error(capsys, argv)
    assert not (tmp_path / "g.png").exists()


def test_personalize_bad_flags(tmp_path, capsys, subjects):
    paths, _ = subjects
    base = ["personalize", "--subject", paths[0], "--prompt", "a red 3", "--no-progress"]
    assert "--num must be >= 1" in _error(capsys, base + ["--out", str(tmp_path / "g.png"), "--num", "0"])
    assert "--out must be a .png" in _error(capsys, base + ["--out", str(tmp_path / "g.jpg")])
    assert "--model must be one of" in _error(capsys, base + ["--out", str(tmp_path / "g.png"), "--model", "zoo:x"])

"""``diffusekit video sample``: writes a GIF (+ PNG contact sheet) from zoo:moving_digits_video, conditions on a first
frame, refuses to overwrite, and ends every bad input in one error line before any model runs."""

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main


def _run(capsys, *argv):
    code = main(["video", "sample", *argv])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def first_frame_png(tmp_path_factory):
    from diffusekit.domains.video.moving_digits import MovingDigitsConfig, moving_digits

    clip = moving_digits(1, seed=3, split="test", config=MovingDigitsConfig(frames=8, canvas=16, digit_size=8))
    path = tmp_path_factory.mktemp("frame") / "first.png"
    Image.fromarray(((clip.videos[0, 0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(path)
    return path


def test_video_sample_writes_gif_and_contact_sheet(tmp_path, capsys, first_frame_png):
    out = tmp_path / "clips.gif"
    code, _ = _run(capsys, "--digit", "3", "--num", "2", "--steps", "4", "--out", str(out), "--no-progress")
    assert code == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 8 and gif.size[0] > gif.size[1]  # two clips side by side, one GIF frame per frame
    with Image.open(out.with_suffix(".png")) as sheet:
        assert sheet.size[0] > sheet.size[1]  # one row per clip, 8 columns
    code, captured = _run(capsys, "--num", "1", "--steps", "2", "--out", str(out))
    assert code != 0 and "--overwrite" in captured.err and captured.err.count("error:") == 1
    code, _ = _run(capsys, "--num", "1", "--steps", "3", "--sampler", "dpm_solver_pp_2m", "--first-frame",
                   str(first_frame_png), "--out", str(out), "--overwrite", "--no-progress")
    assert code == 0


@pytest.mark.parametrize("argv, message", [
    (["--digit", "12"], "--digit must be an integer in [0, 9]"),
    (["--num", "0"], "--num must be in"),
    (["--steps", "0"], "--steps must be in"),
    (["--sampler", "nope"], "--sampler 'nope' is unknown"),
    (["--model", "zoo:digits_unet"], "not a video model"),
    (["--model", "ckpt_dir"], "--model must be zoo:"),
    (["--first-frame", "missing.png"], "no such file"),
    (["--guidance", "-1"], "--guidance must be"),
])
def test_video_sample_bad_inputs_end_in_one_error_line(tmp_path, capsys, argv, message):
    code, captured = _run(capsys, *argv, "--out", str(tmp_path / "x.gif"))
    assert code != 0 and message in captured.err and captured.err.count("error:") == 1
    assert not (tmp_path / "x.gif").exists()


def test_video_sample_wants_a_gif_path(tmp_path, capsys):
    code, captured = _run(capsys, "--out", str(tmp_path / "x.mp4"))
    assert code != 0 and "--out must end in .gif" in captured.err

"""``diffusekit video interpolate``: two frames -> a GIF with K - 1 in-between frames, a clip -> double frame rate,
and every bad input is one error line before any work (nothing overwritten)."""

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main
from diffusekit.domains.video.moving_digits import moving_digits


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _png(frame) -> Image.Image:
    return Image.fromarray(((frame.numpy() + 1) * 127.5).round().astype(np.uint8))


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    clip = moving_digits(1, seed=5, split="test").videos[0, :, 0]  # (8, 24, 24)
    _png(clip[0]).save(folder / "a.png")
    _png(clip[2]).save(folder / "b.png")
    _png(clip[2]).resize((48, 48), Image.NEAREST).save(folder / "b48.png")  # square, other size: resized
    imgs = [_png(clip[i]) for i in (0, 2, 4, 6)]
    imgs[0].save(folder / "clip.gif", save_all=True, append_images=imgs[1:], duration=250, loop=0)
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(folder / "wide.png")
    (folder / "text.png").write_text("not an image")
    return folder, clip


def _gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        out = []
        for k in range(gif.n_frames):
            gif.seek(k)
            out.append(np.asarray(gif.convert("L"), dtype=np.float32) / 127.5 - 1)
        return out


def test_two_frames_to_gif_with_inserted_frames(frames, tmp_path, capsys):
    folder, clip = frames
    out = tmp_path / "x.gif"
    argv = ["video", "interpolate", "--first", str(folder / "a.png"), "--last", str(folder / "b48.png"),
            "--frames", "4", "--steps", "2", "--scale", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    gif = _gif_frames(out)
    assert len(gif) == 5 and gif[0].shape == (24, 24)
    # the end frames are the inputs (up to 8-bit rounding); the 48 x 48 last frame was box-resized back to 24 x 24
    assert np.abs(gif[0] - clip[0].numpy()).max() < 0.01 and np.abs(gif[-1] - clip[2].numpy()).max() < 0.01
    assert all(np.abs(gif[k] - gif[k + 1]).mean() > 0.005 for k in range(4))
    before = out.read_bytes()
    assert "--overwrite" in _error(capsys, argv)
    assert out.read_bytes() == before


def test_clip_input_doubles_the_frame_rate_closer_to_the_truth_than_blending(frames, tmp_path):
    folder, clip = frames
    out = tmp_path / "clip2.gif"
    assert main(["video", "interpolate", "--input", str(folder / "clip.gif"), "--steps", "1", "--scale", "1",
                 "--out", str(out), "--no-progress"]) == 0
    gif = _gif_frames(out)  # input frames 0, 2, 4, 6 -> 7 frames; the inserted ones estimate frames 1, 3, 5
    assert len(gif) == 7
    truth = clip[[1, 3, 5]].numpy()
    inserted = np.stack(gif[1::2])
    blend = (clip[[0, 2, 4]].numpy() + clip[[2, 4, 6]].numpy()) / 2
    err, err_blend = np.abs(inserted - truth).mean(), np.abs(blend - truth).mean()
    assert err < 0.8 * err_blend, (err, err_blend)
    out4 = tmp_path / "clip4.gif"
    assert main(["video", "interpolate", "--input", str(folder / "clip.gif"), "--frames", "4", "--steps", "1",
                 "--out", str(out4), "--no-progress"]) == 0
    with Image.open(out4) as gif4:
        assert gif4.n_frames == 13 and gif4.size == (192, 192)


@pytest.mark.parametrize("extra, match", [
    (["--first", "{d}/missing.png", "--last", "{d}/b.png"], "no such file"),
    (["--first", "{d}/wide.png", "--last", "{d}/b.png"], "give a square image"),
    (["--first", "{d}/text.png", "--last", "{d}/b.png"], "not a readable image"),
    (["--first", "{d}/a.png"], "give --first and --last"),
    (["--input", "{d}/clip.gif", "--first", "{d}/a.png"], "not both"),
    (["--input", "{d}/a.png"], "at least 2 frames"),
    (["--first", "{d}/a.png", "--last", "{d}/b.png", "--frames", "3"], "--frames must be one of 1, 2, 4, 8, 16"),
    (["--first", "{d}/a.png", "--last", "{d}/b.png", "--steps", "0"], "--steps must be in [1, 1000]"),
    (["--first", "{d}/a.png", "--last", "{d}/b.png", "--model", "zoo:digits_unet"], "--model must be one of"),
])
def test_bad_inputs_are_one_error_line(frames, tmp_path, capsys, extra, match):
    folder, _ = frames
    out = tmp_path / "bad.gif"
    message = _error(capsys, ["video", "interpolate", *[e.format(d=folder) for e in extra], "--out", str(out)])
    assert match in message, message
    assert not out.exists()
    assert "must end in .gif" in _error(capsys, ["video", "interpolate", "--first", str(folder / "a.png"), "--last",
                                                 str(folder / "b.png"), "--out", str(tmp_path / "x.png")])

"""Small talking faces (data of Ditto, arXiv 2411.19509): determinism, the renderer moves the right pixels, the
pixel mouth measure reads the mouth, and the true motion follows the speech where it should and not elsewhere."""

import numpy as np
import pytest
import torch

from diffusekit.domains.video.talking_faces import (AUDIO_DIM, EYE_BOX, MOTION_DIM, MOTION_NAMES, MOUTH_BOX,
                                                    PHONEME_CLASSES, mouth_opening_from_frames, phoneme_class,
                                                    render_faces, rest_motion, talking_faces)


@pytest.fixture(scope="module")
def test_talks():
    return talking_faces("test", frames=64)


def _changed_pixels(name: str, value: float) -> torch.Tensor:
    m = rest_motion()
    moved = m.copy()
    moved[MOTION_NAMES.index(name)] = value
    return (render_faces(moved) - render_faces(m)).abs()[0]


def _box_share(diff: torch.Tensor, box) -> float:
    return float(diff[box[0], box[1]].sum() / diff.sum())


def test_renderer_is_deterministic_and_in_range():
    rng = np.random.default_rng(0)
    motion = rng.uniform(-1, 1, (5, MOTION_DIM)).astype(np.float32)
    a, b = render_faces(motion), render_faces(motion)
    assert a.shape == (5, 1, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    with pytest.raises(ValueError, match="values per frame"):
        render_faces(np.zeros((3, 4)))


def test_mouth_parameter_changes_the_mouth_and_blink_the_eyes():
    mouth = _changed_pixels("mouth_open", 1.0)
    blink = _changed_pixels("blink", 1.0)
    assert float(mouth.sum()) > 20 and float(blink.sum()) > 5
    assert _box_share(mouth, MOUTH_BOX) > 0.9, "opening the mouth must change (almost) only the mouth region"
    assert _box_share(blink, EYE_BOX) > 0.9, "a blink must change (almost) only the eye region"
    assert _box_share(blink, MOUTH_BOX) < 0.05 and _box_share(mouth, EYE_BOX) < 0.05
    for pose in ("yaw", "pitch", "roll"):
        moved = _changed_pixels(pose, 1.0)
        assert float(moved.sum()) > float(mouth.sum()) and _box_share(moved, MOUTH_BOX) < 0.5, \
            f"{pose} must move the whole face, not only the mouth"


def test_pixel_mouth_measure_is_monotone_in_the_opening_for_every_pose():
    openings = np.linspace(0, 1, 6)
    rng = np.random.default_rng(1)
    for _ in range(4):
        pose = rng.uniform(-1, 1, 3)
        motion = np.zeros((6, MOTION_DIM), np.float32)
        motion[:, 0] = openings
        motion[:, 4:] = pose
        measure = mouth_opening_from_frames(render_faces(motion))
        assert np.all(np.diff(measure) > 0), f"measure not increasing at pose {pose}: {measure}"


def test_phoneme_classes():
    assert PHONEME_CLASSES[phoneme_class("aI")] == "open_vowel"
    assert PHONEME_CLASSES[phoneme_class("u:")] == "rounded_vowel"
    assert PHONEME_CLASSES[phoneme_class("m")] == "bilabial"
    assert PHONEME_CLASSES[phoneme_class("_")] == "silence"
    assert PHONEME_CLASSES[phoneme_class("k")] == "consonant"


def test_talks_are_deterministic_and_follow_the_speech(test_talks):
    d = test_talks
    again = talking_faces("test", frames=64)
    assert np.array_equal(d.motion, again.motion) and np.array_equal(d.audio, again.audio)
    assert d.motion.shape[1:] == (64, MOTION_DIM) and d.audio.shape[1:] == (64, AUDIO_DIM)
    assert d.waves.shape[1] == 64 * 640 and len(set(d.speaker.tolist())) == 6
    other = talking_faces("test", frames=64, seed=1)
    assert not np.array_equal(d.motion[..., 3:], other.motion[..., 3:]), "blinks and sway must depend on the seed"
    mouth, blink, yaw = (d.motion[..., MOTION_NAMES.index(n)].ravel() for n in ("mouth_open", "blink", "yaw"))
    energy = d.vowel_energy.ravel()
    assert np.corrcoef(mouth, energy)[0, 1] > 0.35, "mouth must follow the voiced energy"
    assert abs(np.corrcoef(blink, energy)[0, 1]) < 0.2 and abs(np.corrcoef(yaw, energy)[0, 1]) < 0.3
    cls = d.phoneme_class.ravel()
    open_mean = mouth[cls == PHONEME_CLASSES.index("open_vowel")].mean()
    closed_mean = mouth[np.isin(cls, [PHONEME_CLASSES.index("silence"), PHONEME_CLASSES.index("bilabial")])].mean()
    assert open_mean > 2 * closed_mean
    frames = d.frames(0)
    measured = mouth_opening_from_frames(frames)
    assert np.corrcoef(measured, d.motion[0, :, 0])[0, 1] > 0.9

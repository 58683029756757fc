"""``diffusekit adapt``: a run writes per-batch JSON and one summary line; every bad flag is one error line."""

import json

import pytest

from diffusekit.cli import main


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_adapt_writes_per_batch_results_and_one_summary_line(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["adapt", "--method", "tent", "--shift", "gaussian_noise", "--severity", "5", "--batch-size", "100",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tent on single gaussian_noise-5 (batch 100): error ")
    result = json.loads(out.read_text())
    assert result["method"] == "tent" and result["images"] == 360
    assert [b["size"] for b in result["batches"]] == [100, 100, 100, 60]
    assert all(b["domain"] == "gaussian_noise-5" for b in result["batches"])
    pooled = sum(b["error"] * b["count"] for b in result["batches"]) / 360
    assert result["error"] == pytest.approx(pooled)
    before = out.read_bytes()
    assert "--overwrite" in _error(capsys, argv)
    assert out.read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0


def test_adapt_open_set_reports_rejection(tmp_path, capsys):
    out = tmp_path / "open.json"
    assert main(["adapt", "--method", "tent+filter", "--shift", "contrast", "--severity", "3", "--stream",
                 "open-set", "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    assert "unknown rejection AUROC" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["classifier"] == "zoo:digits04_bn_classifier" and 0.0 <= result["rejection_auroc"] <= 1.0
    assert result["unknown_fraction"] == pytest.approx(0.5, abs=0.01)


def test_adapt_continual_cycle(tmp_path, capsys):
    out = tmp_path / "cont.json"
    assert main(["adapt", "--method", "source", "--shift", "contrast,jpeg", "--severity", "2", "--stream",
                 "continual", "--cycles", "2", "--batch-size", "100", "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    domains = [b["domain"] for b in result["batches"]]
    assert domains == ["contrast-2"] * 2 + ["jpeg-2"] * 2 + ["contrast-2"] * 2 + ["jpeg-2"] * 2


@pytest.mark.parametrize("extra, match", [
    (["--method", "bogus", "--shift", "contrast", "--severity", "2"], "unknown method 'bogus'"),
    (["--method", "tent", "--shift", "fog", "--severity", "2"], "unknown shift 'fog'"),
    (["--method", "tent", "--shift", "contrast", "--severity", "0"], "--severity must be an integer in 1..5"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--batch-size", "0"], "--batch-size must be"),
    (["--method", "tent", "--shift", "contrast,fog", "--severity", "2", "--stream", "continual"], "unknown shift"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--classifier", "zoo:nope"], "unknown zoo model"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--classifier", "zoo:digits_unet"],
     "not an image classifier with BatchNorm"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--classifier", "zoo:digits_classifier"],
     "not an image classifier with BatchNorm"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--classifier", "zoo:digits04_bn_classifier"],
     "needs 10"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--unknown-fraction", "1.5"],
     "--unknown-fraction must be in [0, 1)"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--limit", "0"], "--limit must be >= 1"),
    (["--method", "tent", "--shift", "contrast", "--severity", "2", "--classifier", "zoo:captions_clip"],
     "zoo:captions_clip is the classifier of --method difftpt only"),
    (["--method", "difftpt", "--shift", "contrast", "--severity", "2", "--stream", "open-set"],
     "use --stream single or sorted"),
    (["--method", "difftpt", "--shift", "contrast", "--severity", "2", "--classifier", "zoo:digits_bn_classifier"],
     "tunes the prompt of zoo:captions_clip"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "r.json"
    assert match in _error(capsys, ["adapt", *extra, "--out", str(out), "--no-progress"])
    assert not out.exists()


def test_missing_method_module_is_one_error_line(tmp_path, capsys, monkeypatch):
    from diffusekit.methods.tta import registry

    monkeypatch.setitem(registry.METHODS, "tent", ("no_such_module", "build", "pretend TENT is not written"))
    assert "not available yet" in _error(capsys, ["adapt", "--method", "tent", "--shift", "contrast", "--severity",
                                                  "2", "--no-progress"])


def test_difftpt_runs_on_the_captioned_digits(tmp_path, capsys):
    from diffusekit.methods.tta.registry import method_status

    reason = method_status("difftpt")
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "d.json"
    assert main(["adapt", "--method", "difftpt", "--shift", "gaussian_noise", "--severity", "3", "--limit", "2",
                 "--batch-size", "2", "--quick", "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["classifier"] == "zoo:captions_clip" and result["images"] == 2 and result["limit"] == 2


def test_classifier_from_a_folder_equals_the_zoo_one(tmp_path, capsys):
    import shutil

    from diffusekit import zoo

    folder = tmp_path / "clf"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(zoo.ASSETS_DIR / f"digits_bn_classifier{suffix}", folder)
    outs = []
    for spec in (str(folder), "zoo:digits_bn_classifier"):
        out = tmp_path / f"{len(outs)}.json"
        assert main(["adapt", "--method", "tent", "--shift", "jpeg", "--severity", "4", "--classifier", spec,
                     "--out", str(out), "--no-progress"]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["batches"] == outs[1]["batches"]
    assert "holds none of" in _error(capsys, ["adapt", "--method", "tent", "--shift", "jpeg", "--severity", "4",
                                              "--classifier", str(tmp_path), "--no-progress"])

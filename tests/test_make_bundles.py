"""bench/make_bundles.py's long-run parts: skipping finished stages, epoch progress lines with an ETA,
and the training facts it records in bundle.json. No Ray: fake run folders and a fake train command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import make_bundles as mb  # noqa: E402  (bench scripts are not an installed package)

XEON = "Intel(R) Xeon(R) Platinum 8480+ (amx_bf16, avx512_bf16, amx_tile)"


def _command(out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "raeflow.cli",
        "train",
        "--data",
        "d",
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        *extra,
    ]


def _record(epoch: int, epochs: int, seconds: float = 100.0, **extra) -> dict:
    return {
        "epoch": epoch,
        "epochs": epochs,
        "val_psnr": 28.0 + epoch / 100,
        "val_ssim": 0.8,
        "images_per_s": 230.6,
        "train_seconds": seconds - 10,
        "epoch_seconds": seconds,
        "train_images": 1000,
        "precision": "bf16",
        "threads": 2,
        **extra,
    }


def _fake_run(
    out: Path, records: list[dict], *, bundle: dict | None = None, partial_line: bool = False
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (out / "metrics.jsonl").write_text(text + ('{"epoch": 9' if partial_line else ""))
    if bundle is not None:
        (out / "model").mkdir()
        (out / "model" / "bundle.json").write_text(json.dumps({"training": bundle}))


def test_a_stage_is_trained_only_with_its_bundle_and_all_its_epochs(tmp_path: Path) -> None:
    bundle = {"cpu": XEON, "device": "cpu"}
    _fake_run(tmp_path / "done", [_record(e, 3) for e in (1, 2, 3)], bundle=bundle, partial_line=True)
    _fake_run(tmp_path / "short", [_record(e, 3) for e in (1, 2)], bundle=bundle)
    _fake_run(tmp_path / "no-bundle", [_record(e, 3) for e in (1, 2, 3)])
    assert mb.is_trained(_command(tmp_path / "done", 3))
    assert not mb.is_trained(_command(tmp_path / "done", 5))  # a larger --epochs continues the run
    assert not mb.is_trained(_command(tmp_path / "short", 3))
    assert not mb.is_trained(_command(tmp_path / "no-bundle", 3))
    assert not mb.is_trained(_command(tmp_path / "never-started", 3))


def test_train_skips_finished_stages_and_reruns_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_run(tmp_path / "first", [_record(e, 2) for e in (1, 2)], bundle={"cpu": XEON, "device": "cpu"})
    _fake_run(tmp_path / "second", [_record(e, 4, seconds=60) for e in (1, 2)])
    first, second = _command(tmp_path / "first", 2), _command(tmp_path / "second", 4)
    ran: list[list[str]] = []
    monkeypatch.setattr(mb, "OUT", tmp_path)
    monkeypatch.setattr(mb, "_has_gpu", lambda: False)
    monkeypatch.setattr(mb, "_run_stage", lambda name, command, log: ran.append(command))
    monkeypatch.setitem(mb.COMMANDS, "fake", [first, second])
    mb.train("fake")
    out = capsys.readouterr().out
    assert "[fake] first: already trained (2 epochs)" in out
    assert "[fake] second: continues from its last checkpoint, epoch 2/4 recorded, ETA 0:02:00" in out
    assert ran == [second]
    monkeypatch.setattr(mb, "_has_gpu", lambda: True)
    ran.clear()
    mb.train("fake")
    assert ran == [[*second, "--gpu"]]


def test_progress_line_has_epoch_psnr_speed_load_elapsed_and_eta() -> None:
    done = [_record(e, 90, seconds=200.0) for e in range(1, 11)]
    fresh = [_record(11, 90, seconds=100.0), _record(12, 90, seconds=110.0, load_average=[2.05, 1.9, 1.5])]
    line = mb.progress_line("denoise-grey", fresh[-1], fresh, 21 * 60 + 10, "patches")
    # 78 epochs left at this process's 105 s per epoch (not the earlier epochs' 200 s)
    assert (
        line
        == "[denoise-grey] epoch 12/90  val 28.12 dB  231 patches/s  load 2.05  elapsed 0:21:10  ETA 2:16:30"
    )
    old = mb.progress_line("mnist", done[-1], done, 5, "images")  # an old record: no load average
    assert old == "[mnist] epoch 10/90  val 28.10 dB  231 images/s  elapsed 0:00:05  ETA 4:26:40"
    last = mb.progress_line("mnist", _record(90, 90), fresh, 60, "images")
    assert "ETA" not in last and last.endswith("elapsed 0:01:00")


def test_run_stage_prints_a_line_per_epoch_and_logs_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mb, "POLL_S", 0.05)
    out = tmp_path / "run"
    out.mkdir()
    records = [json.dumps(_record(e, 3, seconds=1.0)) for e in (1, 2, 3)]
    script = (  # a stand-in for `raeflow train`: an epoch record every 0.2 s, a line of output each
        "import time\n"
        f"for line in {records!r}:\n"
        f"    open({str(out / 'metrics.jsonl')!r}, 'a').write(line + '\\n')\n"
        "    print('epoch done', flush=True)\n"
        "    time.sleep(0.2)\n"
    )
    command = [sys.executable, "-c", script, "--out", str(out), "--patch-size", "64"]
    mb._run_stage("fake", command, tmp_path / "run.log")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[:3]] == [f"[fake] epoch {e}/3" for e in (1, 2, 3)]
    assert "ETA 0:00:02" in lines[0] and "ETA" not in lines[2] and "patches/s" in lines[0]
    assert lines[3].startswith("[fake] run trained in ")
    assert (tmp_path / "run.log").read_text().count("epoch done") == 3
    with pytest.raises(SystemExit, match="failed \\(exit 3\\)"):
        mb._run_stage(
            "fake", [sys.executable, "-c", "raise SystemExit(3)", "--out", str(out)], tmp_path / "x.log"
        )


def test_training_facts_record_each_stage_and_the_machine(tmp_path: Path) -> None:
    old = [_record(e, 2, precision="fp32") for e in (1, 2)]  # before load averages were recorded
    gpu = [
        _record(e, 3, seconds=20.0, load_average=[load, 1.0, 1.0])
        for e, load in ((1, 1.0), (2, 3.0), (3, 2.0))
    ]
    _fake_run(tmp_path / "base", old, bundle={"cpu": "AMD EPYC 7763 64-Core Processor (no native bf16)"})
    _fake_run(tmp_path / "long", gpu, bundle={"cpu": XEON, "device": "NVIDIA H200", "threads": 2})
    facts = mb._training_facts(
        [_command(tmp_path / "base", 2), _command(tmp_path / "long", 3, "--patch-size", "64")]
    )
    base, long = facts["stages"]
    assert facts["command"] == long["command"] and facts["command"].startswith("raeflow train --data d ")
    assert long["command"].endswith("--patch-size 64 --gpu") and not base["command"].endswith("--gpu")
    assert facts["commands"] == [base["command"], long["command"]]
    assert (facts["epochs"], facts["train_images_seen"], facts["wall_seconds"]) == (5, 5000, 260.0)
    assert facts["images_per_s"] == round(5000 / (2 * 90 + 3 * 10), 1)
    assert base | {"command": ""} == {
        "command": "",
        "wall_seconds": 200.0,
        "epochs": 2,
        "train_images_seen": 2000,
        "train_items": "images",
        "train_seconds": 180.0,
        "images_per_s": 11.1,
        "precisions": ["fp32"],
        "threads": [2],
        "cpu": "AMD EPYC 7763 64-Core Processor",
        "amx": False,
        "avx512_bf16": False,
        "device": "cpu",
    }
    assert (long["cpu"], long["amx"], long["avx512_bf16"]) == ("Intel(R) Xeon(R) Platinum 8480+", True, True)
    assert (long["device"], long["gpu"], long["train_items"]) == ("cuda", "NVIDIA H200", "patches")
    assert long["load_average"] == {"max": 3.0, "mean": 2.0}
    assert (
        facts["machine"]
        == "Intel(R) Xeon(R) Platinum 8480+ (AMX, AVX-512-BF16), 2 torch threads, GPU NVIDIA H200"
    )
    assert facts["last_epoch"] == {"epoch": 3, "val_psnr": 28.03, "val_ssim": 0.8}


def test_a_noise_free_rows_infinite_psnr_is_written_as_null_so_bundle_json_stays_strict() -> None:
    row = {
        "psnr": 41.123456,
        "ssim": 0.98,
        "noisy_psnr": float("inf"),
        "seconds_per_image": 0.5,
        "images": 17,
    }
    brief = mb._brief(row)
    assert brief == {
        "psnr": 41.1235,
        "ssim": 0.98,
        "noisy_psnr": None,
        "seconds_per_image": 0.5,
        "images": 17,
    }
    json.loads(json.dumps(brief, allow_nan=False))  # no Infinity token: strict readers accept it

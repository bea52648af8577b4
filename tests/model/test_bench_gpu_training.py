"""The GPU training benchmark's dry run: the real trainer on tiny phantoms on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_gpu_training_dry_run_times_both_stages(tmp_path):
    completed = subprocess.run(
        [sys.executable, "bench/gpu_training.py", "--dry-run", "--threads", "1", "--work-dir", str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["dry_run"] is True
    for stage, steps in ((1, 200_000), (2, 50_000)):
        row = result[f"stage{stage}"]
        # Three steps in the timed second epoch give two step durations.
        assert row["steps_timed"] == 2
        assert 0 < row["median_s"] <= row["max_s"]
        assert row["published_steps"] == steps
        assert row["published_hours"] == row["median_s"] * steps / 3600
    assert (
        result["published_schedule_hours"] == result["stage1"]["published_hours"] + result["stage2"]["published_hours"]
    )
    # The run went through the trainer: both stages' logs and models exist.
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 5
    assert (tmp_path / "run" / "best.safetensors").exists()


def test_gpu_training_rejects_one_iteration():
    completed = subprocess.run(
        [sys.executable, "bench/gpu_training.py", "--dry-run", "--iterations", "1"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "--iterations must be at least 2 to time a step, got 1" in completed.stderr


def test_gpu_training_rejects_used_work_dir(tmp_path):
    (tmp_path / "run").mkdir()
    completed = subprocess.run(
        [sys.executable, "bench/gpu_training.py", "--dry-run", "--work-dir", str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert f"--work-dir {tmp_path} is not empty" in completed.stderr

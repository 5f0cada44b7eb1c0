"""python -m dqn_jax.analyze on a tiny real Breakout run: pictures, videos, MLflow artifacts."""

from __future__ import annotations

import json
import shutil
import time

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from dqn_jax import tracking
from dqn_jax.analyze import command as analyze
from dqn_jax.analyze import pictures
from dqn_jax.analyze.saved_run import SavedRun
from tests.conftest import TINY, client_for, run_app, run_module, tail

PANELS, COLUMNS, EPISODES, VIDEO_STEPS = 6, 4, 2, 40
# Reading an MP4 back starts ffmpeg (fork then exec at once); JAX warns about any fork.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A tiny tracked training run (800 states, 6 learning cycles), then the command on it."""
    root = tmp_path_factory.mktemp("analyze")
    result = run_app([*TINY, "steps=800", "name=pics"], cwd=root)
    assert result.returncode == 0, tail(result)
    run_dir = root / "runs" / "breakout" / "pics"
    status = analyze.main([str(run_dir), f"states={PANELS}", f"columns={COLUMNS}", "memory=200",
                           f"episodes={EPISODES}", f"video_steps={VIDEO_STEPS}", "gif=true"])
    assert status == 0
    summary = json.loads((run_dir / "analysis" / "summary.json").read_text())
    return root, run_dir, summary


def gray(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def test_every_picture_exists_has_its_size_and_is_not_blank(analysed):
    _, run_dir, _ = analysed
    out = run_dir / "analysis"
    # 6 states in 4 columns: 2 rows of 360 x 340 pixel panels under a 50-pixel title
    grid = (4 * 360, 2 * 340 + 50)
    expected = {
        "training-curves.png": (1500, 1000),
        "states-largest-error.png": grid,
        "states-random.png": grid,
        # TINY's network: 4 first-layer filters on 2 input channels, one block of 4 columns
        "conv1-filters.png": (650, round((2 * 1.1 + 0.9) * 100)),
        # the state (2.6 in), then conv 1 (4 channels) and conv 2 (8 channels), one row each
        "conv-outputs.png": (760, round((2.6 + 2 * (0.95 + 0.4)) * 100)),
    }
    for name, size in expected.items():
        image = Image.open(out / name)
        assert image.size == size, name
        assert gray(out / name).var() > 200, f"{name} is blank"


def _slot(image: np.ndarray, index: int) -> np.ndarray:
    """The grid cell of panel ``index`` between the figure's margins and under its title."""
    height, width = image.shape
    rows = -(-PANELS // COLUMNS)
    top, bottom = 50, height - 0.02 * height
    left, right = 0.02 * width, 0.98 * width
    r, c = divmod(index, COLUMNS)
    y0, y1 = top + (bottom - top) * r / rows, top + (bottom - top) * (r + 1) / rows
    x0, x1 = left + (right - left) * c / COLUMNS, left + (right - left) * (c + 1) / COLUMNS
    return image[int(y0) + 2:int(y1) - 2, int(x0) + 2:int(x1) - 2]


def test_states_grids_show_as_many_panels_as_asked_from_the_swept_memory(analysed):
    _, run_dir, summary = analysed
    for name in ("states-largest-error", "states-random"):
        image = gray(run_dir / "analysis" / f"{name}.png")
        for index in range(COLUMNS * -(-PANELS // COLUMNS)):
            cell = _slot(image, index)
            if index < PANELS:
                assert cell.var() > 500, f"{name}: panel {index} is empty"
            else:
                assert cell.min() == 255, f"{name}: slot {index} should be empty"
        records = summary["states"][name]
        assert len(records) == PANELS
        for record in records:  # the sweep's error is |target - estimate of the action taken|
            assert record["error"] == pytest.approx(abs(record["target"] - record["q"][record["action"]]),
                                                    abs=1e-5)
            assert set(record["q"]) == {"NOOP", "FIRE", "RIGHT", "LEFT"}
    largest = [r["error"] for r in summary["states"]["states-largest-error"]]
    assert largest == sorted(largest, reverse=True) and largest[0] > 0
    assert max(r["error"] for r in summary["states"]["states-random"]) <= largest[0]
    assert summary["checkpoint"]["states"] == 800


def test_video_frame_count_equals_the_steps_played(analysed):
    _, _, summary = analysed
    videos = summary["videos"]
    assert len(videos) == EPISODES
    for k, video in enumerate(videos, start=1):
        assert 0 < video["steps"] <= VIDEO_STEPS
        mp4, gif = (f for f in video["files"])
        assert mp4.endswith(f"test-episode-{k}.mp4") and gif.endswith(f"test-episode-{k}.gif")
        reader = imageio.get_reader(mp4)
        assert reader.count_frames() == video["steps"]
        first = reader.get_data(0)
        reader.close()
        assert first.shape == (105 * 4, 80 * 2 * 4 + 240, 3)  # frame | trace | Q-value panel
        assert first[:, 640:].std() > 10, "the Q-value panel is blank"
        with Image.open(gif) as image:
            assert image.n_frames == video["steps"]
            assert image.size == (first.shape[1] // 2, first.shape[0] // 2)


def test_every_file_is_an_artifact_of_the_training_run(analysed):
    root, run_dir, summary = analysed
    client = client_for(root)
    run_id = tracking.read_run_id(run_dir)
    assert summary["mlflow_run_id"] == run_id
    run = client.get_run(run_id)
    assert "mlflow.parentRunId" not in run.data.tags  # the training run, not a test child
    logged = {a.path for a in client.list_artifacts(run_id, "analysis")}
    written = {f"analysis/{p.name}" for p in (run_dir / "analysis").iterdir()}
    assert written == logged
    assert {"analysis/training-curves.png", "analysis/test-episode-1.mp4", "analysis/summary.json"} <= logged


def test_training_curves_draw_the_runs_mlflow_metrics_and_do_without(analysed, tmp_path):
    root, run_dir, _ = analysed
    run = SavedRun(run_dir)
    losses = run.histories(["cycle/loss"])["cycle/loss"]
    cycles = pictures.read_columns(run_dir / "q_values.csv")["states"]
    assert losses[0].tolist() == cycles.tolist() and len(cycles) >= 3  # one per learning cycle
    copy = tmp_path / "runs" / "breakout" / "pics"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "analysis"))
    (copy / "mlflow_run_id").unlink()  # as if the run was not tracked
    untracked = pictures.training_curves(copy)
    tracked = pictures.training_curves(run_dir, tmp_path / "tracked.png")
    assert Image.open(untracked).size == Image.open(tracked).size == (1500, 1000)
    assert not np.array_equal(gray(untracked), gray(tracked))  # the MLflow panels differ
    assert gray(untracked).var() > 200


def test_run_id_finds_the_run_directory(analysed):
    root, run_dir, _ = analysed
    run = SavedRun.from_run_id(tracking.read_run_id(run_dir), f"sqlite:///{root}/mlruns.db")
    assert run.run_dir.resolve() == run_dir.resolve()
    assert run.tracked()


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    result = run_module("dqn_jax.analyze", [str(tmp_path / "nowhere")], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "there is no run directory" in result.stderr
    cases = {
        "colour=red": "unknown option 'colour'",
        "states=-1": "states=-1 is out of range",
        "gif=maybe": "gif='maybe' is not allowed",
        f"run_id=abc tracking_uri=sqlite:///{tmp_path}/none.db": "there is no MLflow store",
        "": "give a run directory",
        str(tmp_path): "has no config.yaml",
    }
    for args, message in cases.items():
        assert analyze.main(args.split()) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)


@pytest.mark.slow
def test_an_mlp_run_gets_its_curves_and_weight_maps(tmp_path):
    """CartPole: vector states, so no states grids or videos; the dense weights as heat maps."""
    result = run_app(["experiment=cartpole", "steps=1500", "memory.size=400", "env.num_envs=4",
                      "network.dense=[16]", "memory.batch_size=32", "schedule.max_epochs.start=1",
                      "schedule.max_epochs.end=1", "test_episodes_after_training=0", "progress=false",
                      "name=mlp"], cwd=tmp_path)
    assert result.returncode == 0, tail(result)
    run_dir = tmp_path / "runs" / "cartpole" / "mlp"
    assert analyze.main([str(run_dir), "memory=64"]) == 0
    out = run_dir / "analysis"
    assert sorted(p.name for p in out.iterdir()) == ["dense-weights.png", "summary.json",
                                                     "training-curves.png"]
    assert Image.open(out / "dense-weights.png").size == (2 * 400, 460)  # 4x16 and 16x2
    client = client_for(tmp_path)
    logged = {a.path for a in client.list_artifacts(tracking.read_run_id(run_dir), "analysis")}
    assert logged == {f"analysis/{p.name}" for p in out.iterdir()}


def test_the_training_loop_hook_draws_at_most_every_interval_and_logs_to_the_run(analysed):
    root, run_dir, _ = analysed
    run_id = tracking.read_run_id(run_dir)
    tracker = tracking.MlflowTracker(f"sqlite:///{root}/mlruns.db", run_id)
    try:
        assert pictures.log_training_curves(tracker, run_dir) is not None  # drawn now
        tracker.flush()  # sent before the file goes
        (run_dir / "analysis" / "training-curves.png").unlink()
        assert pictures.log_training_curves(tracker, run_dir, every_seconds=3600) is None  # too soon
        assert not (run_dir / "analysis" / "training-curves.png").exists()
        time.sleep(1.1)
        path = pictures.log_training_curves(tracker, run_dir, every_seconds=1.0)  # due: drawn
    finally:
        tracker.finish("FINISHED")
    assert path == run_dir / "analysis" / "training-curves.png" and path.is_file()
    assert tracker.failures == 0
    client = client_for(root)
    assert "analysis/training-curves.png" in {a.path for a in client.list_artifacts(run_id, "analysis")}

"""The analysis pictures, as PNG files drawn with matplotlib (no pyplot, no GUI).

* :func:`training_curves`: a run's curves against states processed, from its own
  logs (``rewards.csv``, ``q_values.csv``) and its MLflow metrics (loss, iterations,
  estimation error, control signals); cheap enough to redraw at every checkpoint;
* :func:`states_grid`: states from the replay memory with the frame beside its motion
  trace, the action taken, the reward and the Q-value of every action;
* :func:`conv_filters`, :func:`conv_outputs`, :func:`dense_weights`: inside the network.

Every figure has a fixed size in pixels (no tight bounding box), so a picture's size
says how many panels it holds.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqn_jax.analyze.saved_run import RunError, SavedRun
from dqn_jax.core.schedules import SIGNAL_NAMES, linear_signal

DPI = 100
CURVES_SIZE = (15.0, 10.0)  # inches: 1500 x 1000 pixels
PANEL_SIZE = (3.6, 3.4)  # inches per state panel
TITLE_HEIGHT = 0.5  # inches above a states grid
# Per-cycle metrics only: a few hundred values even for a long run. The per-episode
# epsilon history can hold 50,000 values, which take MLflow seconds to return, so the
# epsilon panel draws the run's schedule from its config instead (the same function).
CURVE_METRICS = ("cycle/loss", "cycle/loss_limit", "cycle/iterations", "cycle/learning_rate",
                 "cycle/max_epochs", "cycle/replay_fraction", "targets/error_mean", "targets/error_max",
                 "q/min", "q/mean", "q/max")  # q/*: DQN's batches (it has no sweep, no q_values.csv)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------- training curves

def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV log's columns as float arrays ({} when the file is missing or empty)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def _signal_from_config(cfg, name: str, states: np.ndarray) -> np.ndarray:
    """A control signal's value at ``states`` from the run's config (a saved run's config
    may predate ``begin``)."""
    sig = getattr(cfg.schedule, name)
    return np.asarray(linear_signal(sig.start, sig.end, sig.span, getattr(sig, "begin", 0))(states), np.float64)


def _no_data(ax, why: str) -> None:
    if ax.texts:  # one note per panel
        return
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _curve(ax, histories, name, label, cfg, states, **style) -> None:
    """A metric from MLflow, else the control signal from the config, else a note."""
    if name in histories:
        x, y = histories[name]
        ax.plot(x, y, label=label, **style)
    elif name.split("/")[-1] in _TUTORIAL_ONLY and _algorithm(cfg) != "hvass":
        _no_data(ax, f"{label}: the tutorial's method only")
    elif cfg is not None and states.size and name.split("/")[-1] in SIGNAL_NAMES:
        grid = np.linspace(0, states.max(), 200)
        ax.plot(grid, _signal_from_config(cfg, name.split("/")[-1], grid),
                label=f"{label} (from config)", **style)
    else:
        _no_data(ax, f"{name}: not in MLflow")


_TUTORIAL_ONLY = ("loss_limit", "max_epochs", "replay_fraction", "error_mean", "error_max")


def _algorithm(cfg) -> str:
    """The run's algorithm (runs from before the algorithm group: the tutorial's)."""
    algorithm = getattr(cfg, "algorithm", None) if cfg is not None else None
    return getattr(algorithm, "name", "hvass") if algorithm is not None else "hvass"


def _log_scale(ax) -> None:
    """A log y axis with plain labels at 1, 2 and 5 and no minor ticks (mathtext labels are slow)."""
    from matplotlib.ticker import LogFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_locator(NullLocator())


def _draw_scores(ax, rewards: dict) -> None:
    if rewards:
        ax.plot(rewards["states"], rewards["reward"], "o", ms=3, alpha=0.5, label="episode score")
        ax.plot(rewards["states"], rewards["mean30"], lw=1.8, label="mean of last 30")
        ax.legend(fontsize=8, loc="upper left")  # "best" searches: slow
    else:
        _no_data(ax, "no episode finished yet")
    ax.set_title("Episode score", y=1.0)


def _draw_q_values(ax, q: dict, histories: dict) -> None:
    if not q and "q/mean" in histories:  # DQN: Q(s, a) of each cycle's batches
        x, mean = histories["q/mean"]
        ax.fill_between(x, histories["q/min"][1], histories["q/max"][1], alpha=0.15, label="min to max")
        ax.plot(x, mean, lw=1.5, label="mean")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title("Q(s, a) of each cycle's batches", y=1.0)
        return
    if q:
        ax.fill_between(q["states"], q["q_min"], q["q_max"], alpha=0.15, label="min to max")
        ax.fill_between(q["states"], q["q_mean"] - q["q_std"], q["q_mean"] + q["q_std"], alpha=0.3,
                        label="mean ± std")
        ax.plot(q["states"], q["q_mean"], lw=1.5, label="mean")
        ax.legend(fontsize=8, loc="upper left")  # "best" searches: slow
    else:
        _no_data(ax, "no learning cycle yet")
    ax.set_title("Q-values after each sweep", y=1.0)


def draw_training_curves(rewards: dict, q: dict, histories: dict, path: Path, title: str,
                         cfg=None) -> Path:
    """The nine panels of :func:`training_curves` from data already read."""
    fig = _figure(*CURVES_SIZE)
    axes = fig.subplots(3, 3, sharex=True).ravel()
    ends = [v["states"].max() for v in (rewards, q) if v] + [h[0].max() for h in histories.values()]
    states = np.array(ends or [0.0])
    _draw_scores(axes[0], rewards)
    _draw_q_values(axes[1], q, histories)
    _curve(axes[2], histories, "targets/error_mean", "mean", cfg, states)
    _curve(axes[2], histories, "targets/error_max", "max", cfg, states, alpha=0.6)
    axes[2].set_title("Estimation error |target - Q|", y=1.0)
    _curve(axes[3], histories, "cycle/loss", "loss", cfg, states)
    _curve(axes[3], histories, "cycle/loss_limit", "loss limit", cfg, states, ls="--")
    _log_scale(axes[3])
    axes[3].set_title("Loss and the loss limit", y=1.0)
    _curve(axes[4], histories, "cycle/iterations", "batches", cfg, states, marker=".")
    axes[4].set_title("Optimisation iterations per cycle", y=1.0)
    for ax, name, label in zip(axes[5:], ("episode/epsilon", "cycle/learning_rate",
                                          "cycle/max_epochs", "cycle/replay_fraction"),
                               ("epsilon", "learning rate", "max epochs", "replay fraction"),
                               strict=True):
        _curve(ax, histories, name, label, cfg, states)
        ax.set_title(f"Control signal: {label}", y=1.0)
    # Titles are placed with y=1.0: matplotlib's automatic placement measures every tick
    # label (a third of the drawing time here).
    for ax in axes:
        if ax.get_yscale() == "linear":  # no offset: "0.9995" reads better than "1e-5+0.9995"
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
        ax.grid(alpha=0.3)
        if ax.get_legend() is None and len(ax.get_lines()) > 1:
            ax.legend(fontsize=8, loc="upper left")  # "best" searches: slow
    from matplotlib.ticker import EngFormatter

    axes[0].xaxis.set_major_formatter(EngFormatter(sep=""))  # shared: 150k, not 150000
    for ax in axes[6:]:
        ax.set_xlabel("states processed")
    fig.suptitle(title)
    # Fixed margins: tight_layout would measure every tick label, the most of the time here.
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.06, top=0.92, wspace=0.18, hspace=0.25)
    return _save(fig, path)


def training_curves(run_dir: str | Path, out: str | Path | None = None, histories=None) -> Path:
    """Draw ``<run_dir>/analysis/training-curves.png`` (or ``out``) from the run's data.

    ``histories`` ({metric: (steps, values)}) skips reading MLflow; by default the
    run's MLflow metrics are read when it was tracked, and whatever is missing is
    drawn from the config (the control signals) or marked as missing. Never raises
    for a missing store: it is safe to call from the training loop.
    """

    run_dir = Path(run_dir)
    cfg = None
    try:
        run = SavedRun(run_dir)
        cfg = run.cfg
        if histories is None:
            histories = run.histories(CURVE_METRICS)
    except (RunError, OSError):
        pass
    except Exception as err:  # the store: a training run must not stop for a picture
        print(f"training curves: MLflow metrics not read ({type(err).__name__}: {err})")
    path = Path(out) if out is not None else run_dir / "analysis" / "training-curves.png"
    title = f"{run_dir.parent.name}/{run_dir.name}: training"
    return draw_training_curves(read_columns(run_dir / "rewards.csv"), read_columns(run_dir / "q_values.csv"),
                                histories or {}, path, title, cfg)


_last_drawn: dict[str, float] = {}  # run directory -> time.monotonic() of its last drawing


def log_training_curves(tracker, run_dir: str | Path, every_seconds: float = 0.0) -> Path | None:
    """Draw the training curves and log them to ``tracker`` under ``analysis/``.

    For the training loop: never raises (a picture must not stop a run); a failure is
    one printed line and None. With ``every_seconds`` it draws only when that long has
    passed since the first call or the last drawing for this run (None otherwise), so a
    run of short cycles does not spend its time on pictures.
    """
    key, now = str(Path(run_dir).resolve()), time.monotonic()
    if every_seconds and now - _last_drawn.setdefault(key, now) < every_seconds:
        return None
    _last_drawn[key] = now
    try:
        path = training_curves(run_dir)
    except Exception as err:
        print(f"dqn_jax: training curves not drawn ({type(err).__name__}: {err})")
        return None
    tracker.log_artifact(path, "analysis")
    return path


# ---------------------------------------------------------------------------- states

@dataclass
class StatePanel:
    """One state from the replay memory and what happened there."""

    state: np.ndarray  # (H, W, C) uint8: frame, motion trace
    action: int
    reward: float
    q: np.ndarray  # (A,) Q-values estimated while acting
    target: float  # the sweep's target for the action taken
    error: float  # |target - q[action]|
    end_life: bool
    end_episode: bool
    index: tuple[int, int]  # (row, game) in the memory


def strip(state: np.ndarray) -> np.ndarray:
    """The state's channels side by side with a white separator, for imshow."""
    gap = np.full((state.shape[0], 2), 255, np.uint8)
    parts = []
    for c in range(state.shape[-1]):
        parts += [state[..., c], gap]
    return np.concatenate(parts[:-1], axis=1)


def grid_shape(panels: int, columns: int) -> tuple[int, int]:
    return max(1, math.ceil(panels / columns)), min(columns, max(panels, 1))


def _panel_text(panel: StatePanel, names: list[str]) -> str:
    """Q per action (▶ the action taken, its target after the arrow), six actions a column."""
    wide = len(names) <= 6
    entries = []
    for i, value in enumerate(panel.q):
        if wide:
            text = f"{names[i]:<10} {value:7.3f}"
            target = f" → {panel.target:.3f}"
        else:  # the full action space: short names, two decimals, three columns
            text = f"{names[i][:9]:<9}{value:6.2f}"
            target = f"→{panel.target:.2f}"
        entries.append(f"{'▶' if i == panel.action else ' '}{text}{target if i == panel.action else ''}")
    width = max(len(e) for e in entries) + 1
    columns = [entries[k:k + 6] for k in range(0, len(entries), 6)]
    return "\n".join("".join(f"{col[r]:<{width}}" for col in columns if r < len(col)).rstrip()
                     for r in range(len(columns[0])))


def states_grid(panels: list[StatePanel], action_names: list[str], path: Path, title: str,
                columns: int = 4) -> Path:
    """A grid of states: frame | motion trace, action and reward, Q per action (▶ taken)."""
    rows, cols = grid_shape(len(panels), columns)
    width, height = cols * PANEL_SIZE[0], rows * PANEL_SIZE[1] + TITLE_HEIGHT
    fig = _figure(width, height)
    top = 1 - TITLE_HEIGHT / height
    fig.subplots_adjust(left=0.02, right=0.98, top=top - 0.04 / rows, bottom=0.02,
                        wspace=0.1, hspace=0.05)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    for ax, panel in zip(axes, panels, strict=False):
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(strip(panel.state), cmap="gray", vmin=0, vmax=255, aspect="equal")
        ends = " · life lost" if panel.end_life else (" · episode end" if panel.end_episode else "")
        ax.set_title(f"{action_names[panel.action]} · reward {panel.reward:g} · error "
                     f"{panel.error:.3f}{ends}", fontsize=8)
        ax.set_xlabel(_panel_text(panel, action_names), fontsize=7 if len(action_names) <= 6 else 5,
                      family="monospace", loc="left")
    fig.suptitle(title, y=1 - 0.15 / height, fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------- the network

def conv_filters(kernel: np.ndarray, path: Path, title: str,
                 channel_names=("frame", "motion trace"), columns: int = 8) -> Path:
    """The first convolution's filters (k, k, in, out): one block of rows per input channel."""
    k_in, k_out = kernel.shape[2], kernel.shape[3]
    blocks = math.ceil(k_out / columns)
    cols = min(columns, k_out)
    fig = _figure(max(cols * 1.1 + 1.2, 6.5), k_in * blocks * 1.1 + 0.9)
    axes = fig.subplots(k_in * blocks, cols, squeeze=False)
    limit = float(np.abs(kernel).max()) or 1.0
    image = None
    for c in range(k_in):
        for f in range(blocks * cols):
            ax = axes[c * blocks + f // cols, f % cols]
            ax.set_xticks([])
            ax.set_yticks([])
            if f >= k_out:
                ax.set_axis_off()
                continue
            image = ax.imshow(kernel[:, :, c, f], cmap="seismic", vmin=-limit, vmax=limit)
            if f == 0:
                ax.set_ylabel(channel_names[c] if c < len(channel_names) else f"input {c}", fontsize=8)
    fig.suptitle(f"{title}\nfirst convolution: {k_out} filters of {kernel.shape[0]}x{kernel.shape[1]}, "
                 "one block per input channel", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.86, top=1 - 0.75 / fig.get_figheight(), bottom=0.03)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    return _save(fig, path)


def conv_outputs(state: np.ndarray, layers: list[tuple[str, np.ndarray]], path: Path, title: str,
                 columns: int = 16) -> Path:
    """The input state, then every channel of each convolution's output (after ReLU)."""
    rows = [math.ceil(out.shape[-1] / columns) for _, out in layers]
    cols = min(columns, max(out.shape[-1] for _, out in layers))
    heights = [2.6] + [r * 0.95 + 0.4 for r in rows]
    fig = _figure(max(cols * 0.95, 7.0), sum(heights))
    figures = fig.subfigures(len(layers) + 1, 1, height_ratios=heights)
    ax = figures[0].subplots()
    figures[0].subplots_adjust(top=0.8, bottom=0.08)
    ax.imshow(strip(state), cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title("input: frame | motion trace", fontsize=9)
    figures[0].suptitle(title, fontsize=10)
    for sub, (name, out), r in zip(figures[1:], layers, rows, strict=True):
        axes = sub.subplots(r, cols, squeeze=False)
        sub.subplots_adjust(top=1 - 0.35 / (r * 0.95 + 0.4), bottom=0.04)
        top = float(out.max()) or 1.0
        for i, ax in enumerate(axes.ravel()):
            ax.set_axis_off()
            if i < out.shape[-1]:
                ax.imshow(out[..., i], cmap="viridis", vmin=0, vmax=top)
        sub.suptitle(f"{name}: {out.shape[-1]} channels of {out.shape[0]}x{out.shape[1]} "
                     f"(max {top:.3g})", fontsize=9)
    return _save(fig, path)


def dense_weights(kernels: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
    """Each dense layer's weight matrix (inputs x outputs) as a heat map."""
    fig = _figure(4.0 * len(kernels), 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(kernels)))
    for ax, (name, kernel) in zip(axes, kernels, strict=True):
        limit = float(np.abs(kernel).max()) or 1.0
        image = ax.imshow(kernel, cmap="seismic", vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        ax.set_title(f"{name} {kernel.shape[0]}x{kernel.shape[1]}", fontsize=9)
        ax.set_xlabel("output unit")
        ax.set_ylabel("input")
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

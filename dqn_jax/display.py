"""What test mode shows: a live window (``render=true``) or a video (``video=true``).

Both show what the agent sees: the 105x80 grayscale frame beside its motion trace,
enlarged four times.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from dqn_jax.config import ConfigError

SCALE = 4


def picture(state: np.ndarray) -> np.ndarray:
    """A (H, W, C) uint8 state as one RGB image: its channels side by side, enlarged."""
    if state.ndim != 3:
        raise ValueError("only image states can be shown")
    strip = np.concatenate([state[..., c] for c in range(state.shape[-1])], axis=1)
    big = strip.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    return np.stack([big] * 3, axis=-1)


class VideoSink:
    def __init__(self, path: Path, fps: int = 15):
        import imageio.v2 as imageio

        self.path = path
        self._writer = imageio.get_writer(path, fps=fps, macro_block_size=1)

    def __call__(self, state: np.ndarray) -> None:
        self._writer.append_data(picture(state))

    def close(self) -> None:
        self._writer.close()


class WindowSink:
    def __init__(self):
        import matplotlib.pyplot as plt

        self._plt = plt
        plt.ion()
        self._figure, axes = plt.subplots()
        axes.set_axis_off()
        self._image = None

    def __call__(self, state: np.ndarray) -> None:
        frame = picture(state)
        if self._image is None:
            self._image = self._figure.axes[0].imshow(frame)
        else:
            self._image.set_data(frame)
        self._plt.pause(0.001)

    def close(self) -> None:
        self._plt.close(self._figure)


def open_sink(cfg, run_dir: Path):
    """The sink test mode feeds with game 0's states, or None."""
    if not (cfg.render or cfg.video):
        return None
    if cfg.env.kind != "atari":
        raise ConfigError("render=true and video=true need an Atari game (env.kind=atari)")
    if cfg.video:
        run_dir.mkdir(parents=True, exist_ok=True)
        return VideoSink(run_dir / "test-video.mp4")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("render=true needs a display and none is set (DISPLAY); use video=true to write a video instead")
    return WindowSink()

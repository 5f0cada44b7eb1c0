"""What test mode shows: a live window (``render=true``) or videos (``video=true``).

Both show what the agent sees: the 105x80 grayscale frame beside its motion trace,
enlarged four times. A video can also show, beside the frames, the Q-value of each
action with the chosen action marked, write one file per episode (the first N
episodes only, if asked) and a GIF next to each MP4.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

from dqn_jax.config import ConfigError

SCALE = 4
PANEL_WIDTH = 240  # pixels of the Q-value panel beside the frames
GIF_SCALE = 2  # a GIF is half the size (2x2 pixels averaged): a quarter of the bytes


def picture(state: np.ndarray) -> np.ndarray:
    """A (H, W, C) uint8 state as one RGB image: its channels side by side, enlarged."""
    if state.ndim != 3:
        raise ValueError("only image states can be shown")
    strip = np.concatenate([state[..., c] for c in range(state.shape[-1])], axis=1)
    big = strip.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    return np.stack([big] * 3, axis=-1)


def q_panel(height: int, q_values=None, action: int | None = None,
            action_names: list[str] | None = None, step: int | None = None) -> np.ndarray:
    """An RGB (height, PANEL_WIDTH) image: the step, then per action a bar, its name and Q-value.

    The bars share the frame's scale (lowest Q at the left edge, highest at the right);
    the chosen action's row is green. Without Q-values the panel shows only the step, so
    a video keeps one frame size whatever its caller passes. The step number also keeps
    a GIF's frames distinct: Pillow merges identical consecutive frames into one.
    """
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (PANEL_WIDTH, height), (24, 24, 24))
    draw = ImageDraw.Draw(image)
    header, small = 24, ImageFont.load_default(size=16)
    if step is not None:
        draw.text((6, 4), f"step {step}", fill=(160, 160, 160), font=small)
    if q_values is None:
        return np.asarray(image)
    q = np.asarray(q_values, dtype=np.float64).reshape(-1)
    names = list(action_names) if action_names else [f"action {i}" for i in range(q.size)]
    row = max(14, min(48, (height - header - 4) // max(q.size, 1)))
    font = ImageFont.load_default(size=max(9, min(20, row // 2 - 2)))
    draw.text((PANEL_WIDTH // 2, 4), "Q-values", fill=(160, 160, 160), font=small)
    low, span = q.min(), max(float(np.ptp(q)), 1e-9)
    for i, value in enumerate(q):
        top = header + i * row
        chosen = action is not None and i == int(action)
        colour = (80, 200, 90) if chosen else (110, 140, 200)
        length = int(8 + (PANEL_WIDTH - 20) * (value - low) / span)
        draw.rectangle([4, top + row // 2, 4 + length, top + row - 3], fill=colour)
        label = f"{'> ' if chosen else ''}{names[i]}  {value:.3f}"
        draw.text((6, top), label, fill=(255, 255, 255) if chosen else (200, 200, 200), font=font)
    return np.asarray(image)


def video_frame(state: np.ndarray, q_values=None, action: int | None = None,
                action_names: list[str] | None = None, with_q: bool = False,
                step: int | None = None) -> np.ndarray:
    """The frames of ``state`` enlarged, with the Q-value panel on the right if ``with_q``."""
    frame = picture(state)
    if not with_q:
        return frame
    panel = q_panel(frame.shape[0], q_values, action, action_names, step)
    return np.concatenate([frame, panel], axis=1)


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """The image ``factor`` times smaller, each output pixel the mean of a block (text stays legible)."""
    if factor == 1:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).reduce(factor))


class VideoSink:
    """Frames to an MP4 (and a GIF beside it on request).

    Called as ``sink(state)`` or ``sink(state, q_values, action)``. By default every
    frame goes into ``path``. With ``per_episode`` each episode gets its own files
    (``test-video-1.mp4``, ``test-video-2.mp4``, ...): call :meth:`episode_end` when
    game 0's episode ends. With ``episodes=N`` frames after the N-th episode are
    ignored (``wants_frames`` turns false). ``frames`` counts the frames of each
    file written, ``paths`` lists the files. A GIF has one frame per call when the
    Q-value panel is on (it numbers the steps); without it, Pillow merges identical
    consecutive frames into one longer frame.
    """

    def __init__(self, path: Path, fps: int = 15, *, gif: bool = False, q_values: bool = False,
                 action_names: list[str] | None = None, episodes: int | None = None,
                 per_episode: bool = False):
        self.path = Path(path)
        self.fps = int(fps)
        self.gif = gif
        self.with_q = q_values
        self.action_names = action_names
        self.episodes = episodes
        self.per_episode = per_episode
        self.episodes_done = 0
        self.frames: dict[Path, int] = {}
        self._writers: list = []

    @property
    def wants_frames(self) -> bool:
        return self.episodes is None or self.episodes_done < self.episodes

    @property
    def paths(self) -> list[Path]:
        """The files written so far (MP4 then GIF for each episode)."""
        return list(self.frames)

    def _current_path(self) -> Path:
        if not self.per_episode:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{self.episodes_done + 1}{self.path.suffix}")

    def _open(self) -> None:
        import imageio.v2 as imageio

        mp4 = self._current_path()
        mp4.parent.mkdir(parents=True, exist_ok=True)
        self._writers = [(mp4, imageio.get_writer(mp4, fps=self.fps, macro_block_size=1), 1)]
        if self.gif:
            gif = mp4.with_suffix(".gif")
            self._writers.append((gif, imageio.get_writer(gif, mode="I", duration=1000 / self.fps,
                                                          loop=0), GIF_SCALE))
        for file, _, _ in self._writers:
            self.frames[file] = 0

    def __call__(self, state: np.ndarray, q_values=None, action: int | None = None) -> None:
        if not self.wants_frames:
            return
        if not self._writers:
            self._open()
        step = self.frames[self._writers[0][0]] + 1
        image = video_frame(state, q_values, action, self.action_names, self.with_q, step)
        for file, writer, step in self._writers:
            with warnings.catch_warnings():
                # The first frame starts ffmpeg (fork, then exec at once): JAX's fork warning
                # is about forked children that keep running Python, not this.
                warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                writer.append_data(_shrink(image, step))
            self.frames[file] += 1

    def episode_end(self) -> None:
        """Game 0's episode ended: count it; with ``per_episode`` close its files."""
        self.episodes_done += 1
        if self.per_episode or not self.wants_frames:
            self.close()

    def close(self) -> None:
        for _, writer, _ in self._writers:
            writer.close()
        self._writers = []


class WindowSink:
    def __init__(self):
        import matplotlib.pyplot as plt

        self.action_names = None  # like VideoSink's, unused: the window shows the frames only
        self._plt = plt
        plt.ion()
        self._figure, axes = plt.subplots()
        axes.set_axis_off()
        self._image = None

    def __call__(self, state: np.ndarray, q_values=None, action: int | None = None) -> None:
        frame = picture(state)
        if self._image is None:
            self._image = self._figure.axes[0].imshow(frame)
        else:
            self._image.set_data(frame)
        self._plt.pause(0.001)

    def episode_end(self) -> None:
        pass

    def close(self) -> None:
        self._plt.close(self._figure)


def open_sink(cfg, run_dir: Path, *, episodes: int | None = None, gif: bool = False,
              q_values: bool = False, per_episode: bool = False,
              action_names: list[str] | None = None):
    """The sink test mode feeds with game 0's states, or None.

    ``video=true`` alone writes ``<run_dir>/test-video.mp4``; the keywords ask for
    the first ``episodes`` episodes only, a GIF beside each MP4, the Q-value panel,
    one file pair per episode (``test-video-<k>.mp4``), and the actions' names.
    """
    if not (cfg.render or cfg.video):
        return None
    if cfg.env.kind != "atari":
        raise ConfigError("render=true and video=true need an Atari game (env.kind=atari)")
    if cfg.video:
        run_dir.mkdir(parents=True, exist_ok=True)
        return VideoSink(run_dir / "test-video.mp4", gif=gif, q_values=q_values, episodes=episodes,
                         per_episode=per_episode, action_names=action_names)
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("render=true needs a display and none is set (DISPLAY); use video=true to write a video instead")
    return WindowSink()

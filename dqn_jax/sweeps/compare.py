"""Compare the runs of a sweep: reward curves and a table of final scores per configuration.

    dqn-jax-compare RUN_ID                  # the sweep's parent run id
    dqn-jax-compare --sweep-id 2026-11-24_10-00-00
    python -m dqn_jax.sweeps.compare RUN_ID --tracking-uri http://127.0.0.1:5000 --out compare/

The children of the sweep's parent run are grouped into configurations: a child's
configuration is its overrides (tag ``dqn_jax.overrides``) less ``seed=...``, so
children that differ only by seed are one configuration, averaged. Writes
``rewards.png`` (``episode/mean30`` against states: the mean over seeds, and their
range shaded), ``scores.csv`` and ``scores.md`` (final scores per configuration) into
``--out`` and logs them to the parent run under ``compare/``. A sweep whose launching
process was killed (``kill -9``) is first closed KILLED, with its children left RUNNING
(tag ``dqn_jax.closed_reason``). Bad input (an unknown
run id, a run with no children, no store) ends with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dqn_jax.tracking import stale, store

USAGE_ERROR = 2
CURVE = "episode/mean30"
ARTIFACT_DIR = "compare"
SEED = re.compile(r"^\+?seed=")


class CompareError(ValueError):
    """Bad input: the message is one line for the user."""


@dataclass
class Child:
    run_id: str
    status: str
    overrides: list[str]
    seed: str
    metrics: dict[str, float]
    curve: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.zeros(0), np.zeros(0)))


@dataclass
class Group:
    label: str
    children: list[Child]


# ---------------------------------------------------------------------------- reading

def find_parent(client, run_id: str | None = None, sweep_id: str | None = None):
    """The sweep's parent run, by its run id or by the sweep id it was tagged with."""
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            return client.get_run(run_id)
        except MlflowException:
            raise CompareError(f"no run with id {run_id!r} in this store") from None
    found = store.search_runs(client, f"tags.`dqn_jax.sweep_id` = '{sweep_id}' and tags.`dqn_jax.sweep` = 'true'")
    if not found:
        raise CompareError(f"no sweep with id {sweep_id!r} in this store")
    if len(found) > 1:
        ids = ", ".join(r.info.run_id for r in found)
        raise CompareError(f"{len(found)} sweeps have the id {sweep_id!r} (runs {ids}); give one run id")
    return found[0]


def close_killed_sweep(client, parent):
    """A sweep whose launching process was killed (kill -9) is closed KILLED, with the
    children it left RUNNING (:mod:`dqn_jax.tracking.stale`); returns the parent as it is now."""

    closed = stale.close_orphaned_sweep(client, parent.info.run_id, "dqn-jax-compare")
    if not closed:
        return parent
    children = len(closed) - (parent.info.run_id in closed)
    print(f"dqn-jax-compare: the launching process of this sweep is gone; closed KILLED: "
          f"{'parent run ' + parent.info.run_id + ' and ' if parent.info.run_id in closed else ''}"
          f"{children} child run{'' if children == 1 else 's'}", file=sys.stderr)
    return client.get_run(parent.info.run_id)


def read_children(client, parent_id: str, metric: str = CURVE) -> list[Child]:
    children = []
    for run in store.search_runs(client, f"tags.mlflow.parentRunId = '{parent_id}'"):
        tags = run.data.tags
        overrides = tags.get("dqn_jax.overrides", "").split() or [run.info.run_name or run.info.run_id]
        history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
        curve = (np.array([m.step for m in history], dtype=float),
                 np.array([m.value for m in history], dtype=float))
        children.append(Child(run_id=run.info.run_id, status=run.info.status, overrides=overrides,
                              seed=run.data.params.get("seed", ""), metrics=dict(run.data.metrics),
                              curve=curve))
    return sorted(children, key=lambda c: (c.overrides, c.seed))


def group_children(children: list[Child]) -> list[Group]:
    """Children with the same overrides but for ``seed=`` are one configuration."""
    groups: dict[str, list[Child]] = {}
    for child in children:
        label = " ".join(o for o in child.overrides if not SEED.match(o)) or "(defaults)"
        groups.setdefault(label, []).append(child)
    return [Group(label, members) for label, members in groups.items()]


# ---------------------------------------------------------------------------- the table

def _final(child: Child) -> float | None:
    """The child's last running mean of 30 episodes."""
    if child.curve[1].size:
        return float(child.curve[1][-1])
    return child.metrics.get("train/mean30")


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    if not kept:
        return None, None
    return float(np.mean(kept)), float(np.std(kept))


def score_table(groups: list[Group], metric: str = CURVE) -> list[dict]:
    rows = []
    for group in groups:
        final_mean, final_std = _mean_std([_final(c) for c in group.children])
        test_mean, test_std = _mean_std([c.metrics.get("test/mean_score") for c in group.children])
        states = [c.metrics.get("train/states") for c in group.children]
        statuses = [c.status for c in group.children]
        rows.append({
            "configuration": group.label,
            "runs": len(group.children),
            "finished": statuses.count("FINISHED"),
            "seeds": " ".join(c.seed for c in group.children if c.seed),
            f"final {metric} (mean)": final_mean,
            f"final {metric} (std)": final_std,
            "test/mean_score (mean)": test_mean,
            "test/mean_score (std)": test_std,
            "states (mean)": _mean_std(states)[0],
            "run ids": " ".join(c.run_id for c in group.children),
        })
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def table_markdown(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "run ids"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[k]).replace("|", "\\|") for k in keys) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the plot

def _mean_curve(children: list[Child]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seeds' curves on a common grid of states (where they all have data)."""
    curves = [c.curve for c in children if c.curve[0].size]
    if len(curves) == 1:
        x, y = curves[0]
        return x, y, y, y
    end = min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x[x <= end] for x, _ in curves]))
    values = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_curves(groups: list[Group], path: Path, title: str, metric: str = CURVE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for group in groups:
        if not any(c.curve[0].size for c in group.children):
            continue
        x, mean, low, high = _mean_curve(group.children)
        seeds = sum(1 for c in group.children if c.curve[0].size)
        label = group.label if seeds == 1 else f"{group.label} ({seeds} seeds)"
        (line,) = ax.plot(x, mean, label=label, linewidth=1.6)
        if seeds > 1:
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("states processed")
    ax.set_ylabel(f"{metric} (reward, mean of last 30 episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, f"no {metric} values yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- the command

def compare(client, parent, out_dir: Path, metric: str = CURVE, log: bool = True) -> dict[str, Path]:
    """Write the plot and the tables for the sweep under ``parent``; log them to it."""
    parent_id = parent.info.run_id
    children = read_children(client, parent_id, metric)
    if not children:
        raise CompareError(f"run {parent_id} has no child runs; is it a sweep's parent run?")
    groups = group_children(children)
    rows = score_table(groups, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = parent.data.tags.get("dqn_jax.sweep_id", parent_id)
    files = {"plot": out_dir / "rewards.png", "csv": out_dir / "scores.csv",
             "markdown": out_dir / "scores.md"}
    plot_curves(groups, files["plot"], f"sweep {sweep}: {len(children)} runs, {len(groups)} configurations",
                metric)
    files["csv"].write_text(table_csv(rows))
    files["markdown"].write_text(table_markdown(rows))
    if log:
        for path in files.values():
            client.log_artifact(parent_id, str(path), ARTIFACT_DIR)
    return files


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dqn-jax-compare", description="Reward curves and final scores of a sweep's runs.")
    parser.add_argument("run_id", nargs="?", help="the sweep's parent run id")
    parser.add_argument("--sweep-id", help="the sweep's id (tag dqn_jax.sweep_id: its directory's name)")
    parser.add_argument("--tracking-uri", help=f"default: $MLFLOW_TRACKING_URI, else ROOT/{store.STORE_FILE}")
    parser.add_argument("--root", default=".", help="the project root of the embedded store (paths.root)")
    parser.add_argument("--out", help="where to write the files (default: compare-<sweep id>)")
    parser.add_argument("--metric", default=CURVE, help=f"the curve to plot (default {CURVE})")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    args = parser.parse_args(argv)
    if bool(args.run_id) == bool(args.sweep_id):
        parser.error("give the sweep's parent run id or --sweep-id (one of them)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        uri = args.tracking_uri or store.default_uri(args.root)
        client = store.client(uri, existing=True)
        if client is None:
            raise CompareError(f"there is no MLflow store at {store.sqlite_file(uri)}; give --root or --tracking-uri")
        parent = find_parent(client, args.run_id, args.sweep_id)
        parent = close_killed_sweep(client, parent)
        sweep = parent.data.tags.get("dqn_jax.sweep_id", parent.info.run_id)
        out_dir = Path(args.out) if args.out else Path(f"compare-{sweep}")
        files = compare(client, parent, out_dir, args.metric, log=not args.no_log)
    except CompareError as err:
        print(f"dqn-jax-compare: error: {err}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    print(files["markdown"].read_text(), end="")
    where = "" if args.no_log else f"; logged to run {parent.info.run_id} under {ARTIFACT_DIR}/"
    print(f"\nwrote {', '.join(str(p) for p in files.values())}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

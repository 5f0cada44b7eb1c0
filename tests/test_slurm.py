"""hydra/launcher=slurm end to end through stand-ins for Slurm's commands on PATH.

The stand-in ``sbatch`` keeps the job script submitit wrote, then runs it on this machine
as Slurm would (its environment variables set; the stand-in ``srun`` runs the command
after its options), and answers as sbatch does. So the script is checked line by line,
and the job itself runs through submitit's Slurm path to a finished MLflow run.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from tests.conftest import CART, client_for, run_app, sweep_runs, tail

JOB_ID = "4242"

SBATCH = f"""#!/bin/bash
# stand-in sbatch: keep the script, start it here as job {JOB_ID} (submitit names its files
# after the id it reads from the answer, so the job starts after answering), answer as sbatch
cp "$1" "$SLURM_STANDIN_DIR/job.sh"
export SLURM_JOB_ID={JOB_ID} SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_PROCID=0 \\
       SLURM_LOCALID=0 SLURM_JOB_NODELIST=localhost
(sleep 1; bash "$SLURM_STANDIN_DIR/job.sh" > "$SLURM_STANDIN_DIR/job.out" 2>&1; \\
 touch "$SLURM_STANDIN_DIR/done") > /dev/null 2>&1 &
echo "Submitted batch job {JOB_ID}"
"""
SRUN = """#!/bin/bash
# stand-in srun: drop srun's own options (those with a value take the next word)
while [[ "$1" == --* ]]; do
  case "$1" in --output|--error) shift 2 ;; *) shift ;; esac
done
exec "$@"
"""
SACCT = f"""#!/bin/bash
state=RUNNING; [ -e "$SLURM_STANDIN_DIR/done" ] && state=COMPLETED
printf 'JobID|State|NodeList\\n{JOB_ID}|%s|localhost\\n' "$state"
"""


def stand_ins(folder: Path) -> dict:
    folder.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "SLURM_STANDIN_DIR": str(folder)}


def test_a_slurm_job_script_holds_the_settings_and_its_job_runs(tmp_path):
    standin = tmp_path / "slurm"
    sweep_dir = tmp_path / "sweep"
    result = run_app([*CART, "steps=200", "hydra.mode=MULTIRUN", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}",
                      "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=2",
                      "hydra.launcher.cpus_per_task=3", "hydra.launcher.mem_gb=5", "hydra.launcher.timeout_min=7",
                      "seed=choice(3)"], cwd=tmp_path, env_extra=stand_ins(standin))
    assert result.returncode == 0, tail(result) + (standin / "job.out").read_text()[-3000:]
    lines = (standin / "job.sh").read_text().splitlines()
    flags = {line.split()[1] for line in lines if line.startswith("#SBATCH ")}
    assert {"--partition=debug", "--gpus-per-node=2", "--cpus-per-task=3", "--mem=5GB", "--time=7",
            "--nodes=1", "--ntasks-per-node=1", "--job-name=dqn_jax", "--requeue", "--signal=USR2@120"} <= flags, flags
    assert any(flag.startswith("--output=") and str(sweep_dir / ".submitit") in flag for flag in flags)
    (command,) = [shlex.split(line) for line in lines if line.startswith("srun ")]
    folder = command[-1]
    assert command[-5:-1] == [sys.executable, "-u", "-m", "submitit.core._submit"], command
    assert Path(folder).parent == sweep_dir / ".submitit"  # submitit_folder: one per job id
    assert command[:2] == ["srun", "--unbuffered"] and "--output" in command

    parent, (child,) = sweep_runs(client_for(tmp_path))
    assert parent.info.status == "FINISHED" and parent.data.tags["dqn_jax.launcher"].endswith("SlurmLauncher")
    assert child.info.status == "FINISHED" and child.data.params["seed"] == "3"
    assert child.data.metrics["train/states"] >= 200

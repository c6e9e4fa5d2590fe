r"""Kill a training run with SIGKILL several times and check that resuming
gives the parameters of an uninterrupted run, bit for bit.

  python -m experiments.fault_injection --root=runs/faults --kills=5 \
      --manual_dir=../shared/data/tiny_shakespeare

Runs `python -m roformer_jax.main` on a small config twice: once straight
through, and once killed `--kills` times and restarted with the same
command. Each kill comes at a random step and a random moment, up to
`--max_delay_seconds` after that step's log line, so kills land in training
steps, evaluations and checkpoint writes alike. Then it compares the final
parameters of the two workdirs and exits with status 1 if any array
differs.
"""

import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from roformer_jax.train import checkpoint

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]


def define_flags() -> None:
    flags.DEFINE_string("root", None, "Directory for the two workdirs.")
    flags.DEFINE_integer("kills", 5, "How many times to kill the run.")
    flags.DEFINE_integer("num_train_steps", 40, "Length of the run.")
    flags.DEFINE_integer("checkpoint_every_steps", 2, "Checkpoint interval.")
    flags.DEFINE_string(
        "config", "configs/tiny_shakespeare.py:smoke", "Experiment config."
    )
    flags.DEFINE_string("manual_dir", None, "Offline Tiny Shakespeare folder.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir.")
    flags.DEFINE_float("max_delay_seconds", 1.0, "Longest wait after the step.")
    flags.DEFINE_integer("seed", 0, "Seed of the kill steps and delays.")
    flags.mark_flag_as_required("root")


def _command(workdir: pathlib.Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "roformer_jax.main",
        f"--config={FLAGS.config}",
        f"--workdir={workdir}",
        "--config.train.tensorboard=False",
        f"--config.train.num_train_steps={FLAGS.num_train_steps}",
        f"--config.train.checkpoint_every_steps={FLAGS.checkpoint_every_steps}",
        "--config.train.log_every_steps=1",
        f"--config.train.eval_every_steps={FLAGS.num_train_steps}",
    ]
    if FLAGS.manual_dir:
        command.append(f"--config.data.manual_dir={FLAGS.manual_dir}")
    if FLAGS.data_dir:
        command.append(f"--config.data.data_dir={FLAGS.data_dir}")
    return command


def _run_to_end(workdir: pathlib.Path) -> None:
    result = subprocess.run(
        _command(workdir), cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"Training in {workdir} failed:\n{result.stderr[-3000:]}")


def _logged_step(line: str) -> int | None:
    """Return the step of a trainer progress line ("step N/TOTAL ..."), else None."""
    marker = line.find(" step ")
    if marker < 0:
        return None
    number = line[marker + 6 :].split("/", 1)[0]
    return int(number) if number.isdigit() else None


def _run_and_kill(workdir: pathlib.Path, target: int, delay: float) -> int | None:
    """Start the run and SIGKILL it `delay` seconds after it logs step
    `target` or later. Return the step last logged before the kill, or None
    when the run finished first."""
    process = subprocess.Popen(
        _command(workdir),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = None
    for line in process.stderr:
        step = _logged_step(line)
        if step is not None:
            last = step
            if step >= target:
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                break
    process.communicate()
    return last if process.returncode == -signal.SIGKILL else None


def main(argv) -> None:
    del argv
    root = pathlib.Path(FLAGS.root)
    rng = random.Random(FLAGS.seed)
    total = FLAGS.num_train_steps
    if not 1 <= FLAGS.kills < total:
        sys.exit(f"--kills={FLAGS.kills} must be between 1 and --num_train_steps - 1.")
    started = time.perf_counter()
    print(f"Uninterrupted run of {total} steps ...", flush=True)
    _run_to_end(root / "straight")
    targets = sorted(rng.sample(range(1, total), FLAGS.kills))
    for target in targets:
        delay = rng.uniform(0.0, FLAGS.max_delay_seconds)
        killed = _run_and_kill(root / "killed", target, delay)
        if killed is None:
            print(f"target step {target}: the run ended before the kill", flush=True)
        else:
            print(
                f"killed at step {killed} (target {target}, {delay:.2f} s after "
                "its log line)",
                flush=True,
            )
    _run_to_end(root / "killed")
    straight = jax.tree.leaves(checkpoint.restore_params(str(root / "straight")).params)
    killed = checkpoint.restore_params(str(root / "killed"))
    resumed = jax.tree.leaves(killed.params)
    differing = sum(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(straight, resumed, strict=True)
    )
    elapsed = time.perf_counter() - started
    if differing:
        print(
            f"final parameters: {differing} of {len(straight)} arrays DIFFER "
            f"(step {killed.step})"
        )
        sys.exit(1)
    print(
        f"final parameters: identical ({len(straight)} arrays at step "
        f"{killed.step}); {elapsed:.0f} s in all"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)

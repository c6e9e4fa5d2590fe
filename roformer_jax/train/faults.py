"""What the training loop does about faults: non-finite steps and SIGTERM.

Non-finite loss or gradients: every step reports a `train/finite` flag. The
loop reads the flags at each log, evaluation and checkpoint step (reading
them every step would wait for the device each step) and then, by
`train.nonfinite_policy`:

- "stop" (the default) raises `NonFiniteError` naming the first bad step
  and its batch. The parameters of that step are not saved, so the last
  checkpoint is the state to go back to.
- "skip": the step already kept its old parameters and optimizer state on
  the device, so the loop logs the step and batch and goes on. It raises
  once more than `train.max_consecutive_skips` steps in a row were skipped.

SIGTERM, which schedulers and preemptible machines send before stopping a
job, sets a flag; the loop saves a checkpoint after the step in flight and
returns, so the process exits with status 0 and the same command resumes.
"""

import contextlib
import logging
import signal
import threading

import jax
import numpy as np

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter."""


class NonFiniteGuard:
    """Collects each step's finite flag and applies the policy when read."""

    def __init__(self, policy: str, max_consecutive_skips: int):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"train.nonfinite_policy={policy!r} is invalid; use one of "
                f"{list(NONFINITE_POLICIES)}."
            )
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_skips = 0
        self.skipped_steps: list[int] = []
        self._unread: list[tuple[int, int, jax.Array]] = []

    def record(self, step: int, batch_index: int, finite: jax.Array) -> None:
        self._unread.append((step, batch_index, finite))

    def check(self, last_checkpoint: int | None) -> None:
        """Read the flags recorded since the last call and apply the policy.

        Raises:
          NonFiniteError: a non-finite step under "stop", or too many in a
            row under "skip".
        """
        flags = jax.device_get([finite for _, _, finite in self._unread])
        unread, self._unread = self._unread, []
        for (step, batch_index, _), finite in zip(unread, flags, strict=True):
            if bool(np.asarray(finite)):
                self.consecutive_skips = 0
                continue
            where = f"step {step} (training batch {batch_index})"
            resume = (
                f"the last checkpoint, step {last_checkpoint}, is intact"
                if last_checkpoint is not None
                else "no checkpoint was written yet"
            )
            if self.policy == "stop":
                raise NonFiniteError(
                    f"Non-finite loss or gradients at {where}; {resume}. Lower "
                    "optim.learning_rate, raise optim.warmup_steps or check the "
                    "data; or set train.nonfinite_policy='skip' to skip such "
                    "updates."
                )
            self.consecutive_skips += 1
            self.skipped_steps.append(step)
            logger.warning(
                "Non-finite loss or gradients at %s; the update was skipped "
                "(%d in a row, train.max_consecutive_skips=%d).",
                where,
                self.consecutive_skips,
                self.max_consecutive_skips,
            )
            if self.consecutive_skips > self.max_consecutive_skips:
                raise NonFiniteError(
                    f"{self.consecutive_skips} consecutive steps up to {where} had "
                    "a non-finite loss or gradients, more than "
                    f"train.max_consecutive_skips={self.max_consecutive_skips}; "
                    f"{resume}. Lower optim.learning_rate or check the data."
                )


def check_finite_parameters(param_norm: jax.Array, step: int) -> None:
    """Refuse to go on (and so to save) when the parameters are not finite."""
    if not np.isfinite(float(jax.device_get(param_norm))):
        raise NonFiniteError(
            f"The parameters are non-finite after step {step}, so no checkpoint "
            "is written; the last checkpoint is intact. Lower "
            "optim.learning_rate or check the data."
        )


class TerminationRequest:
    """True once SIGTERM arrived while `catch_sigterm` was active."""

    def __init__(self):
        self.received = False

    def __bool__(self) -> bool:
        return self.received


@contextlib.contextmanager
def catch_sigterm():
    """Turn SIGTERM into a flag for the duration of the block.

    Signal handlers can only be set from the main thread; elsewhere the flag
    simply never turns true.
    """
    request = TerminationRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        del signum, frame
        request.received = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)

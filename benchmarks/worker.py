"""A benchmark worker: one subprocess that hosts sessions and times them.

  python -m benchmarks.worker --cpus=0,1 --reply-fd=FD

`harness.Worker` starts it. It pins itself to `--cpus` before importing
JAX or torch, reads one JSON request per line from stdin and writes one JSON
reply per line to file descriptor FD:

- `{"op": "start", "module": "jax_sessions", "cls": NAME, "params": {...}}`
  builds a session and replies `{"session": ID, "info": {...}}`, or
  `{"skipped": REASON}` when the installed package lacks what it needs;
- `{"op": "run", "session": ID}` replies with the session's timing;
- `{"op": "stop", "session": ID}` drops a session;
- `{"op": "memory"}` replies with the peak resident set size now and just
  after the session module was imported;
- `{"op": "exit"}` replies and exits.

A request that raises gets `{"error": TRACEBACK}`, and the worker goes on.
"""

import argparse
import gc
import importlib
import json
import sys
import traceback

from benchmarks import harness

SESSION_MODULES = ("jax_sessions", "torch_sessions")


class WorkerState:
    """The sessions of this worker and the memory baseline of its imports."""

    def __init__(self):
        self.sessions: dict[int, object] = {}
        self.next_id = 0
        self.baseline_rss_bytes: int | None = None

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op == "start":
            return self._start(request)
        if op == "run":
            return self.sessions[request["session"]].run()
        if op == "stop":
            self.sessions.pop(request["session"], None)
            gc.collect()
            return {"ok": True}
        if op == "memory":
            return {
                "max_rss_bytes": harness.max_rss_bytes(),
                "baseline_rss_bytes": self.baseline_rss_bytes,
            }
        if op == "exit":
            return {"ok": True}
        raise ValueError(
            f"Unknown worker op {op!r}; use start, run, stop, memory or exit."
        )

    def _start(self, request: dict) -> dict:
        name = request["module"]
        if name not in SESSION_MODULES:
            raise ValueError(
                f"Session module {name!r} is invalid; use one of {SESSION_MODULES}."
            )
        module = importlib.import_module(f"benchmarks.{name}")
        if self.baseline_rss_bytes is None:
            self.baseline_rss_bytes = harness.max_rss_bytes()
        session_class = module.SESSIONS[request["cls"]]
        skip = getattr(module, "SkipMeasurement", ())
        try:
            session = session_class(**request.get("params", {}))
        except skip as reason:
            return {"skipped": str(reason)}
        session_id = self.next_id
        self.next_id += 1
        self.sessions[session_id] = session
        return {"session": session_id, "info": session.info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", required=True, help="Comma-separated CPU ids.")
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args()
    harness.pin_to_cpus([int(cpu) for cpu in args.cpus.split(",")])
    state = WorkerState()
    with open(args.reply_fd, "w", encoding="utf-8") as replies:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply = state.handle(request)
            except Exception:  # Report every failure to the parent and go on.
                reply = {"error": traceback.format_exc()}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
            if request.get("op") == "exit":
                break


if __name__ == "__main__":
    main()

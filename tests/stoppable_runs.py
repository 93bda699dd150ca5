"""`src/clipo/train.py` (its Hydra main, as the command line runs it) for several run folders at once,
with a verifier slow enough to be stopped mid-run. Used by tests/run/test_checkpointing.py.

    python tests/stoppable_runs.py '[{"out": "/tmp/a", "overrides": [...], "env": {...}}, ...]'

The heavy imports happen once; then one child is forked per run (a fresh interpreter each would cost
~10 s of CPU apiece). Each run folder gets `pid` (the child's, to signal it), `output.txt` (its stdout
and stderr), `scored.txt` (a line per scored step, to wait on) and at the end `exit_code` (the status
the child's SystemExit carries, as `python src/clipo/train.py` would exit with; -N when killed by N).
"""

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

import clipo.train  # noqa: E402,F401  (imported before forking, for every child)
from clipo.registry import VERIFIERS  # noqa: E402
from tests.conftest import TINY_OVERRIDES, ParityVerifier  # noqa: E402


class SlowParity(ParityVerifier):
    def __init__(self, **options) -> None:  # verifier=math's options are ignored
        pass

    def __call__(self, responses, ground_truths):
        with open(Path(os.environ["STOPPABLE_RUN_DIR"]) / "scored.txt", "a") as file:
            file.write("step\n")
        time.sleep(float(os.environ.get("STOPPABLE_SCORE_SECONDS", "0.4")))
        return super().__call__(responses, ground_truths)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _child(run: dict) -> None:
    out = Path(run["out"])
    os.environ.update(run.get("env") or {}, STOPPABLE_RUN_DIR=str(out))
    log = os.open(out / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    VERIFIERS.register("parity")(SlowParity)
    sys.argv = ["train.py", *TINY_OVERRIDES, *run["overrides"], "verifier.name=parity", f"hydra.run.dir={out}"]
    try:
        runpy.run_path(str(REPO / "src" / "clipo" / "train.py"), run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    children = {}
    for run in json.loads(sys.argv[1]):
        out = Path(run["out"])
        out.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            _child(run)
        _write(out / "pid", str(pid))
        children[pid] = out
    while children:
        pid, status = os.wait()
        _write(children.pop(pid) / "exit_code", str(os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    main()

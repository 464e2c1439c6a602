"""The engine process a command forks at its start (apps.monitoring.engine.preload): calls run
in the child with their progress, results and errors brought back, and a child that dies is
named with its signal. Run in a fresh interpreter, as the `audobon` command forks it, not in
the test process with its threads."""

import json
import subprocess
import sys

from tests.proc import REPO

SCRIPT = r'''
import json, os, signal, sys
from apps.monitoring.engine.preload import EngineProcess, EngineProcessError, current

def work(n, reporter):
    for i in range(n):
        reporter.step(i + 1, n, mb_s=1.5)
    reporter.log("done")
    return {"pid": os.getpid(), "modules": "colorsys" in sys.modules, "n": n}

class Odd(Exception):
    def __init__(self, a, b):  # cannot be rebuilt from its args: not picklable as is
        super().__init__(f"{a}-{b}")

def odd():
    raise Odd(1, 2)

class Reporter:
    def __init__(self):
        self.steps, self.logs = [], []
    def step(self, done, total=None, **metrics):
        self.steps.append([done, total, metrics])
    def log(self, msg):
        self.logs.append(msg)
    def cancelled(self):
        return False

engine = EngineProcess.start(("colorsys",))
out = {"current": current() is engine}
reporter = Reporter()
result = engine.call(work, 3, reporter=reporter)
out.update(other_pid=result["pid"] != os.getpid(), imported_there=result["modules"],
           imported_here="colorsys" in sys.modules, steps=reporter.steps, logs=reporter.logs)
try:
    engine.call(int, "not a number")
except ValueError as exc:
    out["value_error"] = str(exc)
try:
    engine.call(odd)
except EngineProcessError as exc:
    out["odd"] = str(exc).splitlines()[0]
try:
    engine.call(os.kill, result["pid"], signal.SIGKILL)
except EngineProcessError as exc:
    out["killed"] = str(exc)
out["current_after"] = current() is None
engine.close()
second = EngineProcess.start(("time",))
second.close()  # never called: stopped at once, not left to finish its imports, and reaped
try:
    os.kill(second.pid, 0)
    out["closed"] = False
except ProcessLookupError:
    out["closed"] = current() is None
print(json.dumps(out))
'''


def test_calls_run_in_the_child_with_progress_results_and_errors_brought_back():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["current"] and out["other_pid"] and out["imported_there"]
    assert not out["imported_here"]  # the module was imported in the child only
    assert out["steps"] == [[1, 3, {"mb_s": 1.5}], [2, 3, {"mb_s": 1.5}], [3, 3, {"mb_s": 1.5}]]
    assert out["logs"] == ["done"]
    assert "invalid literal" in out["value_error"]
    assert out["odd"] == "Odd: 1-2"
    assert "killed by signal 9 (SIGKILL)" in out["killed"] and "os.kill" not in out["killed"]
    assert out["current_after"] and out["closed"]

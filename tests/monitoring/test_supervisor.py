"""The supervisor restarts a crashed child and stops all of them, by force if it must."""

import os
import signal
import sys
import time

import psutil

from apps.monitoring.engine import supervisor as sup_mod
from apps.monitoring.engine.supervisor import ChildSpec, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"]


def test_a_crashed_child_is_restarted_and_stop_ends_all():
    sup = Supervisor([ChildSpec("a", SLEEPER), ChildSpec("b", SLEEPER)])
    sup.start()
    try:
        first = sup.pids()
        os.kill(first["a"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sup.pids().get("a") in (None, first["a"]):
            sup.check()
            time.sleep(0.05)
        now = sup.pids()
        assert now["a"] != first["a"] and now["b"] == first["b"]
    finally:
        sup.stop()
    assert sup.pids() == {}
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in now.values())


def test_a_child_ignoring_sigterm_is_killed(monkeypatch):
    monkeypatch.setattr(sup_mod, "STOP_GRACE_S", 0.5)
    sup = Supervisor([ChildSpec("stubborn", STUBBORN)])
    sup.start()
    time.sleep(0.3)  # let it install its handler
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 5
    assert sup.pids() == {}


def test_children_know_their_supervisor():
    check = ("import os, sys; "
             "sys.exit(int(os.environ['AUDOBON_SUPERVISOR_PID'] != str(os.getppid())))")
    sup = Supervisor([ChildSpec("env", [sys.executable, "-c", check])])
    sup.start()
    code = sup.children[0].proc.wait(timeout=10)
    assert code == 0

"""Whether a job fits on this machine now, beside the jobs already running. Django-free.

A job kind declares its needs before it runs: `{"memory": bytes, "disk": bytes, "device":
"cpu" | "cuda[:N]"}` (any key may be missing). Memory is counted against the device's total
and against what is free now less what the running jobs declared (their estimates, not what
they happen to use yet: a job early in its run has not grown to its peak)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    memory_total: int  # bytes on the job's device (RAM, or that GPU's memory)
    memory_free: int  # free now on that device
    disk_free: int  # free in AUDOBON_HOME now
    reserved_memory: int = 0  # what running jobs declared on that device
    reserved_disk: int = 0


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def fit_check(needs: dict, machine: Machine) -> tuple[str, str]:
    """("fits" | "wait" | "never", why). "never": it cannot fit on this machine even when
    the running jobs have ended."""
    memory, disk = int(needs.get("memory") or 0), int(needs.get("disk") or 0)
    device = needs.get("device") or "cpu"
    if memory > machine.memory_total:
        return "never", (f"needs {gb(memory)} of memory on {device}, which has "
                         f"{gb(machine.memory_total)} in all")
    if disk > machine.disk_free + machine.reserved_disk:
        return "never", f"needs {gb(disk)} of disk in the home, {gb(machine.disk_free)} free"
    room = min(machine.memory_free, machine.memory_total - machine.reserved_memory)
    if memory > room:
        return "wait", (f"waiting for memory: needs {gb(memory)} on {device}, {gb(max(room, 0))} free "
                        f"beside the running jobs ({gb(machine.reserved_memory)} reserved by them)")
    disk_room = machine.disk_free - machine.reserved_disk
    if disk > disk_room:
        return "wait", (f"waiting for disk: needs {gb(disk)}, {gb(max(disk_room, 0))} free beside "
                        "the running jobs")
    return "fits", ""

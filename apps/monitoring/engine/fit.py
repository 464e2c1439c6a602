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


def place(needs: dict, devices: dict[str, Machine | None]) -> str | None:
    """The device among `devices` (name -> its reading, None when unreadable) where the job
    fits now, the one with the most memory left over; None when it fits on none now."""
    memory = int(needs.get("memory") or 0)
    best, best_room = None, None
    for name, machine in devices.items():
        if machine is None or fit_check({**needs, "device": name}, machine)[0] != "fits":
            continue
        room = min(machine.memory_free, machine.memory_total - machine.reserved_memory) - memory
        if best_room is None or room > best_room:
            best, best_room = name, room
    return best


def placement(needs: dict, devices: dict[str, Machine | None], *, here: str,
              busy: frozenset[str] | set[str] = frozenset()) -> tuple[str, str | None, str]:
    """Where a GPU job should go, seen from the worker on device `here` (one of `devices`,
    the devices whose workers could take it; `busy`: those whose worker runs a job now, so
    cannot take another yet). Returns (verdict, device, why):

    - ("here", here, ""): it fits on this worker's device now (or that device cannot be read);
    - ("elsewhere", device, why): it fits on another device now, or can never fit here but can
      there once that device has room: leave it for that device's worker;
    - ("wait", None, why): it fits nowhere now, but here once the running jobs have ended;
    - ("never", None, why): it fits on none of the devices even when they are empty.
    """
    mine = devices.get(here)
    if mine is None:
        return "here", here, ""
    verdict, why_here = fit_check({**needs, "device": here}, mine)
    if verdict == "fits":
        return "here", here, ""
    others = {name: m for name, m in devices.items() if name != here}
    now = place(needs, {name: m for name, m in others.items() if name not in busy})
    if now is not None:
        return "elsewhere", now, f"fits on {now} now, not on {here}: {why_here}"
    if verdict == "wait":
        return "wait", None, why_here
    later = [name for name, m in sorted(others.items()) if m is not None
             and fit_check({**needs, "device": name}, m)[0] == "wait"]
    if later:
        return "elsewhere", later[0], f"waiting for room on {later[0]}; on {here} it {why_here}"
    readings = [(name, m) for name, m in sorted(devices.items()) if m is not None]
    sizes = ", ".join(f"{name} has {gb(m.memory_total)} in all" for name, m in readings)
    memory = int(needs.get("memory") or 0)
    if all(memory > m.memory_total for _, m in readings):
        return "never", None, f"needs {gb(memory)} of GPU memory; {sizes}"
    return "never", None, why_here

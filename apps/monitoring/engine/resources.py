"""One reading of CPU, RAM, disk and GPU use. No torch: GPUs come from NVML (the
`nvidia-ml-py` package, in process, cheap enough for a reading every 2 s), or from
`nvidia-smi` where NVML cannot be loaded."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_GPU_FIELDS = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu"


@dataclass
class ResourceReading:
    cpu_percent: float
    ram_used: int
    ram_total: int
    disk_free: int
    disk_total: int
    gpus: list[dict] = field(default_factory=list)


_nvml_state: dict = {}  # "ok": True once initialised, False once it failed (not retried)


def read_gpus_nvml() -> list[dict] | None:
    """Each GPU's utilisation, memory and temperature through NVML; None when NVML is not
    there (no package, no driver), so the caller can fall back."""
    if _nvml_state.get("ok") is False:
        return None
    try:
        import pynvml

        if not _nvml_state.get("ok"):
            pynvml.nvmlInit()
            _nvml_state["ok"] = True
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append({
                "index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                "util_percent": float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                "mem_used_mb": round(mem.used / 2**20, 1), "mem_total_mb": round(mem.total / 2**20, 1),
                "temp_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
            })
        return gpus
    except Exception:  # ImportError, NVMLError (no driver, a GPU gone): not usable now
        if not _nvml_state.get("ok"):
            _nvml_state["ok"] = False
        return None


def read_gpus(nvidia_smi: str | None = None) -> list[dict]:
    if nvidia_smi is None:
        found = read_gpus_nvml()
        if found is not None:
            return found
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={_GPU_FIELDS}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            continue
        idx, name, util, used, total, temp = parts
        gpus.append({
            "index": int(idx), "name": name, "util_percent": _num(util),
            "mem_used_mb": _num(used), "mem_total_mb": _num(total), "temp_c": _num(temp),
        })
    return gpus


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_resources(disk_path: Path) -> ResourceReading:
    mem = psutil.virtual_memory()
    disk = shutil.disk_usage(disk_path)
    return ResourceReading(
        cpu_percent=psutil.cpu_percent(interval=None),
        ram_used=mem.total - mem.available,
        ram_total=mem.total,
        disk_free=disk.free,
        disk_total=disk.total,
        gpus=read_gpus(),
    )

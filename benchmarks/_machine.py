"""Describe the machine a benchmark ran on (recorded next to every number)."""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def machine() -> dict[str, str]:
    """CPU model, cores, python/torch versions, threads and GPU (if any)."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "torch": torch.__version__, "threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def machine_line() -> str:
    m = machine()
    return ", ".join(f"{k}: {v}" for k, v in m.items())

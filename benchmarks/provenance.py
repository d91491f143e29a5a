"""Where a benchmark's figures come from: the machine, the versions of everything that computed them, the commit.

Every result file of ``benchmarks/`` records this beside its figures, so a number in README or docs can be traced
to the code and libraries that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def git_revision() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes; None where there is no git checkout."""
    def git(*arguments: str) -> str | None:
        try:
            completed = subprocess.run(["git", *arguments], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                                       timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return completed.stdout.strip() if completed.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_machine(device: str) -> dict[str, Any]:
    """Where the figures come from: the device and the versions of everything that computed them."""
    import accelerate
    import datasets
    import transformers

    from hf_pcoh.version import __version__ as hf_pcoh_version

    machine: dict[str, Any] = {"device": device}
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(torch.device(device))
        machine.update(gpu=properties.name, gpu_memory_bytes=properties.total_memory, cuda=torch.version.cuda)
    else:
        machine.update(gpu=None, cpu=f"{cpu_name()}, {os.cpu_count()} cores")
    machine.update(torch=torch.__version__, transformers=transformers.__version__, accelerate=accelerate.__version__,
                   datasets=datasets.__version__, hf_pcoh=hf_pcoh_version, python=platform.python_version(),
                   **git_revision())
    return machine

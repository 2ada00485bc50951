"""What a figure was measured on, in words a reader can look up and set beside another machine's.

Throughput and 10-minute figures depend on the processor as much as on the code: the same command ran twice as
many HVAE steps on a 2-vCPU AMD EPYC with AVX-512 as on one with AVX2 alone (docs/baselines.md). ``"cpu"`` says
none of this, so ``metrics.json``, the model card and the benchmarks' JSON name the CPU's model, its family and the
vector and matrix instructions that decide its speed, and the number of threads torch used.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

#: /proc/cpuinfo flags that decide the speed of fp32 and bf16 convolutions, with the name they are known by. Of
#: AVX2 and AVX-512 only the widest is named.
CPU_INSTRUCTION_SETS = (("avx512f", "AVX-512"), ("avx2", "AVX2"))
CPU_EXTRAS = (("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16"))


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The fields of the first processor in a /proc/cpuinfo text (``model name``, ``cpu family``, ``flags``, ...)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_description(cpuinfo: str | None = None, threads: int | None = None) -> str:
    """E.g. ``"AMD EPYC (family 26 model 2; AVX-512, AVX-512 BF16), 2 threads"``. ``cpuinfo``: a /proc/cpuinfo
    text (default: this machine's, where there is one); ``threads``: default ``torch.get_num_threads()``."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        try:
            cpuinfo = path.read_text() if path.is_file() else ""
        except OSError:
            cpuinfo = ""
    fields = parse_cpuinfo(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    details = []
    if "cpu family" in fields:
        details.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    flags = set(fields.get("flags", "").split())
    widest = next((label for flag, label in CPU_INSTRUCTION_SETS if flag in flags), None)
    features = ([widest] if widest else []) + [label for flag, label in CPU_EXTRAS if flag in flags]
    if features:
        details.append(", ".join(features))
    threads = torch.get_num_threads() if threads is None else threads
    described = f"{name} ({'; '.join(details)})" if details else name
    return f"{described}, {threads} thread{'s' if threads != 1 else ''}"


def device_description(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, the CPU's description (``cpu_description``) for the CPU, else the device
    type."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_description()
    return device.type

"""Pinned CPU numerics for zoo builds: for a seed, the same weights on every Intel x86-64 CPU with AVX2.

torch picks its CPU kernels by the instructions the CPU has (``ATEN_CPU_CAPABILITY``: ``default``, ``avx2``,
``avx512``), and Intel MKL, which does torch's float32 matrix products, picks its own code path the same way.
Their results differ in the last bits, and the toy training turns last bits into other models: the micro zoo's
addition specialist scored 0.77 (avx2), 0.84 (default) and 0.54 (default, MKL's SSE2 path) on one machine
(benchmarks/results/zoo_build.md). A build therefore runs in a child process whose environment pins, before
torch is imported:

* ``ATEN_CPU_CAPABILITY=default``: ATen's portable kernels, which every x86-64 CPU runs alike;
* ``MKL_CBWR=AVX2``: MKL's conditional numerical reproducibility, its AVX2 code path on every Intel CPU that
  has AVX2 (since 2013), AVX-512 ones included. MKL applies it to Intel CPUs only: on AMD CPUs it takes its
  AUTO branch, and an AMD EPYC built other weights than an Intel Xeon (benchmarks/results/zoo_build.md).
  ``COMPATIBLE`` (the SSE2 path, which MKL documents for "Intel and compatible" CPUs) made the small zoos'
  builds 3-4x slower and is not verified across vendors;
* ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``: float sums differ between 1 and 2 threads;

and removes what would override them (``MKL_ENABLE_INSTRUCTIONS``, ``MKL_DEBUG_CPU_TYPE``). Inside the child
oneDNN is off (:func:`apply_in_child`), so the vision zoo's patch convolution runs through ATen and MKL too.
The build also seeds every draw and asks torch for deterministic algorithms
(:func:`hm3.zoo.build.deterministic`). What the child ran with is recorded in ``zoo.json`` (``numerics``).
Not covered: x86-64 CPUs without AVX2, other architectures (aarch64 kernels may fuse multiply-adds), other
torch or MKL versions.
"""

from __future__ import annotations

import os
from typing import Any

import torch

PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
"""The environment a zoo build's process starts with (read by torch and MKL when they load)."""

OVERRIDES = ("MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")
"""Variables that would change MKL's code path under :data:`PORTABLE_ENV`; the child starts without them."""


def portable_environment() -> dict[str, str]:
    """This process's environment with :data:`PORTABLE_ENV` laid over it, for the build's child process."""
    kept = {key: value for key, value in os.environ.items() if key not in OVERRIDES}
    return {**kept, **PORTABLE_ENV}


def apply_in_child() -> dict[str, Any]:
    """Finish pinning inside the build's child process and return what is in force (for ``zoo.json``).

    Raises:
        RuntimeError: The process did not start with :data:`PORTABLE_ENV` (torch already chose its kernels).
    """
    wrong = {key: os.environ.get(key) for key, value in PORTABLE_ENV.items() if os.environ.get(key) != value}
    wrong.update({key: os.environ[key] for key in OVERRIDES if key in os.environ})
    if wrong:
        raise RuntimeError(f"zoo build process started without the portable environment: {wrong}")
    torch.backends.mkldnn.enabled = False
    return current_numerics()


def current_numerics() -> dict[str, Any]:
    """The settings that decide this process's float results: CPU capability, MKL's path, threads, oneDNN."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability().lower(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "native"),
        "threads": torch.get_num_threads(),
        "onednn": bool(torch.backends.mkldnn.enabled),
        "torch": torch.__version__.split("+")[0],
    }

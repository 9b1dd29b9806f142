"""This machine's matmul peak: GFLOP/s of large square matmuls in fp32 and bf16, at torch's thread count.

Run by hand, or imported by the framework benchmarks (``grpo_vs_trl.py``, ``dpo_vs_trl.py``), which
measure it in the same invocation as their training runs and report each stage's achieved
GFLOP/s as a fraction of it::

    .venv/bin/python benchmarks/peak.py [--threads 1] [--sizes 1024,1536,2048] [--reps 3] [--json PATH]

What is measured: ``a @ b`` for ``n × n`` matrices (``2·n³`` FLOPs), one warm-up call, then the
best of ``reps`` timed calls, for each ``n``; a dtype's peak is its best over the sizes. The best
call rather than the mean, because the machine may be shared and a call slowed by another
process says nothing about what the cores can do. This is the *achievable* peak of torch's own
kernels (oneDNN / MKL) at this thread count, not a datasheet figure: it is what a training step's
matmuls could at best reach, so "achieved ÷ peak" says how much of a step is matmul work running
at full speed and how much is everything else (Python, small kernels, memory traffic, waiting).

bf16 is ``torch.bfloat16`` inputs and output, the matmul ``torch.autocast`` runs under
bf16-mixed. Where the CPU has no native bf16 (``AVX512_BF16`` / AMX), torch emulates it and the
bf16 figure falls below fp32's; ``torch.backends.cpu.get_cpu_capability()`` (printed) names the
kernel level torch picked, which does not itself say whether AVX512-BF16 or AMX is there, so the
bf16/fp32 ratio is the figure to read. ``posttrain``'s ``precision=auto`` makes the same kind of
measurement (a 512×512 matmul, ``posttrain/training/precision.py``) to decide.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_SIZES = (1024, 1536, 2048)
# A size's timed calls stop early once they have used this many seconds (emulated bf16 on an old
# CPU can take seconds per 2048-matmul); the warm-up and at least one timed call always run.
MAX_SECONDS_PER_SIZE = 5.0


def matmul_gflops(n: int, dtype: torch.dtype, reps: int = 3, max_seconds: float = MAX_SECONDS_PER_SIZE) -> float:
    """Best GFLOP/s of an ``n × n`` by ``n × n`` matmul in ``dtype`` over ``reps`` calls, after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: dispatch, kernel selection, page faults of `out`
    best = float("inf")
    spent = 0.0
    for _ in range(max(1, reps)):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
        if spent > max_seconds:
            break
    return 2 * n**3 / best / 1e9


def measure(sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES, reps: int = 3, threads: int | None = None,
            dtypes: tuple[str, ...] | list[str] = ("fp32", "bf16")) -> dict:
    """The machine's matmul peak per dtype at ``threads`` torch threads (None: the current count).

    Returns {"cpu_capability", "threads", "sizes", "reps", "seconds" (the measurement's own wall
    time), "gflops": {dtype: {str(n): GFLOP/s}}, "peak_gflops": {dtype: best over the sizes},
    "bf16_over_fp32" (None unless both were measured)}. The thread count is restored afterwards.
    """
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"peak: unknown dtypes {unknown}; choose from {sorted(DTYPES)}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        gflops = {d: {str(n): matmul_gflops(n, DTYPES[d], reps) for n in sizes} for d in dtypes}
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    peak = {d: max(by_size.values()) for d, by_size in gflops.items()}
    return {
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "threads": used_threads,
        "sizes": list(sizes),
        "reps": reps,
        "seconds": time.perf_counter() - started,
        "gflops": gflops,
        "peak_gflops": peak,
        "bf16_over_fp32": peak["bf16"] / peak["fp32"] if {"fp32", "bf16"} <= set(peak) else None,
        "load": os.getloadavg()[0],
    }


def format_table(result: dict, prefix: str = "") -> str:
    """A few lines: capability and threads, GFLOP/s per size and dtype, the peaks and their ratio."""
    sizes = [str(n) for n in result["sizes"]]
    lines = [f"{prefix}matmul peak: CPU capability {result['cpu_capability']}, {result['threads']} torch threads, "
             f"best of {result['reps']} after a warm-up, 1-min load {result['load']:.2f} "
             f"({result['seconds']:.1f} s)",
             f"{prefix}  {'GFLOP/s':8s}" + "".join(f"{'n=' + n:>10s}" for n in sizes) + f"{'peak':>10s}"]
    for dtype, by_size in result["gflops"].items():
        lines.append(f"{prefix}  {dtype:8s}" + "".join(f"{by_size[n]:>10.1f}" for n in sizes)
                     + f"{result['peak_gflops'][dtype]:>10.1f}")
    if result["bf16_over_fp32"] is not None:
        lines.append(f"{prefix}  bf16 / fp32 peak: {result['bf16_over_fp32']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current count)")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated matrix sizes n")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per size (the best counts)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here as JSON")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
    if not sizes or min(sizes) < 1 or args.reps < 1:
        parser.error("need at least one size >= 1 and --reps >= 1")
    result = measure(sizes, args.reps, args.threads)
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

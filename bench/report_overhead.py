"""What the porting report costs per op when it is off (and, for reference, when it is on).

    python bench/report_overhead.py                # 7 fresh processes per variant
    python bench/report_overhead.py --processes 3  # quicker

Times ``x + y`` on 16-element emulated cuda tensors in fresh interpreters, the variants taking
turns: torchdevice alone; torchdevice with ``torchdevice.report`` imported (the report off, which
must leave the per-op path as it was); and the report on (its wrappers and op census active).
Each process reports the median of several repeats; the table gives the median over processes and
each variant's ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import torchdevice
import torch
variant, number, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if variant != "plain":
    import torchdevice.report
if variant == "report-on":
    torchdevice.report.start(None, ops=True)
x, y = torch.randn(16, device="cuda"), torch.randn(16, device="cuda")
for _ in range(2000):
    x + y
times = []
for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(number):
        x + y
    times.append((time.perf_counter() - start) / number)
print(json.dumps({"us_per_op": statistics.median(times) * 1e6}))
"""

VARIANTS = {
    "plain": "torchdevice, report module not imported",
    "imported": "torchdevice, report module imported (off)",
    "report-on": "report on (wrappers + op census), reference",
}


def run_child(variant: str, number: int, repeats: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHDEVICE_", "TORCH_DEVICE_"))}
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(number), str(repeats)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["us_per_op"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=7, help="fresh processes per variant (default 7)")
    parser.add_argument("--number", type=int, default=20000, help="ops per timed repeat (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per process (default 5)")
    args = parser.parse_args()

    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.processes):
        for variant in VARIANTS:  # take turns: drift in machine load hits every variant alike
            results[variant].append(run_child(variant, args.number, args.repeats))

    base = statistics.median(results["plain"])
    print(f"x + y, 16-element float32 tensors on emulated cuda:0; median over {args.processes} fresh processes "
          f"(each the median of {args.repeats} x {args.number} ops)")
    for variant, title in VARIANTS.items():
        med = statistics.median(results[variant])
        spread = f"{min(results[variant]):.2f}-{max(results[variant]):.2f}"
        print(f"  {title:<44} {med:6.2f} us/op  (range {spread})  ratio {med / base:.3f}")
    ratio_off = statistics.median(results["imported"]) / base
    # Paired by turn: each "imported" process against the "plain" one of the same turn.
    paired = statistics.median(i / p for i, p in zip(results["imported"], results["plain"]))
    print(f"report off: ratio {ratio_off:.3f} (paired by turn: {paired:.3f})")


if __name__ == "__main__":
    main()

"""Prints the conformance figures: ``python tests/conformance/run.py [ops|modules|optim|all] [--only NAME ...]``.

The device under test is emulated cuda; ``TORCHDEVICE_EMULATE=mps python tests/conformance/run.py``
runs the same sweep against emulated mps.

Every case whose samples are not all identical is listed; cases in known_differences.txt are
reported separately with their reason. Exit status 1 if any unexplained difference remains.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import torchdevice  # noqa: E402,F401 - before torch: activates the emulated device

import torch  # noqa: E402

from tests.conformance import harness  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suite", nargs="?", default="all", choices=["ops", "modules", "optim", "all"])
    parser.add_argument("--only", nargs="*", help="restrict to these op / module / optimizer names")
    parser.add_argument("--json", type=pathlib.Path, help="write per-case results here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    names = set(args.only) if args.only else None
    known = harness.load_known_differences()

    runs = []
    if args.suite in ("ops", "all"):
        runs.append(("ops", (lambda: (harness.run_opinfo(op, dt) for op, dt in harness.opinfo_cases(names)))))
    if args.suite in ("modules", "all"):
        runs.append(("modules", (lambda: (harness.run_moduleinfo(mi) for mi in harness.moduleinfo_cases(names)))))
    if args.suite in ("optim", "all"):
        runs.append(("optim", (lambda: (harness.run_optiminfo(oi, impl) for oi, impl in harness.optiminfo_cases(names)))))

    all_results = []
    unexplained = 0
    for suite, make in runs:
        start = time.time()
        samples = identical = cases = cases_ok = unsupported = 0
        for r in make():
            all_results.append(r)
            cases += 1
            samples += r.samples
            identical += r.identical
            unsupported += r.unsupported
            cases_ok += r.ok
            if not r.ok:
                reason = known.get(r.case)
                tag = f"KNOWN ({reason})" if reason else "DIFF"
                unexplained += reason is None
                print(f"  {tag} {r.case}: {r.identical}/{r.samples}; {r.failures[0] if r.failures else ''}", flush=True)
            elif args.verbose:
                print(f"  ok {r.case}: {r.identical}/{r.samples}", flush=True)
        pct = 100.0 * identical / samples if samples else 100.0
        device = harness.DEVICE
        extra = f", {unsupported} samples unsupported on {device} (float64; they raise as on a Mac)" if unsupported else ""
        print(f"{suite} on {device}: {identical}/{samples} samples identical ({pct:.2f}%), {cases_ok}/{cases} cases "
              f"fully identical{extra} [{time.time() - start:.0f}s, torch {torch.__version__}]", flush=True)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in all_results], indent=1))
    print(f"unexplained differences: {unexplained}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())

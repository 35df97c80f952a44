"""PyTorch's own device-generic tests, cuda instantiation against cpu: ``python tests/pytorch_suite/run.py``.

Each file in the PyTorch test folder (default ``../shared/pytorch-tests`` beside the repository;
``--tests-dir`` or ``TORCHDEVICE_PYTORCH_TESTS`` to change it) runs twice with this interpreter's
pytest: its CPU classes on plain torch (``-k CPU``), and its CUDA classes on the emulated device
(``TORCH_DEVICE_BACKEND=cpu``, ``-k CUDA``). Tests are matched by name with the device removed.
The figure is (passed on cpu AND passed on cuda) / (passed on cpu); CUDA-only tests (no cpu twin,
e.g. test_cuda's TestCuda) are counted apart.

Every cpu-passing test that does not pass on cuda, and every CUDA-only test that fails, must be
listed with its reason in ``known_differences.txt`` (beside this file); entries marked ``skip``
are skipped on the emulated device by ``plugin.py`` with that reason. Exit status 1 when a
difference is unexplained, a listed one no longer happens, or the figure is under ``--min``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_TESTS_DIR = REPO.parent / "shared" / "pytorch-tests"
KNOWN = HERE / "known_differences.txt"

# Which tests of a file take part: a `-k` expression per file (None: all of it). test_modules'
# whole file takes about an hour on two cores; its forward tests are the part measured.
SUBSETS = {"test_modules.py": "test_forward"}

# Variables of a developer's shell that would change either run.
_CLEARED_ENV = ("TORCH_DEVICE_BACKEND", "TORCHDEVICE_EMULATE", "TORCHDEVICE_DEVICE_COUNT", "CUDA_VISIBLE_DEVICES",
                "TORCHDEVICE_REPORT", "TORCHDEVICE_LOG_LEVEL", "PYTORCH_TESTING_DEVICE_ONLY_FOR")

_DTYPE_SUFFIX = re.compile(r"_(float|bfloat|int|uint|complex|bool|qint|quint)\d*(x\d+)?$")
_DEVICE_IN_NAME = re.compile(r"(CPU|CUDA)(?=$|\.|::)|_(cpu|cuda)(?=$|_|\[)")


def normalized(test_id: str) -> str:
    """``TestFooCUDA::test_bar_cuda_float32`` -> ``TestFoo::test_bar_float32``."""
    return _DEVICE_IN_NAME.sub("", test_id)


@dataclasses.dataclass
class Outcome:
    status: str  # passed | failed | skipped
    detail: str = ""


def parse_junit(path: pathlib.Path) -> dict[str, Outcome]:
    """{``Class::test``: outcome} from a pytest junit XML file."""
    results: dict[str, Outcome] = {}
    for part in (path, _serial_xml(path)):
        if part.exists():
            results.update(_parse_one(part))
    return results


def _serial_xml(xml: pathlib.Path) -> pathlib.Path:
    return xml.with_suffix(".serial.xml")


def _parse_one(path: pathlib.Path) -> dict[str, Outcome]:
    results: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        test_id = f"{cls}::{case.get('name')}"
        outcome = Outcome("passed")
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = Outcome("failed", (child.get("message") or "").splitlines()[0][:200] if child.get("message") else "")
                break
            if child.tag == "skipped":
                outcome = Outcome("skipped", (child.get("message") or "")[:200])
        results[test_id] = outcome
    return results


@dataclasses.dataclass
class KnownDifference:
    kind: str  # differs | skip
    reason: str


def load_known(path: pathlib.Path = KNOWN) -> dict[str, KnownDifference]:
    """``FILE::CUDA test id | differs|skip | reason`` lines; '#' starts a comment."""
    known: dict[str, KnownDifference] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|", 2)]
        if len(parts) != 3 or parts[1] not in ("differs", "skip") or not parts[2]:
            raise ValueError(f"{path}:{lineno}: expected 'FILE::TEST | differs|skip | reason', got {raw!r}")
        known[parts[0]] = KnownDifference(parts[1], parts[2])
    return known


def run_pytest(python: str, test_file: pathlib.Path, device: str, out_dir: pathlib.Path, timeout: int) -> pathlib.Path:
    """One pytest run of `test_file`'s classes for `device` (cpu: plain torch; cuda: emulated)."""
    xml = out_dir / f"{test_file.stem}.{device}.xml"
    log = out_dir / f"{test_file.stem}.{device}.log"
    selector = "CPU" if device == "cpu" else "CUDA"
    subset = SUBSETS.get(test_file.name)
    keyword = f"{selector} and {subset}" if subset else selector
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the test folder may be read-only
    if device == "cuda":
        env["TORCH_DEVICE_BACKEND"] = "cpu"
        env["TORCHDEVICE_KNOWN_DIFFERENCES"] = str(KNOWN)
    cmd = [python, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider", "--timeout", str(timeout),
           "-k", keyword, "-o", "junit_family=xunit1"]
    if device == "cuda":
        cmd += ["-p", "tests.pytorch_suite.plugin"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # @serialTest tests (pytest mark "serial") run in a process of their own, as PyTorch's CI
    # runs them: some expect process-wide counters no other test has touched (host_memory_stats).
    runs = [([], xml)]
    if "@serialTest" in test_file.read_text():
        runs = [(["-m", "not serial"], xml), (["-m", "serial"], _serial_xml(xml))]
    with open(log, "w") as f:
        for extra, junit in runs:
            subprocess.run(cmd + extra + [f"--junitxml={junit}"], cwd=test_file.parent, env=env, stdout=f,
                           stderr=subprocess.STDOUT)
    return xml


# Skip reasons of PyTorch's device-type decorators that skip a test on every GPU (onlyCPU, and
# tests marked as not meaningful for CUDA): such a test is not a cuda test, so it is left out of the
# figure (and counted as "n/a"). Any other skip of a cpu-passing test counts against the figure.
_SKIPPED_ON_EVERY_GPU = ("Only runs on cpu", "CUDA asserts instead of raising an exception")


@dataclasses.dataclass
class FileReport:
    name: str
    cpu_passing: int = 0
    also_cuda: int = 0
    fail_cuda: int = 0
    skip_cuda: int = 0
    not_applicable: int = 0  # cpu-passing, but skipped for cuda by the test itself (as on a GPU)
    cpu_only: int = 0  # cpu-passing tests of classes instantiated for cpu alone
    cuda_only: dict[str, int] = dataclasses.field(default_factory=lambda: {"passed": 0, "failed": 0, "skipped": 0})
    # (cuda test id, status, detail) of every difference; known ones carry their reason.
    differences: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @property
    def measured(self) -> int:
        """The figure's denominator: cpu-passing tests that exist as cuda tests."""
        return self.cpu_passing - self.not_applicable


def _class_of(test_id: str) -> str:
    return test_id.split("::", 1)[0]


def compare(name: str, cpu: dict[str, Outcome], cuda: dict[str, Outcome]) -> FileReport:
    report = FileReport(name)
    cpu_by_name = {normalized(k): v for k, v in cpu.items()}
    for test_id, outcome in sorted(cuda.items()):
        twin = cpu_by_name.get(normalized(test_id))
        if twin is None:
            report.cuda_only[outcome.status] += 1
            if outcome.status == "failed" or (outcome.status == "skipped" and "torchdevice:" in outcome.detail):
                report.differences.append((test_id, outcome.status, outcome.detail))
            continue
        if twin.status != "passed":
            continue
        report.cpu_passing += 1
        if outcome.status == "passed":
            report.also_cuda += 1
        elif outcome.status == "skipped" and outcome.detail.startswith(_SKIPPED_ON_EVERY_GPU):
            report.not_applicable += 1
        else:
            report.fail_cuda += outcome.status == "failed"
            report.skip_cuda += outcome.status == "skipped"
            report.differences.append((test_id, outcome.status, outcome.detail))
    # cpu-passing tests with no cuda counterpart: a class the file instantiates for cpu alone, or
    # a test instantiated for other dtypes on cuda (@dtypesIfCUDA): not cuda tests, counted apart.
    cuda_names = {normalized(k) for k in cuda}
    cuda_classes = {_class_of(k) for k in cuda_names}
    cuda_bases = {_DTYPE_SUFFIX.sub("", k) for k in cuda_names}
    for norm, outcome in sorted(cpu_by_name.items()):
        if outcome.status != "passed" or norm in cuda_names:
            continue
        if _class_of(norm) not in cuda_classes:
            report.cpu_only += 1
            continue
        if _DTYPE_SUFFIX.search(norm) and _DTYPE_SUFFIX.sub("", norm) in cuda_bases:
            report.cpu_passing += 1
            report.not_applicable += 1
            continue
        report.cpu_passing += 1
        report.skip_cuda += 1
        report.differences.append((norm, "missing", "no cuda instantiation"))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="test files to run (default: every test_*.py in the folder)")
    parser.add_argument("--tests-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ.get("TORCHDEVICE_PYTORCH_TESTS", DEFAULT_TESTS_DIR)))
    parser.add_argument("--out", type=pathlib.Path, help="where junit XML and logs go (default: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=2, help="pytest runs at a time")
    parser.add_argument("--timeout", type=int, default=300, help="per-test timeout in seconds (pytest-timeout)")
    parser.add_argument("--min", type=float, default=99.5, help="least acceptable total figure, percent")
    parser.add_argument("--compare-only", action="store_true",
                        help="compare the junit XML already in --out instead of running pytest")
    parser.add_argument("-v", "--verbose", action="store_true", help="list known differences too")
    args = parser.parse_args(argv)

    tests_dir = args.tests_dir.resolve()
    if not tests_dir.is_dir():
        print(f"no PyTorch test folder at {tests_dir} (set --tests-dir or TORCHDEVICE_PYTORCH_TESTS)", file=sys.stderr)
        return 2
    files = [tests_dir / f for f in args.files] if args.files else sorted(tests_dir.glob("test_*.py"))
    out_dir = args.out or pathlib.Path(tempfile.mkdtemp(prefix="pytorch-suite-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    known = load_known()

    started = time.time()
    run = (lambda f, d: out_dir / f"{f.stem}.{d}.xml") if args.compare_only else (
        lambda f, d: run_pytest(sys.executable, f, d, out_dir, args.timeout))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {(f, d): pool.submit(run, f, d) for f in files for d in ("cuda", "cpu")}
        reports = []
        for f in files:
            cuda_xml = futures[(f, "cuda")].result()
            cpu_xml = futures[(f, "cpu")].result()
            reports.append(compare(f.name, parse_junit(cpu_xml), parse_junit(cuda_xml)))

    unexplained, stale = [], []
    seen = set()
    header = (f"{'file':<30} {'cpu-passing':>11} {'also cuda':>9} {'fail cuda':>9} {'skip cuda':>9} {'n/a':>5}"
              f" {'cpu-only':>8}   cuda-only (pass/fail/skip)")
    print(f"torch {_torch_version()}, tests from {tests_dir}, logs in {out_dir}")
    print(header)
    total = FileReport("total")
    for r in reports:
        only = r.cuda_only
        print(_row(r))
        for field in ("cpu_passing", "also_cuda", "fail_cuda", "skip_cuda", "not_applicable", "cpu_only"):
            setattr(total, field, getattr(total, field) + getattr(r, field))
        for k in only:
            total.cuda_only[k] += only[k]
        for test_id, status, detail in r.differences:
            key = f"{r.name}::{test_id}"
            seen.add(key)
            entry = known.get(key)
            if entry is None:
                unexplained.append(f"  {status.upper()} {key}: {detail}")
            elif args.verbose:
                print(f"  known ({entry.kind}) {key}: {entry.reason}")
    pct = 100.0 * total.also_cuda / total.measured if total.measured else 100.0
    print(_row(total))
    print(f"also pass on cuda / cpu-passing: {total.also_cuda}/{total.measured} = {pct:.2f}% "
          f"(leaving out the {total.not_applicable} n/a: skipped for cuda by the test itself, as on a GPU; "
          f"counting them: {100.0 * total.also_cuda / max(1, total.cpu_passing):.2f}%) "
          f"[{time.time() - started:.0f}s]")
    ran = {f.name for f in files}
    for key in known:
        if key.split("::", 1)[0] in ran and key not in seen:
            stale.append(f"  {key}: listed in known_differences.txt but passes now (or no longer exists)")
    if unexplained:
        print(f"unexplained differences ({len(unexplained)}):", *unexplained, sep="\n")
    if stale:
        print(f"stale known differences ({len(stale)}):", *stale, sep="\n")
    ok = not unexplained and not stale and pct >= args.min
    if pct < args.min:
        print(f"figure {pct:.2f}% is under the minimum {args.min}%")
    return 0 if ok else 1


def _row(r: FileReport) -> str:
    only = r.cuda_only
    return (f"{r.name:<30} {r.cpu_passing:>11} {r.also_cuda:>9} {r.fail_cuda:>9} {r.skip_cuda:>9} "
            f"{r.not_applicable:>5} {r.cpu_only:>8}   {only['passed']}/{only['failed']}/{only['skipped']}")


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k not in _CLEARED_ENV})
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())

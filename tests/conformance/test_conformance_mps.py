"""The conformance sweep against emulated mps (one accelerator type per process, so it runs in a
fresh interpreter with TORCHDEVICE_EMULATE=mps). Same oracle as for cuda: native CPU, bit for bit;
float64 samples, which a Mac cannot run either, are counted apart."""

import os
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).with_name("run.py")


def test_full_sweep_on_emulated_mps():
    env = {**os.environ, "TORCHDEVICE_EMULATE": "mps", "TORCH_DEVICE_BACKEND": "cpu"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run([sys.executable, str(RUN)], capture_output=True, text=True, env=env, timeout=1500)
    summary = [line for line in out.stdout.splitlines() if " on mps:" in line or "unexplained" in line]
    assert out.returncode == 0, "\n".join(summary) + "\n" + out.stdout[-4000:] + out.stderr[-2000:]
    assert len([line for line in summary if " on mps:" in line]) == 3, out.stdout[-2000:]

"""TORCHDEVICE_CUDA_CACHING=1: memory counts as CUDA's caching allocator has them (runtime/caching_model.h).

The expected figures follow the rules c10/cuda/CUDACachingAllocator.cpp documents (default
configuration): sizes rounded up to 512 bytes; requests up to 1 MiB from 2 MiB small-pool
segments; larger ones from 20 MiB segments below 10 MiB, else from segments of their size rounded
up to 2 MiB; best-fit reuse of cached blocks with splitting; cached segments released and the
allocation retried once before out of memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

KiB, MiB = 1 << 10, 1 << 20


_STATS = """
def stats():
    s = torch.cuda.memory_stats()
    return [s["allocated_bytes.all.current"], s["reserved_bytes.all.current"], s["segment.all.current"],
            s["inactive_split_bytes.all.current"], s["requested_bytes.all.current"]]
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE")}
    full_env.update({"TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_CUDA_CACHING": "1", **env})
    source = "import json, torchdevice, torch\n" + _STATS + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], env=full_env, capture_output=True, text=True, timeout=240)


def _json(code: str, **env: str):
    proc = _run(code, **env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])




def test_rounding_pools_splitting_and_empty_cache_follow_cudas_rules():
    steps = _json("""
    MiB = 1 << 20
    out = {}
    a = torch.empty(1, dtype=torch.uint8, device="cuda"); out["1 B"] = stats()
    b = torch.empty(1000, dtype=torch.uint8, device="cuda"); out["1000 B"] = stats()
    c = torch.empty(3 * MiB // 2, dtype=torch.uint8, device="cuda"); out["1.5 MiB"] = stats()
    d = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda"); out["5 MiB"] = stats()
    e = torch.empty(12 * MiB, dtype=torch.uint8, device="cuda"); out["12 MiB"] = stats()
    f = torch.empty(15 * MiB + 1, dtype=torch.uint8, device="cuda"); out["15 MiB + 1"] = stats()
    del c; out["free 1.5 MiB"] = stats()
    del f; out["free 15 MiB + 1"] = stats()
    torch.cuda.empty_cache(); out["empty_cache"] = stats()
    out["counts"] = [torch.cuda.memory_stats()[k] for k in ("num_device_alloc", "num_device_free")]
    out["allocated"] = [torch.cuda.memory_allocated(), torch.cuda.memory_reserved()]
    print(json.dumps(out))
    """)
    small, large = 2 * MiB, 20 * MiB
    # [allocated, reserved, segments, inactive split bytes, requested]
    assert steps["1 B"] == [512, small, 1, small - 512, 1]  # rounded to 512 in a new 2 MiB segment
    assert steps["1000 B"] == [1536, small, 1, small - 1536, 1001]  # carved from the same segment
    # 1.5 MiB is a large-pool request under 10 MiB: a 20 MiB segment, split (rest > 1 MiB).
    assert steps["1.5 MiB"] == [1536 + 3 * MiB // 2, small + large, 2, small - 1536 + large - 3 * MiB // 2,
                                1001 + 3 * MiB // 2]
    # 5 MiB and 12 MiB fit in what is left of that segment (best fit, no new segment).
    assert steps["5 MiB"][1:3] == [small + large, 2]
    assert steps["12 MiB"][1:3] == [small + large, 2]
    assert steps["12 MiB"][3] == small - 1536 + large - (3 * MiB // 2 + 5 * MiB + 12 * MiB)
    # 15 MiB + 1 rounds to 15 MiB + 512, which no cached block holds: a segment rounded up to 2 MiB,
    # 16 MiB, whose rest (under 1 MiB) is not split off: the whole segment counts as allocated.
    assert steps["15 MiB + 1"][0] == 1536 + 3 * MiB // 2 + 17 * MiB + 16 * MiB
    assert steps["15 MiB + 1"][4] == 1001 + 3 * MiB // 2 + 17 * MiB + 15 * MiB + 1
    assert steps["15 MiB + 1"][1:3] == [small + large + 16 * MiB, 3]
    # Freeing caches: allocated drops, reserved does not; the freed block is an inactive split.
    assert steps["free 1.5 MiB"][0] == steps["15 MiB + 1"][0] - 3 * MiB // 2
    assert steps["free 1.5 MiB"][1] == steps["15 MiB + 1"][1]
    assert steps["free 1.5 MiB"][3] == steps["15 MiB + 1"][3] + 3 * MiB // 2
    assert steps["free 15 MiB + 1"][1] == small + large + 16 * MiB
    # empty_cache releases the wholly free 16 MiB segment only (the others hold live blocks).
    assert steps["empty_cache"][1:3] == [small + large, 2]
    assert steps["counts"] == [3, 1]
    assert steps["allocated"] == steps["empty_cache"][:2]


def test_out_of_memory_after_releasing_the_cache_and_the_retry_that_succeeds():
    result = _json("""
    MiB = 1 << 20
    blocks, error = [], None
    try:
        for _ in range(100):
            blocks.append(torch.empty(24 * MiB, dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError as e:
        error = str(e)
    kept = len(blocks)
    del blocks  # cached: reserved stays
    cached = stats()
    big = torch.empty(100 * MiB, dtype=torch.uint8, device="cuda")  # fits only once the cache is released
    s = torch.cuda.memory_stats()
    print(json.dumps({"kept": kept, "error": error, "cached": cached, "after": stats(),
                      "retries": s["num_alloc_retries"], "ooms": s["num_ooms"]}))
    """, TORCHDEVICE_TOTAL_MEMORY="1GB")
    # 1 GiB less the CUDA context (1/32 of it): 992 MiB of segments; 24 MiB requests get 24 MiB ones.
    assert result["kept"] == 992 // 24
    assert result["error"].startswith("CUDA out of memory. Tried to allocate 24.00 MiB. GPU 0 has a total capacity "
                                      "of 1024.00 MiB of which 8.00 MiB is free.")  # 1024 - 32 (context) - 41 * 24
    assert "is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated" in result["error"]
    assert result["cached"][:2] == [0, result["kept"] * 24 * MiB]
    assert result["after"][:3] == [100 * MiB, 100 * MiB, 1]
    # One retry before the out-of-memory error, one that succeeded.
    assert result["retries"] == 2 and result["ooms"] == 1


def test_a_fragmented_cache_reads_as_on_a_gpu():
    result = _json("""
    MiB = 1 << 20
    xs = [torch.empty(2 * MiB, dtype=torch.uint8, device="cuda") for _ in range(10)]  # one 20 MiB segment
    full = stats()
    del xs[::2]  # every other block freed: five 2 MiB holes, none adjacent
    holes = stats()
    y = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")  # fits no hole: a new segment
    print(json.dumps({"full": full, "holes": holes, "after": stats(),
                      "split": torch.cuda.memory_stats()["inactive_split.all.current"]}))
    """)
    assert result["full"][:4] == [20 * MiB, 20 * MiB, 1, 0]  # the last block takes the rest: no split left
    assert result["holes"][:4] == [10 * MiB, 20 * MiB, 1, 10 * MiB]
    assert result["after"][1:3] == [40 * MiB, 2]
    assert result["split"] == 5 + 1  # the holes and the new segment's rest


def test_snapshot_has_the_modelled_segments_and_memory_viz_renders_them():
    result = _json("""
    from torch.cuda import _memory_viz
    torch.cuda.memory._record_memory_history(stacks="python")
    model = torch.nn.Linear(300, 300).cuda()
    model(torch.randn(8, 300, device="cuda")).sum().backward()
    snapshot = torch.cuda.memory._snapshot()
    segments = snapshot["segments"]
    blocks = [b for s in segments for b in s["blocks"]]
    allocs = [e for e in snapshot["device_traces"][0] if e["action"] == "alloc"]
    addresses = {b["address"] for b in blocks if b["state"] == "active_allocated"}
    print(json.dumps({
        "reserved": [sum(s["total_size"] for s in segments), torch.cuda.memory_reserved()],
        "allocated": [sum(b["size"] for b in blocks if b["state"] == "active_allocated"), torch.cuda.memory_allocated()],
        "states": sorted({b["state"] for b in blocks}),
        "contiguous": all(s["blocks"][0]["address"] == s["address"] and
                          all(a["address"] + a["size"] == b["address"] for a, b in zip(s["blocks"], s["blocks"][1:]))
                          for s in segments),
        "sizes": sorted({s["total_size"] for s in segments}),
        "framed": all(b["frames"] for b in blocks if b["state"] == "active_allocated"),
        "trace_addresses": all(e["addr"] in addresses or e["size"] % 512 == 0 for e in allocs),
        "rounded": all(e["size"] % 512 == 0 for e in allocs),
        "segment_actions": any(e["action"].startswith("segment") for e in snapshot["device_traces"][0]),
        "plots": [len(_memory_viz.segment_plot(snapshot)) > 0, len(_memory_viz.trace_plot(snapshot)) > 0],
    }))
    """)
    assert result["reserved"][0] == result["reserved"][1]
    assert result["allocated"][0] == result["allocated"][1]
    assert result["states"] == ["active_allocated", "inactive"]
    assert result["contiguous"] and result["framed"] and result["rounded"] and result["trace_addresses"]
    assert set(result["sizes"]) <= {2 * MiB, 20 * MiB}
    assert not result["segment_actions"]
    assert result["plots"] == [True, True]


@pytest.mark.parametrize(("env", "message"), [
    ({"TORCHDEVICE_CUDA_CACHING": "yes"}, "TORCHDEVICE_CUDA_CACHING='yes' is not valid: 1 models CUDA's caching"),
    ({"TORCHDEVICE_TOTAL_MEMORY": "24XB"}, "TORCHDEVICE_TOTAL_MEMORY='24XB' is not a memory size"),
])
def test_bad_settings_are_refused_naming_the_value(env, message):
    proc = _run("torch.empty(1, device='cuda')", **env)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]


def test_total_memory_takes_binary_units():
    sizes = _json("print(json.dumps([torch.cuda.get_device_properties(0).total_memory, torch.cuda.mem_get_info()]))",
                  TORCHDEVICE_TOTAL_MEMORY="24GB")
    assert sizes[0] == 24 << 30
    assert sizes[1][1] == 24 << 30 and sizes[1][0] == (24 << 30) - (512 << 20)  # the CUDA context's share

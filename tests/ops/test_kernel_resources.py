"""The time-parallel scan kernels (time and lanes) compiled for an H100/H200 (sm_90) without a
GPU: they compile, and their registers leave room for at least 16 one-warp programs an SM (at most 128 a thread):
the layout was chosen for that (scripts/kernel_resources.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_time_kernels_compile_for_sm90_within_128_registers(dtype):
    import kernel_resources as kr

    types = {n: "*" + dtype for n in kr.HALF_ARGS}
    kernels = [k for k in kr.scan_kernels(dtype) if k[0].startswith("time")]
    assert [k[0] for k in kernels] == ["time fwd", "time bwd"]
    for name, fn, consts, warps, stages in kernels:
        r = kr.resources(kr.compile_for(fn, consts, types, 90, warps, stages))
        assert r["instructions"] > 100 and r["mufu"] > 0, (name, r)
        assert r["registers"] <= 128, (name, r)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lanes_kernels_compile_for_sm90_without_spills(dtype):
    """The default kernels (triton_lanes, CONFIG's settings) compile for sm_90 with nothing
    spilled but the forward's 8 bytes under its cap of 64 registers (``lanes_fwd_maxnreg``: 32
    programs an SM, which timed faster than 68 registers and no stack), within 128 registers (the
    backward capped there by ``lanes_bwd_maxnreg``), and with
    their chunk's steps scanned in the thread: the backward's whole code holds at most 40
    shuffles for each state of a loop step and copy of the state loop (two scans across a
    channel's 16 lanes on the lanes' summaries, two exchanges with a neighbour lane, dB and dC
    exchanged between the warp's two channels, the state's held values, dA's merges, and dD and
    d(delta_bias)'s sums at the end; sm_90: 68 for two copies), where the time kernels' holds 46
    a state (their scans and reversals over every value)."""
    import kernel_resources as kr

    kernels = [k for k in kr.scan_kernels(dtype) if k[0].startswith("lanes")]
    assert [k[0] for k in kernels] == ["lanes fwd", "lanes bwd"]
    for name, fn, consts, warps, stages in kernels:
        types = kr.ptr_types(name, dtype)  # as launched (the forward's B and C cast to fp32)
        cap = kr.config_maxnreg(name)
        r = kr.resources(kr.compile_for(fn, consts, types, 90, warps, stages, maxnreg=cap))
        assert r["stack_bytes"] <= (8 if name == "lanes fwd" else 0), (name, r)
        assert r["registers"] <= (64 if name == "lanes fwd" else 128), (name, r)
    states = 2 if consts["PREFETCH"] == 2 else consts["NU"]  # ping-pong: two states a step
    copies = 2 if consts["WHOLE"] else 1  # the state loop, and its copy for whole chunks
    assert r["shuffles"] <= 40 * states * copies, r  # the backward's


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_two_groups_of_b_and_c_cost_no_registers(dtype):
    """ConMamba's fused BiMamba hands the scan two groups of B and C: the time kernels compile
    with no more registers than with one (the group is a grid axis; found by dividing a channel
    block's index at run time it held 16-44 more)."""
    import kernel_resources as kr

    types = {n: "*" + dtype for n in kr.HALF_ARGS}
    for name, fn, consts, warps, stages in kr.scan_kernels(dtype):
        if not name.startswith(("time", "lanes")):
            continue
        one = kr.resources(kr.compile_for(fn, consts, types, 90, warps, stages))
        two = kr.resources(kr.compile_for(fn, consts, types, 90, warps, stages, ones=()))
        assert two["registers"] <= one["registers"], (name, one, two)
        assert two["stack_bytes"] <= one["stack_bytes"], (name, one, two)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_seq_kernels_compile_for_sm90_without_spills(dtype):
    """gluon_seq's kernels (one thread per (channel, state)) compile for sm_90 with nothing
    spilled and no shuffles in the forward (the states' sum goes through shared memory)."""
    import kernel_resources as kr

    from mamba_asr.ops.selective_scan import gluon_seq

    if gluon_seq.gluon is None:
        pytest.skip("this triton has no gluon (triton >= 3.4)")
    types = {n: "*" + dtype for n in kr.HALF_ARGS}
    kernels = [k for k in kr.scan_kernels(dtype) if k[0].startswith("seq")]
    assert [k[0] for k in kernels] == ["seq fwd", "seq bwd"]
    for name, fn, consts, warps, stages in kernels:
        r = kr.resources(kr.compile_for(fn, consts, types, 90, warps, stages))
        assert r["instructions"] > 100 and r["mufu"] > 0, (name, r)
        assert r["stack_bytes"] == 0 and r["registers"] <= 184, (name, r)
        if name == "seq fwd":
            assert r["shuffles"] == 0, (name, r)


@pytest.mark.parametrize(
    "overrides",
    [{"lanes_k": 8}, {"lanes_time": 8}, {"lanes_time": 32, "lanes_bwd_maxnreg": None},
     {"lanes_bwd_pingpong": True}, {"lanes_bwd_whole": True, "lanes_fwd_maxnreg": None},
     {"lanes_bwd_held": False, "lanes_bwd_whole": False, "lanes_bc_bits": False},
     {"lanes_bwd_held": True, "lanes_da_merge": True, "lanes_bwd_whole": False},
     {"lanes_bwd_held": False, "lanes_da_merge": False, "lanes_bwd_whole": False,
      "lanes_bc_bits": False},
     {"lanes_bwd_iv32": False, "lanes_bwd_shift": False},
     {"lanes_fwd_held": False, "lanes_fwd_whole": False}, {"lanes_fwd_held": False}],
    ids=["k8", "four-channels-a-warp", "one-channel-a-warp", "pingpong", "whole-forward-uncapped",
         "da-merge-alone", "held-da-merge-no-whole", "state-by-state", "counter-64-bit-carries-by-compare",
         "forward-state-by-state", "forward-whole-not-held"],
)  # fmt: skip
def test_lanes_settings_compile_for_sm90(overrides, monkeypatch):
    """Settings other than the defaults compile too (a CUDA compile error, such as a constexpr
    assigned twice, passes unseen in the interpreter)."""
    import kernel_resources as kr

    from mamba_asr.ops.selective_scan import triton_kernel as tk

    for key, value in overrides.items():
        monkeypatch.setitem(tk.CONFIG, key, value)
    for name, fn, consts, warps, stages in kr.scan_kernels("bf16"):
        if name.startswith("lanes"):
            cap = kr.config_maxnreg(name)
            r = kr.resources(
                kr.compile_for(
                    fn, consts, kr.ptr_types(name, "bf16"), 90, warps, stages, maxnreg=cap
                )  # fmt: skip
            )
            assert r["instructions"] > 100, (name, r)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lanes_backward_loop_shrinks_with_iv32_and_shift(dtype, monkeypatch):
    """lanes_bwd_iv32 keeps the state loop's counter 32-bit (LLVM widens it to 64 bits: an add
    with carry, compares in two halves, copies) and lanes_bwd_shift collects the carries without
    a compare with the state a step: the backward's state loop has fewer instructions, and no
    more registers than the cap."""
    import kernel_resources as kr

    from mamba_asr.ops.selective_scan import triton_kernel as tk

    def loop(iv32: bool) -> dict:
        monkeypatch.setitem(tk.CONFIG, "lanes_bwd_iv32", iv32)
        monkeypatch.setitem(tk.CONFIG, "lanes_bwd_shift", iv32)
        name, fn, consts, warps, stages = next(
            k for k in kr.scan_kernels(dtype) if k[0] == "lanes bwd"
        )
        return kr.resources(kr.compile_for(fn, consts, kr.ptr_types(name, dtype), 90, warps,
                                           stages, maxnreg=kr.config_maxnreg(name)))  # fmt: skip

    before, after = loop(False), loop(True)
    assert after["inner_loop"] <= before["inner_loop"] - 6, (before, after)
    assert after["registers"] <= tk.CONFIG["lanes_bwd_maxnreg"] and after["stack_bytes"] == 0

"""The Triton selective scan against the reference: on CUDA when present, else in triton's CPU
interpreter (TRITON_INTERPRET=1, in a subprocess since triton reads it at import)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers.interpreter import interpreted_json, needs_interpreter
from mamba_asr.ops.selective_scan import selective_scan_fn, selective_scan_ref
from mamba_asr.ops.selective_scan.dispatch import triton_available

pytestmark = pytest.mark.skipif(
    not triton_available(), reason="triton is not installed (pip install 'mamba-asr[cuda]')"
)

# (batch, dim, d_state, length, groups, initial_state, dtype, with z, D, delta_bias and softplus;
# optionally a ninth: whether u, delta, z, B and C lie in buffers that go on with NaNs, so that a
# kernel reading a step past the end, where only a mask keeps it out, fails; and a tenth: whether
# the kernels' graph is taken back twice, the second backward's gradients checked too)
CASES = [
    (2, 16, 16, 45, None, True, "float32", True),
    (1, 8, 5, 33, 2, False, "float32", True),
    (2, 16, 16, 1, None, False, "float32", True),
    (1, 16, 4, 64, 4, True, "float32", True),
    (2, 12, 16, 37, None, True, "float32", False),
    (2, 16, 16, 40, None, True, "bfloat16", True),
]
TOL = {"float32": 2e-4, "bfloat16": 5e-2, "float16": 2e-2}


def errors(case, device: str) -> dict[str, float]:
    """Relative max errors of out, last state and every gradient, triton vs reference."""
    batch, dim, d_state, length, groups, with_state, dtype_name, full = case[:8]
    padded = len(case) > 8 and case[8]
    twice = len(case) > 9 and case[9]
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(length * 7 + dim)

    def r(*shape, scale=1.0, dt=dtype):
        x = (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dt)
        if padded and shape[-1] == length:  # the start of a buffer that goes on with NaNs
            buf = torch.full((x.numel() + 256,), float("nan"), device=device, dtype=dt)
            x = buf[: x.numel()].copy_(x.reshape(-1)).view(shape)
        return x

    bc = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    delta = r(batch, dim, length, scale=0.5)
    args = dict(
        u=r(batch, dim, length), delta=delta if full else delta.abs() + 0.05,
        A=-torch.exp(r(dim, d_state, scale=0.5, dt=torch.float32)), B=r(*bc), C=r(*bc),
        D=r(dim, dt=torch.float32) if full else None, z=r(batch, dim, length) if full else None,
        delta_bias=r(dim, scale=0.3, dt=torch.float32) if full else None,
        initial_state=r(batch, dim, d_state, dt=torch.float32) if with_state else None,
    )  # fmt: skip
    tensors = {k: v.requires_grad_() for k, v in args.items() if v is not None}
    gout = r(batch, dim, length, dt=torch.float32)
    glast = r(batch, dim, d_state, dt=torch.float32)
    results = []
    for fn, kw in ((selective_scan_ref, {}), (selective_scan_fn, {"backend": "triton"})):
        out, last = fn(**args, delta_softplus=full, return_last_state=True, **kw)
        # without an initial state the last state is left out of the loss: its gradient is then
        # None for the kernels (no dLoss/d(last) to read), the path of a plain forward
        loss = (out.float() * gout).sum()
        if with_state:
            loss = loss + (last * glast).sum()
        grads = torch.autograd.grad(loss, list(tensors.values()), retain_graph=twice)
        results.append([out, last, *grads])
    names = ["out", "last", *[f"d{k}" for k in tensors]]
    if twice:  # the kernels' backward again on the same graph, against the reference's gradients
        results[0] += results[0][2:]
        results[1] += torch.autograd.grad(loss, list(tensors.values()))
        names += [f"d{k} again" for k in tensors]
    return {
        # floor 1e-2: where a gradient is exactly zero (dA at L=1 without a state: h_{-1} = 0) the
        # kernel's a_t h_{t-1} = h_t - x_t leaves rounding noise (4e-7 seen on an H100 in fp32)
        n: ((b.float() - a.float()).abs().max() / a.float().abs().max().clamp_min(1e-2)).item()
        for n, a, b in zip(names, *results, strict=True)
    }


@needs_interpreter
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_triton_interpreted_matches_reference(case):
    """The per-(state, channel) layout (CONFIG kernel=state)."""
    config = json.dumps({"kernel": "state"})
    _check_interpreted(case, config)


# the time-parallel kernels (CONFIG kernel=time) with chunks of 16 steps, so that the
# short cases cross chunks, and 2 states a loop step over an odd number of states (case 1: N = 5)
TIME_CONFIG = {"kernel": "time", "time_chunk": 16, "time_unroll": 2}


@needs_interpreter
@pytest.mark.parametrize(
    "case, overrides",
    [(CASES[0], {}), (CASES[1], {}), (CASES[2], {}), (CASES[5], {}), (CASES[3], {}),
     (CASES[3], {"time_batch_fast": False}),
     (CASES[1], {"time_bwd_prefetch": "scalars", "time_carry_in": True}),
     (CASES[0], {"time_bwd_prefetch": True, "time_carry_in": True}),
     (CASES[5], {"time_y_fp32": True})],
    ids=["0", "1", "2", "5", "3-four-groups", "3-four-groups-channels-fastest",
         "1-prefetch-scalars-carry-in", "0-prefetch-all-carry-in", "5-y-fp32"],
)  # fmt: skip
# (each setting once: the channels-fastest grid with four groups, the carried state folded in with
# either prefetch; the interpreter takes 10-45 s a case, and CI's time is bounded)
def test_triton_time_kernels_interpreted_match_reference(case, overrides):
    config = json.dumps({**TIME_CONFIG, **overrides})
    _check_interpreted(case, config)


def _check_interpreted(case, config: str):
    """This file run on ``case`` in the interpreter, the scan's CONFIG overridden by ``config``."""
    errs = interpreted_json(__file__, json.dumps(case), MAMBA_ASR_TRITON_SCAN_CONFIG=config)
    tol = TOL[case[6]]
    assert all(e <= tol for e in errs.values()), errs


# triton_lanes' kernels (CONFIG kernel=lanes, the default): with the defaults (4 steps a lane, four
# states a forward loop step, one a backward step loading the next ahead, two channels a backward
# warp) over three chunks of 128 (five of the backward's 64) with an odd number of states (so the
# forward's last loop step is part empty), groups and an initial state (its gradient is the first
# chunk's carry), the inputs followed by NaNs (the last chunks' steps past L stay masked); 8 steps
# a lane, four channels a program on four warps, two states a loop step in the forward and three
# (not a divisor of 16) in the backward, nothing loaded ahead, both kernels reading B and C cast
# to fp32, in bf16; the backward alternating two states' loads (ping-pong) over an odd number of
# states; the backward with one channel a warp (chunks of 128 steps; the defaults: two channels,
# chunks of 64) and with four (chunks of 32 steps, the last one part empty); every chunk's state
# loop masked along time in both kernels (lanes_bwd_whole, lanes_fwd_whole off) on inputs
# followed by NaNs, the forward without its register cap; then the defaults where their backward
# settings apply: dA's terms merged across each group of 16 states (lanes_da_merge), two groups
# (32 states); with that the state scalars held one a lane (lanes_bwd_held: 16 states, 16
# lanes), from an initial state (its gradient: the carries the lanes store); and in bf16 with B and C read as int32 words
# (lanes_bc_bits; L 76, a multiple of 4, the last chunk part empty); these collect the carries
# passed on by a shift up the lanes (lanes_bwd_shift), the held case again by a compare with the
# state (shift off); the forward (its defaults too) holding A and the entering states in its
# lanes and storing the checkpoints once a chunk (lanes_fwd_held), with whole chunks unmasked
# (lanes_fwd_whole), over two whole chunks and a part one (L 300), from an initial state, and
# with 8 states (half the lanes collect none) in two groups, there with the graph taken back
# twice. (The first case's 5 states take the other ways: summed and loaded a state, in the
# forward too, 5 not being a whole number of its loop steps. lanes_bwd_iv32 needs a GPU.)
@needs_interpreter
@pytest.mark.parametrize(
    "case, overrides",
    [((1, 8, 5, 300, 2, True, "float32", True, True), {"kernel": "lanes"}),
     (CASES[5], {"kernel": "lanes", "lanes_k": 8, "time_bd": 4, "time_warps": 4,
                 "lanes_unroll": [2, 3], "lanes_prefetch": False, "lanes_bc_fp32": "both"}),
     ((1, 8, 5, 300, 2, True, "float32", True), {"kernel": "lanes", "lanes_bwd_pingpong": True}),
     ((1, 8, 5, 300, 2, True, "float32", True), {"kernel": "lanes", "lanes_time": 32}),
     ((2, 8, 4, 75, None, False, "bfloat16", False), {"kernel": "lanes", "lanes_time": 8}),
     ((1, 8, 5, 300, 2, True, "float32", True, True),
      {"kernel": "lanes", "lanes_bwd_whole": False, "lanes_fwd_whole": False,
       "lanes_fwd_maxnreg": None}),
     ((1, 4, 32, 70, 2, True, "float32", True, True), {"kernel": "lanes"}),
     ((1, 4, 16, 100, None, True, "float32", True, True), {"kernel": "lanes"}),
     ((1, 4, 16, 76, None, True, "bfloat16", True, True), {"kernel": "lanes"}),
     ((1, 4, 16, 100, None, True, "float32", True, True),
      {"kernel": "lanes", "lanes_bwd_shift": False}),
     ((1, 4, 16, 300, None, True, "float32", True, True),
      {"kernel": "lanes", "lanes_fwd_held": True, "lanes_fwd_whole": True}),
     ((2, 4, 8, 300, 2, False, "bfloat16", False, False, True),
      {"kernel": "lanes", "lanes_fwd_held": True, "lanes_fwd_whole": True})],
    ids=["k4-three-chunks", "k8-four-channels-bf16", "k4-pingpong-odd-states",
         "k4-one-channel-a-warp", "k4-four-channels-over-the-lanes-bf16",
         "k4-every-chunk-masked-forward-uncapped", "k4-da-merged-two-groups", "k4-held-da-merged",
         "k4-held-da-merged-bc-bits-bf16", "k4-held-carries-by-compare", "k4-forward-held-whole",
         "k4-forward-held-whole-8-states-two-groups-bf16"],
)  # fmt: skip
def test_triton_lanes_kernels_interpreted_match_reference(case, overrides):
    _check_interpreted(case, json.dumps(overrides))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("length", [1, 7, 64, 333, 1024, 4099])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(
    "kernel",
    [
        "state",
        "time",
        "seq_fwd",
        "seq",
        "seq_p0",
        "seq_p2",
        "lanes",
        "lanes8",
        "lanes_pf",
        "lanes_pp",
        "lanes_t32",
        "lanes_t8",
        "lanes_bc32",
        "lanes_whole",
        "lanes_dam",
        "lanes_plain",
        "lanes_fwd_off",
    ],
)
def test_triton_cuda_matches_reference(length, dtype, kernel, monkeypatch):
    """seq: gluon_seq's forward and backward (one thread per (channel, state)), with nothing
    (seq_p0) or B and C too (seq_p2) loaded a chunk ahead; seq_fwd: its forward before the time
    kernels' backward. Each must then be what runs. lanes, lanes8: triton_lanes' kernels, 4 and 8
    steps a lane; lanes_pf: one state a loop step in both, loading ahead in both, B and C read as
    given (the defaults before 2026-12-06's second run); lanes_pp: the backward alternating two
    states' loads (lanes_bwd_pingpong); lanes_t32, lanes_t8: the backward with one channel a warp
    and with four over its lanes (lanes_time 32 and 8; the defaults: two); lanes_bc32: the
    backward reading the forward's fp32 copies of B and C (lanes_bc_fp32 "both"); lanes_whole:
    the defaults' whole chunks without masks along time (lanes_bwd_whole) after a forward without
    its register cap (lanes_fwd_maxnreg None); lanes (the defaults) also holds the state scalars one a
    lane (lanes_bwd_held) and merges dA's terms across each group of 16 states (lanes_da_merge),
    and reads bf16 B and C as int32 words (lanes_bc_bits) where L is a multiple of 4 (64, 1024),
    the second case's 8 states taking the other ways (no whole group, not one a lane), and keeps
    the backward's state loop counter 32-bit (lanes_bwd_iv32) and collects the held carries by a
    shift up the lanes (lanes_bwd_shift); lanes_dam: dA merged alone (held, whole chunks, bits
    and the 32-bit counter off); lanes_plain: all of those off but the counter (a state's
    scalars loaded and its dA summed a state, every chunk masked, B and C converted); the
    defaults also hold the forward's values in the lanes (lanes_fwd_held) and take its whole
    chunks unmasked (lanes_fwd_whole); lanes_fwd_off: the defaults with those two off. Every
    kernel's first case takes the graph back twice."""
    from mamba_asr.ops.selective_scan import triton_kernel, triton_time

    both = kernel.startswith("seq") and kernel != "seq_fwd"
    config = {"kernel": "seq" if both else kernel.replace("seq_fwd", "time"),
              "time_fwd": "seq" if kernel == "seq_fwd" else "time"}  # fmt: skip
    if kernel in ("seq_p0", "seq_p2"):
        config["seq_prefetch"] = int(kernel[-1])
    if kernel.startswith("lanes"):
        config.update(kernel="lanes", lanes_k=8 if kernel == "lanes8" else 4)
    if kernel == "lanes_pf":
        config.update(lanes_unroll=1, lanes_prefetch=True, lanes_bc_fp32=False)
    if kernel == "lanes_pp":
        config.update(lanes_bwd_pingpong=True)
    if kernel in ("lanes_t32", "lanes_t8"):
        config.update(lanes_time=int(kernel[7:]))
    if kernel == "lanes_bc32":
        config.update(lanes_bc_fp32="both")
    if kernel == "lanes_whole":
        config.update(lanes_bwd_whole=True, lanes_fwd_maxnreg=None)  # (whole: the default)
    if kernel in ("lanes_dam", "lanes_plain"):
        config.update(lanes_da_merge=kernel == "lanes_dam", lanes_bwd_held=False,
                      lanes_bwd_whole=False, lanes_bc_bits=False,
                      lanes_bwd_iv32=kernel == "lanes_plain")  # fmt: skip
    if kernel == "lanes_fwd_off":
        config.update(lanes_fwd_held=False, lanes_fwd_whole=False)
    for key, value in config.items():
        monkeypatch.setitem(triton_kernel.CONFIG, key, value)
    for case in [
        # inputs followed by NaNs, the graph taken back twice
        (2, 64, 16, length, None, True, dtype, True, True, True),
        (2, 64, 8, length, 4, False, dtype, False),
    ]:
        if kernel.startswith("seq"):
            u = torch.empty(1, device="cuda")
            plan = triton_time._seq_plan(u, case[2], 64 // (case[4] or 1), 128)
            assert plan is not None and (plan.bwd is not None) == both, plan
        errs = errors(case, "cuda")
        assert all(e <= TOL[dtype] for e in errs.values()), (case, errs)


def test_lanes_channels_a_backward_warp_divide_a_group(monkeypatch):
    """CONFIG lanes_time asks for 32 / lanes_time channels a backward warp; where they do not
    divide a group's channels (a program must stay inside one group of B and C), fewer are
    taken, down to one; other values are refused by name."""
    from mamba_asr.ops.selective_scan import triton_kernel, triton_time

    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_time", 8)
    assert triton_time._lanes_time(1024, 2) == 8  # four channels
    assert triton_time._lanes_time(6, 1) == 16  # two of six
    assert triton_time._lanes_time(6, 2) == 32  # three a group: one
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_time", 16)
    assert triton_time._lanes_time(10, 2) == 32
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_time", 12)
    with pytest.raises(ValueError, match="lanes_time"):
        triton_time._lanes_time(1024, 1)


def test_lanes_backward_settings_apply_where_they_can(monkeypatch):
    """lanes_da_merge applies where the states come in whole groups of a channel's lanes, one a
    loop step and not ping-pong (DA_LOG: log2 of the lanes); lanes_bwd_held where there are as
    many states as lanes, under the same loop; lanes_bc_bits where B and C are bf16 at whole
    words and L a multiple of 4; elsewhere they fall back (0, False)."""
    from mamba_asr.ops.selective_scan import triton_kernel, triton_time

    for key in ("lanes_da_merge", "lanes_bwd_held"):  # the defaults: on
        monkeypatch.setitem(triton_kernel.CONFIG, key, False)
    assert triton_time._lanes_da_log(16, 16) == 0 and not triton_time._lanes_held(16, 16)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_da_merge", True)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_bwd_held", True)
    assert triton_time._lanes_da_log(16, 16) == 4 and triton_time._lanes_da_log(16, 32) == 4
    assert triton_time._lanes_da_log(8, 16) == 3 and triton_time._lanes_da_log(32, 32) == 5
    assert triton_time._lanes_da_log(16, 8) == 0 and triton_time._lanes_da_log(16, 24) == 0
    assert triton_time._lanes_held(16, 16) and triton_time._lanes_held(8, 8)
    assert not triton_time._lanes_held(16, 32) and not triton_time._lanes_held(16, 8)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_unroll", [4, 2])
    assert triton_time._lanes_da_log(16, 16) == 0 and not triton_time._lanes_held(16, 16)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_unroll", [4, 1])
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_bwd_pingpong", True)
    assert triton_time._lanes_da_log(16, 16) == 0 and not triton_time._lanes_held(16, 16)
    # lanes_bc_bits: bf16 B and C at a multiple of 4 steps, fewer than 32 lanes a channel
    bf, f32 = torch.bfloat16, torch.float32
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_bc_bits", False)
    assert not triton_time._lanes_bc_bits(bf, bf, 64, 16)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_bc_bits", True)
    assert triton_time._lanes_bc_bits(bf, bf, 64, 16) and triton_time._lanes_bc_bits(bf, bf, 8, 8)
    assert not triton_time._lanes_bc_bits(bf, bf, 66, 16)  # not a multiple of 4
    assert not triton_time._lanes_bc_bits(bf, bf, 64, 32)  # one channel a warp
    assert not triton_time._lanes_bc_bits(f32, f32, 64, 16)  # fp32 B and C
    assert not triton_time._lanes_bc_bits(bf, torch.float16, 64, 16)  # not both bf16
    assert not triton_time._lanes_bc_bits(bf, bf, 64, 16, False)  # not at a whole word
    # lanes_bwd_iv32: one state a loop step, compiled for a GPU; lanes_bwd_shift: where held
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_bwd_pingpong", False)
    for key in ("lanes_bwd_iv32", "lanes_bwd_shift"):
        monkeypatch.setitem(triton_kernel.CONFIG, key, True)
    assert triton_time._lanes_iv32() == triton_kernel.fast_math()
    assert triton_time._lanes_shift(16, 16) and not triton_time._lanes_shift(16, 32)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_unroll", [4, 2])
    assert not triton_time._lanes_iv32() and not triton_time._lanes_shift(16, 16)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_unroll", [4, 1])
    for key in ("lanes_bwd_iv32", "lanes_bwd_shift"):
        monkeypatch.setitem(triton_kernel.CONFIG, key, False)
    assert not triton_time._lanes_iv32() and not triton_time._lanes_shift(16, 16)
    # lanes_fwd_held: at most lanes_time states, a whole number of the forward's loop steps (4)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_fwd_held", True)
    assert triton_time._lanes_fwd_held(16, 16) and triton_time._lanes_fwd_held(16, 8)
    assert not triton_time._lanes_fwd_held(16, 32) and not triton_time._lanes_fwd_held(16, 6)
    monkeypatch.setitem(triton_kernel.CONFIG, "lanes_fwd_held", False)
    assert not triton_time._lanes_fwd_held(16, 16)


def test_seq_kernels_apply_where_they_can(monkeypatch):
    """gluon_seq's kernels: a block (warps, channels) divides a group's channels, N is a power
    of two up to 32, and they are taken only on CUDA and when CONFIG asks for them."""
    from mamba_asr.ops.selective_scan import gluon_seq, triton_kernel, triton_time

    if gluon_seq.gluon is None:
        pytest.skip("this triton has no gluon (triton >= 3.4)")
    assert gluon_seq.seq_block(16, 1024) == (4, 8)
    assert gluon_seq.seq_block(8, 16) == (4, 16)
    assert gluon_seq.seq_block(16, 12) == (2, 4)
    assert gluon_seq.seq_block(32, 3) == (1, 1)
    assert gluon_seq.seq_block(16, 1) == (1, 2)  # the block's second channel masked
    assert gluon_seq.seq_block(5, 1024) is None and gluon_seq.seq_block(64, 1024) is None
    assert gluon_seq.seq_block(16, 8, warps=(1,)) == (1, 2)
    for key, value in (("time_fwd", "seq"), ("kernel", "seq")):
        monkeypatch.setitem(triton_kernel.CONFIG, key, value)
        assert triton_time._seq_plan(torch.empty(1), 16, 1024, 128) is None  # a CPU tensor
    monkeypatch.setitem(triton_kernel.CONFIG, "seq_chunk", 48)
    assert triton_time._seq_plan(torch.empty(1), 16, 1024, 128) is None


if __name__ == "__main__":
    print(json.dumps(errors(tuple(json.loads(sys.argv[1])), "cpu")))

"""``ops.triton_launch``: the host-side helpers against triton's, when the direct path is taken,
and on CUDA the cached launches against triton's own (a kernel under several specializations:
aligned and unaligned inputs, a count of 1, other constexprs)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def test_next_pow2_and_cdiv_match_triton():
    import triton

    from mamba_asr.ops.triton_launch import cdiv, next_pow2

    for n in [*range(0, 300), 1023, 1024, 1025, 2**20 + 1]:
        assert next_pow2(n) == max(triton.next_power_of_2(n), 1), n
        for d in (1, 3, 16, 128):
            assert cdiv(n, d) == triton.cdiv(n, d)


def test_direct_path_is_opt_in_and_off_under_the_interpreter_and_hooks(monkeypatch):
    from mamba_asr.ops import triton_launch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(triton_launch.LAUNCH_ENV, raising=False)
    assert not triton_launch._direct()  # opt-in
    monkeypatch.setenv(triton_launch.LAUNCH_ENV, "jit")
    assert not triton_launch._direct()
    monkeypatch.setenv(triton_launch.LAUNCH_ENV, "direct")
    assert triton_launch._direct()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not triton_launch._direct()
    monkeypatch.delenv("TRITON_INTERPRET")
    from triton import knobs

    hook = lambda metadata: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert not triton_launch._direct()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert triton_launch._direct()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cached_launches_equal_triton_launches_across_specializations(monkeypatch):
    from mamba_asr.ops import triton_launch
    from mamba_asr.ops.rnnt_triton import row_max_exp_triton

    monkeypatch.setenv(triton_launch.LAUNCH_ENV, "direct")
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4 * 97 * 33 + 1, generator=g).cuda()
    cases = [
        base[: 97 * 33].view(97, 33),  # aligned, 97 rows
        base[1 : 1 + 97 * 33].view(97, 33),  # 4 bytes off: not 16-byte aligned
        base[:33].view(1, 33),  # one row: N == 1 is a constexpr to triton
        base[: 64 * 16].view(64, 16),  # N and V divisible by 16
        base[: 5 * 700].view(5, 700),  # another BLOCK_V
    ]
    before = len(triton_launch._COMPILED)
    for rounds in range(3):  # the first round compiles, the others launch from the cache
        for x in cases:
            mx, ex = row_max_exp_triton(x)
            ref_max = x.amax(-1, keepdim=True)
            torch.testing.assert_close(mx, ref_max)
            torch.testing.assert_close(ex, (x - ref_max).exp())
        if rounds == 0:
            after_first = len(triton_launch._COMPILED)
    assert len(triton_launch._COMPILED) == after_first > before
    monkeypatch.setenv(triton_launch.LAUNCH_ENV, "jit")
    for x in cases:  # triton's own launches give the same
        torch.testing.assert_close(row_max_exp_triton(x)[1], (x - x.amax(-1, keepdim=True)).exp())

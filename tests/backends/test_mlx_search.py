"""The MLX searches against PyTorch's on the same encoder output of a random tiny transducer:
the same tokens, frames and scores, greedy and beam (with and without n-gram fusion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.mlx_models import model_pair, requires_mlx
from helpers.recipes import tiny_transducer_config
from mamba_asr.decode.transducer import transducer_beam_search, transducer_greedy
from mamba_asr.lm import NgramLM

pytestmark = requires_mlx

VOCAB = 9


@pytest.fixture(scope="module", params=["stateless", "lstm"])
def pair(request):
    cfg = tiny_transducer_config(vocab=VOCAB, transducer={"predictor": request.param})
    model, mlx_model = model_pair(cfg, seed=3)
    with torch.no_grad():  # sharper outputs: tokens, not only blanks (8x: exact ties)
        model.joiner.out.weight.mul_(3.0)
    from mamba_asr.backends.mlx.model import to_mx

    mlx_model.joiner.out.weight = to_mx(model.joiner.out.weight.detach().numpy())
    return model, mlx_model


def _memory(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 20, 16, generator=g) * 2, torch.tensor([20, 13, 4])


def _run_mlx(mlx_model, search, memory, lengths):
    from mamba_asr.backends.mlx.model import to_mx

    search.advance_frames(mlx_model.joiner.project_encoder(to_mx(memory)), lengths.numpy())
    return search.nbest()


def _same(torch_hyps, mlx_hyps) -> None:
    assert [h.tokens for h in mlx_hyps] == [h.tokens for h in torch_hyps]
    assert [h.frames for h in mlx_hyps] == [h.frames for h in torch_hyps]
    np.testing.assert_allclose(
        [h.score for h in mlx_hyps], [h.score for h in torch_hyps], rtol=1e-5, atol=1e-4
    )


def test_greedy_equals_pytorch(pair) -> None:
    from mamba_asr.backends.mlx.search import GreedySearch

    model, mlx_model = pair
    memory, lengths = _memory()
    expected = transducer_greedy(model, memory, lengths)
    got = _run_mlx(mlx_model, GreedySearch(mlx_model, 3), memory, lengths)
    assert sum(len(h.tokens) for h in expected) > 5  # the test means something
    _same(expected, [n[0] for n in got])


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("fusion", [False, True])
def test_beam_search_equals_pytorch(pair, beam: int, fusion: bool) -> None:
    from mamba_asr.backends.mlx.search import BeamSearch

    model, mlx_model = pair
    memory, lengths = _memory(seed=beam)
    kwargs = {}
    if fusion:
        rng = np.random.default_rng(0)
        corpus = [rng.integers(1, VOCAB, size=8).tolist() for _ in range(30)]
        kwargs = {"lm": NgramLM.train(corpus, VOCAB, order=3), "lm_weight": 0.5,
                  "length_bonus": 0.7}  # fmt: skip
    expected = transducer_beam_search(model, memory, lengths, beam, **kwargs)
    got = _run_mlx(mlx_model, BeamSearch(mlx_model, 3, beam, **kwargs), memory, lengths)
    for want, have in zip(expected, got, strict=True):
        _same(want, have)


def test_bad_options_are_refused(pair) -> None:
    from mamba_asr.backends.mlx.search import BeamSearch, GreedySearch

    _, mlx_model = pair
    with pytest.raises(ValueError, match="beam"):
        BeamSearch(mlx_model, 1, beam=0)
    with pytest.raises(ValueError, match="lm_weight"):
        BeamSearch(mlx_model, 1, lm_weight=0.3)
    with pytest.raises(ValueError, match="max_symbols"):
        GreedySearch(mlx_model, 1, max_symbols_per_frame=0)

"""The MLX transducer against the PyTorch one: encoder outputs within 1e-4 (fp32), streaming
equal to offline, a padded batch equal to each utterance alone, weights refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.mlx_models import model_pair, requires_mlx
from helpers.recipes import tiny_recipe, tiny_transducer_config
from mamba_asr.pretrained import bundled_path

pytestmark = requires_mlx

CONFIGS = {
    "tiny_recipe": lambda: tiny_recipe("transducer").model,  # 8x front end, d_conv 4
    "tiny_config": lambda: tiny_transducer_config(),  # 4x front end, 2 layers, d_conv 3
    "gelu_context1": lambda: tiny_transducer_config(
        transducer={"context_size": 1}, encoder_activation="gelu"
    ),
    "lstm": lambda: tiny_transducer_config(transducer={"predictor": "lstm"}),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    cfg = CONFIGS[request.param]()
    return cfg, *model_pair(cfg, seed=len(request.param))


def test_encoder_equals_pytorch_on_a_padded_batch(pair) -> None:
    cfg, model, mlx_model = pair
    feats = torch.randn(3, 157, cfg.frontend.n_mels)
    lengths = torch.tensor([157, 100, 9])
    with torch.no_grad():
        enc = model.encode(feats, lengths)
    memory, out_lengths = mlx_model.encode(feats.numpy(), lengths.numpy())
    assert np.array(out_lengths).tolist() == enc.lengths.tolist()
    np.testing.assert_allclose(np.array(memory), enc.memory.numpy(), rtol=0, atol=1e-4)


def test_padded_batch_equals_each_utterance_alone(pair) -> None:
    cfg, _, mlx_model = pair
    feats = np.random.default_rng(0).standard_normal((3, 64, cfg.frontend.n_mels))
    lengths = np.array([64, 41, 17])
    feats[1, 41:] = 1e3  # padding holds garbage: it must not matter
    memory, out_lengths = mlx_model.encode(feats, lengths)
    for i, n in enumerate(lengths):
        alone, m = mlx_model.encode(feats[i : i + 1, :n], lengths[i : i + 1])
        k = int(np.array(m)[0])
        np.testing.assert_allclose(np.array(memory[i, :k]), np.array(alone[0]), atol=1e-5)
        assert not np.array(memory[i, k:]).any()


@pytest.mark.parametrize("chunk_frames", [1, 3, 5])  # encoder frames per chunk; 1: the step
def test_streaming_equals_offline(pair, chunk_frames: int) -> None:
    cfg, model, mlx_model = pair
    feats = torch.randn(2, 83, cfg.frontend.n_mels)  # the last chunk is shorter
    with torch.no_grad():
        enc = model.encode(feats, torch.tensor([83, 83]))
    step = chunk_frames * mlx_model.subsampling
    state, outs = mlx_model.init_state(2), []
    for start in range(0, 83, step):
        out, state = mlx_model.forward_chunk(feats[:, start : start + step], state)
        outs.append(np.array(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), enc.memory.numpy(), atol=1e-4)


def test_predictor_and_joiner_equal_pytorch(pair) -> None:
    from mamba_asr.backends.mlx.model import to_mx

    cfg, model, mlx_model = pair
    tokens = torch.randint(0, cfg.vocab_size, (4, 6))
    with torch.no_grad():
        out, state = model.predictor(tokens)
        enc = torch.randn(4, 6, cfg.d_model)
        logits = model.joiner(enc, out)
    pstate = mlx_model.predictor.init_state(4)
    mlx_out, mlx_state = mlx_model.predictor(tokens.numpy(), pstate)
    np.testing.assert_allclose(np.array(mlx_out), out.numpy(), atol=1e-5)
    if isinstance(state, tuple):  # LSTM (h, c), each (1, B, P); MLX: (B, 2, P)
        np.testing.assert_allclose(mlx_state, torch.cat(state).transpose(0, 1).numpy(), atol=1e-5)
    else:
        assert mlx_state.tolist() == state.tolist()
    joiner = mlx_model.joiner
    mlx_enc = joiner.project_encoder(to_mx(enc))
    mlx_logits = joiner.join(mlx_enc, joiner.project_predictor(mlx_out))
    np.testing.assert_allclose(np.array(mlx_logits), logits.numpy(), atol=1e-5)


def test_models_it_cannot_run_are_refused() -> None:
    from mamba_asr.backends.mlx.model import build_model

    ctc = tiny_recipe("ctc").model
    with pytest.raises(ValueError, match="streaming transducers"):
        build_model(ctc, {})
    _, model, _ = (None, *model_pair(tiny_transducer_config()))
    weights = {k: v.numpy() for k, v in model.state_dict().items() if "joiner" not in k}
    with pytest.raises(ValueError, match="weights missing.*joiner"):
        build_model(tiny_transducer_config(), weights)


@pytest.mark.skipif(not bundled_path().is_file(), reason="bundled model file not built yet")
def test_bundled_encoder_equals_pytorch() -> None:
    import mamba_asr
    from mamba_asr.audio import load_audio
    from mamba_asr.backends.mlx import MlxASR

    asr = mamba_asr.load_model(device="cpu")
    mlx_asr = MlxASR.from_asr(asr)
    wave = torch.from_numpy(load_audio("examples/hello.flac", asr.sample_rate))[None]
    with torch.no_grad():
        feats, lengths = asr.features(wave, torch.tensor([wave.shape[1]]))
        enc = asr.model.encode(feats, lengths)
    memory, _ = mlx_asr.model.encode(feats.numpy(), lengths.numpy())
    np.testing.assert_allclose(np.array(memory), enc.memory.numpy(), rtol=0, atol=1e-4)

"""Waveform corruptions (mamba_asr.audio.corrupt) and vocal-tract-length perturbation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_asr.audio import corrupt
from mamba_asr.audio.features import Fbank, vtlp_matrix
from mamba_asr.config import ConfigError, DataConfig, WaveAugmentConfig, from_dict

SR = 16000


def speechlike(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Harmonics of a 120-180 Hz voice under a slow envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(120, 180)
    wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 30))
    wave *= 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    wave += 0.01 * rng.standard_normal(len(t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def band_energy(wave: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(wave)) ** 2
    f = np.fft.rfftfreq(len(wave), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum() / spec.sum())


FUNCS = {
    "eq": lambda w, r: corrupt.random_eq(w, SR, r),
    "band": lambda w, r: corrupt.band_limit(w, SR, r),
    "telephone": lambda w, r: corrupt.telephone(w, SR, r),
    "codec": lambda w, r: corrupt.codec(w, SR, r),
    "noise": lambda w, r: corrupt.colored_noise(w, r),
    "gain": lambda w, r: corrupt.random_gain(w, r),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_each_keeps_length_and_is_reproducible(name):
    seed = int(np.random.default_rng().integers(1 << 30))
    wave = speechlike(seed=seed)
    a = FUNCS[name](wave, np.random.default_rng(seed))
    b = FUNCS[name](wave, np.random.default_rng(seed))
    assert a.shape == wave.shape and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, wave)
    # still the same utterance: strongly correlated with the clean wave (the codec's delay
    # is taken out)
    assert np.corrcoef(a, wave)[0, 1] > 0.5


def test_telephone_keeps_only_the_narrow_band():
    wave = speechlike(seed=3) + 0.05 * np.random.default_rng(3).standard_normal(
        int(1.5 * SR)
    ).astype(np.float32)
    assert band_energy(wave, 4000, 8000) > 0.01
    out = corrupt.telephone(wave, SR, np.random.default_rng(0))
    assert band_energy(out, 4000, 8000) < 1e-4
    assert band_energy(out, 300, 3400) > 0.9


def test_band_limit_cuts_above_its_edge():
    wave = np.random.default_rng(1).standard_normal(SR).astype(np.float32) * 0.1
    out = corrupt.band_limit(wave, SR, np.random.default_rng(1), (50, 60), (3000, 3001))
    assert band_energy(wave, 5000, 8000) > 0.3
    # 4th order above 3 kHz: 1/(1 + (5/3)^8) of the power at 5 kHz, less above
    assert band_energy(out, 5000, 8000) < 0.02 * band_energy(wave, 5000, 8000)
    assert band_energy(out, 0, 40) < 0.02 * band_energy(wave, 0, 40)


def test_mu_law_is_8_bit_on_the_curve():
    x = np.linspace(-1, 1, 10001).astype(np.float32)
    y = corrupt.mu_law(x)
    assert len(np.unique(y)) <= 257
    assert np.abs(y - x).max() < 0.04  # coarse at the loud end, fine near zero
    assert np.abs(y - x)[np.abs(x) < 0.01].max() < 5e-4


def test_eq_keeps_rms_and_noise_hits_its_snr():
    wave = speechlike(seed=5)
    out = corrupt.random_eq(wave, SR, np.random.default_rng(5))
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(wave**2)), rel=1e-3)
    noisy = corrupt.colored_noise(wave, np.random.default_rng(5), (20.0, 20.0))
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave) ** 2.0))
    assert snr == pytest.approx(20.0, abs=0.01)


def test_corruptor_probabilities():
    wave = speechlike(seed=7)
    off = corrupt.WaveCorruptor(WaveAugmentConfig(), SR)
    assert not off.active
    np.testing.assert_array_equal(off(wave, np.random.default_rng(0)), wave)
    on = corrupt.WaveCorruptor(WaveAugmentConfig(eq_p=1.0, noise_p=1.0, gain_p=1.0), SR)
    assert on.active
    outs = [on(wave, np.random.default_rng(s)) for s in range(3)]
    assert all(o.shape == wave.shape for o in outs)
    assert not np.array_equal(outs[0], outs[1])
    half = corrupt.WaveCorruptor(WaveAugmentConfig(gain_p=0.5), SR)
    changed = sum(
        not np.array_equal(half(wave, np.random.default_rng(s)), wave) for s in range(200)
    )
    assert 70 < changed < 130


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"data.wave_augment.eq_p must be in \[0, 1\]"):
        WaveAugmentConfig(eq_p=1.5)
    with pytest.raises(ConfigError, match="noise_snr_db must be"):
        WaveAugmentConfig(noise_snr_db=(30.0, 5.0))
    with pytest.raises(ConfigError, match="data.vtlp must be"):
        DataConfig(vtlp=(1.2, 0.9))
    cfg = from_dict(DataConfig, {"vtlp": [0.9, 1.1], "wave_augment": {"codec_p": 0.2}}, "data")
    assert cfg.vtlp == (0.9, 1.1) and cfg.wave_augment.codec_p == 0.2


def test_dataset_applies_corruptions_reproducibly(tmp_path):
    import soundfile as sf

    from mamba_asr.data.dataset import AsrDataset
    from mamba_asr.data.manifest import Utterance
    from mamba_asr.text.tokenizer import CharTokenizer

    path = tmp_path / "a.wav"
    sf.write(path, speechlike(seed=9), SR)
    utts = [Utterance("a", str(path), "HELLO", 1.5)]
    aug = WaveAugmentConfig(eq_p=1.0, codec_p=1.0)
    plain = AsrDataset(utts, CharTokenizer(), SR, None)[0][0]
    one = AsrDataset(utts, CharTokenizer(), SR, None, seed=4, wave_augment=aug)[0][0]
    two = AsrDataset(utts, CharTokenizer(), SR, None, seed=4, wave_augment=aug)[0][0]
    other = AsrDataset(utts, CharTokenizer(), SR, None, seed=5, wave_augment=aug)[0][0]
    torch.testing.assert_close(one, two)
    assert one.shape == plain.shape
    assert not torch.equal(one, plain) and not torch.equal(one, other)


# --- VTLP ---------------------------------------------------------------------------------------


def test_vtlp_identity_and_fbank_equal_without_warp():
    r = vtlp_matrix(torch.ones(2), 257, SR)
    torch.testing.assert_close(r, torch.eye(257).expand(2, 257, 257))
    fbank = Fbank(SR, 80)
    wave = torch.from_numpy(speechlike(seed=11)).unsqueeze(0)
    plain, n = fbank(wave)
    same, m = fbank(wave, warp=torch.ones(1))
    torch.testing.assert_close(plain, same, rtol=1e-5, atol=1e-5)
    assert torch.equal(n, m)


@pytest.mark.parametrize("warp", [0.9, 1.1])
def test_vtlp_moves_a_tone(warp):
    """A 1 kHz tone lands at warp * 1 kHz: the peak bin of the warped power spectrum."""
    bins = 257
    f = torch.linspace(0, SR / 2, bins)
    power = torch.exp(-0.5 * ((f - 1000.0) / 40.0) ** 2)  # (K,)
    warped = power @ vtlp_matrix(torch.tensor([warp]), bins, SR)[0]
    peak = float(f[warped.argmax()])
    assert peak == pytest.approx(1000.0 * warp, abs=SR / 2 / (bins - 1))
    # Nyquist stays put: the top bin maps to itself
    r = vtlp_matrix(torch.tensor([warp]), bins, SR)[0]
    assert float(r[-1, -1]) == pytest.approx(1.0)


def test_vtlp_only_in_training(tmp_path):
    from mamba_asr.asr import ASR
    from mamba_asr.config import load_recipe
    from mamba_asr.text.tokenizer import CharTokenizer

    recipe = load_recipe(
        "hparams/CTC/conmamba_large.yaml",
        ["model.d_model=32", "model.num_encoder_layers=1", "model.d_ffn=32", "model.nhead=2",
         "data.vtlp=[0.8,1.2]", "data.specaugment.enabled=false"],
    )  # fmt: skip
    asr = ASR.from_recipe(recipe, CharTokenizer())
    wave = torch.from_numpy(speechlike(seed=13)).unsqueeze(0)
    n = torch.tensor([wave.shape[1]])
    asr.eval()
    a, _ = asr.features(wave, n)
    b, _ = asr.features(wave, n)
    torch.testing.assert_close(a, b)
    asr.train()
    torch.manual_seed(0)
    c, _ = asr.features(wave, n)
    assert not torch.allclose(a, c)

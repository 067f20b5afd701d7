"""Tests for the log-Mel filterbank and global CMVN: librosa references, padding, buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mamba_asr.audio.augment import SpecAugment
from mamba_asr.audio.features import Fbank, GlobalCMVN, mel_filterbank

librosa = pytest.importorskip("librosa", reason="librosa is the reference for the features")


def noisy_sine(samples: int, freq: float = 1000.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(samples)).astype(
        np.float32
    )


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "f_min", "f_max"),
    [(16000, 512, 80, 0.0, None), (16000, 400, 40, 20.0, 7600.0), (8000, 256, 23, 0.0, None)],
)
def test_mel_filterbank_matches_librosa(mel_scale, norm, sr, n_fft, n_mels, f_min, f_max):
    ours = mel_filterbank(sr, n_fft, n_mels, f_min, f_max, mel_scale, norm)
    ref = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=mel_scale == "htk", norm=norm
    )
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5)


def test_fbank_matches_librosa_log_mel():
    """Same frames as librosa.stft(center=False) once the 400-sample window sits at the start
    of each 512-sample frame (librosa centres it, so the signal is shifted by 56 samples)."""
    wave = noisy_sine(16000)
    feats, lengths = Fbank()(torch.from_numpy(wave)[None])
    ref = librosa.feature.melspectrogram(
        y=np.pad(wave, 56),
        sr=16000,
        n_fft=512,
        hop_length=160,
        win_length=400,
        window="hann",
        center=False,
        power=2.0,
        n_mels=80,
    )
    ref = np.log(ref + 1e-6).T  # (T, M)
    assert feats.shape == (1, 98, 80) and lengths.tolist() == [98] and ref.shape == (98, 80)
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=1e-3)


def test_fbank_frame_count_and_tone_bin():
    fbank = Fbank()
    lengths = torch.tensor([0, 399, 400, 559, 560, 16000])
    assert fbank.num_frames(lengths).tolist() == [0, 0, 1, 1, 2, 98]
    feats, _ = fbank(torch.from_numpy(noisy_sine(8000, freq=2000.0))[None])
    peak_hz = librosa.mel_frequencies(82, fmax=8000)[1:-1][feats[0].mean(0).argmax()]
    assert abs(peak_hz - 2000) < 100


def test_fbank_padding_invariance():
    """Each utterance of a padded batch gets exactly the frames it gets alone."""
    fbank = Fbank()
    sizes = [16000, 9000, 560, 300]
    waves = [torch.from_numpy(noisy_sine(n, seed=i)) for i, n in enumerate(sizes)]
    batch = torch.randn(len(sizes), max(sizes))  # garbage in the padding
    for row, w in zip(batch, waves, strict=True):
        row[: len(w)] = w
    feats, lengths = fbank(batch, torch.tensor(sizes))
    assert lengths.tolist() == [98, 54, 2, 0]
    for i, w in enumerate(waves):
        alone, n = fbank(w[None])
        assert n.item() == lengths[i]
        # float32 sums in another order (batch vs single); any leak of padding would be O(1)
        torch.testing.assert_close(
            feats[i, : lengths[i]], alone[0, : n.item()], atol=2e-4, rtol=1e-5
        )
        assert (feats[i, lengths[i] :] == 0).all()
    # other garbage in the padding, same shapes: bit for bit the same features
    valid = torch.arange(batch.shape[1])[None, :] < torch.tensor(sizes)[:, None]
    regarbled = torch.where(valid, batch, torch.randn(batch.shape) * 1e3)
    assert torch.equal(fbank(regarbled, torch.tensor(sizes))[0], feats)


def test_fbank_shorter_than_a_window():
    feats, lengths = Fbank()(torch.randn(2, 100), torch.tensor([100, 50]))
    assert feats.shape == (2, 1, 80) and lengths.tolist() == [0, 0] and (feats == 0).all()


class RecordDtypes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()
        self.devices: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
                self.devices.add(t.device.type)
        return out


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_feature_pipeline_is_mps_safe(device):
    """No float64 or complex tensors, nothing created off the input's device (the MPS rules):
    construction and forward of Fbank, GlobalCMVN and SpecAugment."""
    with RecordDtypes() as mode:
        fbank, cmvn = Fbank(device=device), GlobalCMVN(device=device)
        feats, lengths = fbank(
            torch.randn(2, 4000, device=device), torch.tensor([4000, 3000], device=device)
        )
        feats = SpecAugment(time_width_ratio=0.2).train()(cmvn(feats, lengths), lengths)
    assert not mode.dtypes & {torch.float64, torch.complex64, torch.complex128}
    assert mode.devices == {device}
    assert feats.dtype == torch.float32


def test_fbank_buffers_follow_the_module():
    fbank = Fbank().to(torch.float64)
    assert fbank.dft_kernel.dtype == torch.float64  # .to() moves buffers; no surprises
    names = dict(Fbank().named_buffers())
    assert set(names) == {"dft_kernel", "mel_fb"}
    assert Fbank().state_dict() == {}  # derived from the arguments: not persistent


def test_fbank_rejects_bad_options():
    with pytest.raises(ValueError, match="n_fft"):
        Fbank(n_fft=256)
    with pytest.raises(ValueError, match="f_max"):
        Fbank(f_max=9000)


def batches_of(feats: list[torch.Tensor], size: int):
    """(padded (B, T, M) with garbage past each length, lengths (B,)) batches."""
    for start in range(0, len(feats), size):
        group = feats[start : start + size]
        lengths = torch.tensor([len(f) for f in group])
        out = torch.randn(len(group), int(lengths.max()), group[0].shape[1]) * 100
        for row, f in zip(out, group, strict=True):
            row[: len(f)] = f
        yield out, lengths


def test_cmvn_fit_matches_numpy_and_normalizes():
    gen = torch.Generator().manual_seed(1)
    scale, shift = torch.rand(6, generator=gen) * 3 + 0.5, torch.randn(6, generator=gen) * 10
    utts = [torch.randn(n, 6, generator=gen) * scale + shift for n in (50, 7, 120, 33, 1)]
    cmvn = GlobalCMVN(6)
    assert not cmvn.is_fitted
    cmvn.fit(batches_of(utts, size=2))
    frames = torch.cat(utts).double().numpy()
    np.testing.assert_allclose(cmvn.mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cmvn.std.numpy(), frames.std(0), rtol=1e-5)
    assert cmvn.is_fitted and cmvn.frames.item() == len(frames)
    assert cmvn.mean.dtype == cmvn.std.dtype == torch.float32
    feats, lengths = next(batches_of(utts, size=len(utts)))
    out = cmvn(feats, lengths)
    valid = torch.cat([out[i, :n] for i, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(valid.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)
    for i, n in enumerate(lengths.tolist()):
        assert (out[i, n:] == 0).all()  # padded frames stay 0
        torch.testing.assert_close(out[i, :n], cmvn(utts[i][None])[0])  # as alone


def test_cmvn_is_stable_over_many_frames_in_float32():
    """A large offset and many frames: the pairwise update keeps float32 accurate."""
    gen = torch.Generator().manual_seed(2)
    utts = [torch.randn(2000, 4, generator=gen) * 0.01 + 1000.0 for _ in range(100)]
    cmvn = GlobalCMVN(4).fit(batches_of(utts, size=4))
    frames = torch.cat(utts).double()
    torch.testing.assert_close(cmvn.std.double(), frames.std(0, unbiased=False), rtol=1e-3, atol=0)
    torch.testing.assert_close(cmvn.mean.double(), frames.mean(0), rtol=1e-6, atol=0)


def test_cmvn_state_dict_round_trip():
    """Fbank + CMVN inside a model: the fitted statistics travel in the checkpoint."""
    gen = torch.Generator().manual_seed(3)
    utts = [torch.randn(30, 80, generator=gen) * 2 + 1 for _ in range(4)]
    model = nn.Sequential(Fbank(), GlobalCMVN(80))
    model[1].fit(batches_of(utts, size=2))
    state = model.state_dict()
    assert set(state) == {"1.mean", "1.std", "1.frames"}
    fresh = nn.Sequential(Fbank(), GlobalCMVN(80))
    fresh.load_state_dict(state, strict=True)
    for name in ("mean", "std", "frames"):
        assert torch.equal(getattr(fresh[1], name), getattr(model[1], name))
    wave = torch.from_numpy(noisy_sine(8000))[None]
    torch.testing.assert_close(fresh[1](*fresh[0](wave)), model[1](*model[0](wave)))


def test_cmvn_fit_without_frames():
    with pytest.raises(ValueError, match="no valid frames"):
        GlobalCMVN(3).fit([(torch.zeros(2, 5, 3), torch.tensor([0, 0]))])


def test_fbank_ignores_autocast():
    wave = torch.from_numpy(noisy_sine(4000))[None]
    expected, _ = Fbank()(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = Fbank()(wave)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected)

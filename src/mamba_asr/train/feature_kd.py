"""Feature distillation: one encoder layer of the student learns to predict a teacher's stored
encoder features (``train.feature_kd``).

Shape key
    B: batch, T: student encoder frames, M: the layer's width, D: the teacher's feature width,
    N: valid frames of a batch.

The teacher is a model that hears people (Moonshine base, an English model trained on real
speech) and the features are stored once per utterance (``scripts/realspeech/
moonshine_features.py``: ``features.npy`` and ``index.json``, one row per ``frame_ms`` of
audio, the student's encoder frame), so training runs no second model. With them the trainer's
loss is

    student's own loss + weight * FKD,  FKD = ridge_kd(H, Y)

where Y (N, D) stacks the teacher's standardised features of every valid frame of the batch
and H (N, M) the output of encoder layer ``layer`` at the same frames. ``ridge_kd`` is the
fraction of Y's variance (about its mean) that the best affine map of H fitted to this batch by
ridge regression leaves unexplained: 0 when the layer holds everything the teacher's features
hold, up to 1 when it holds none of it. The map is solved in closed form and differentiated
through, so nothing is added to the model (what is exported is the model as it was) and the
layer is free to keep its own basis; only what it can express is asked of it. The same map
serves every utterance of a batch, synthetic or real, so both come to hold the teacher's
information in one way.

Frames: a stored utterance has ``round(duration / frame_ms)`` teacher rows; the student's
encoder gives T frames of the (speed-perturbed) audio. The rows are resampled linearly to T
(``resample_rows``: speed perturbation stretches the whole utterance alike), then student frame
t is compared with row t - ``delay``: the student is causal and the teacher saw both sides, so
frame t of the student is asked what the teacher knew ``delay`` frames earlier. Utterances
without stored features (the ids not in ``index.json``) add nothing; a batch where none has
any gives no term.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mamba_asr.config import ConfigError, FeatureKDConfig

__all__ = [
    "FeatureTargets",
    "FeatureTeacher",
    "feature_kd_loss",
    "open_store",
    "resample_rows",
    "ridge_kd",
    "ridge_kd_cross",
    "ridge_kd_cross_reference",
    "ridge_kd_reference",
]

INDEX_FILE, FEATURES_FILE = "index.json", "features.npy"


# --- the loss ----------------------------------------------------------------------------------


def ridge_kd(hidden: Tensor, targets: Tensor, ridge: float = 1e-3) -> Tensor:
    """The fraction of the targets' variance that ridge regression on ``hidden`` leaves.

    hidden (N, M), targets (N, D), N >= 2 -> scalar float32: ||Yc - Hc W||^2 / ||Yc||^2 with
    Hc, Yc the columns centred (an affine map), W = (Hc^T Hc + lam I)^-1 Hc^T Yc and lam =
    ``ridge`` * trace(Hc^T Hc) / M. Computed in float32 whatever the inputs' dtype, autocast
    off (a Gram matrix in bf16 loses what the solve needs); the gradient flows into ``hidden``
    through W (the targets are constants)."""
    with torch.autocast(hidden.device.type, enabled=False):
        h = hidden.float()
        y = targets.float().detach()
        hc = h - h.mean(0, keepdim=True)
        yc = y - y.mean(0, keepdim=True)
        residual = yc - hc @ _ridge_fit(hc, yc, ridge)
        return residual.pow(2).sum() / yc.pow(2).sum().clamp_min(1e-12)


def _ridge_fit(hc: Tensor, yc: Tensor, ridge: float) -> Tensor:
    """W (M, D) = (Hc^T Hc + lam I)^-1 Hc^T Yc, lam = ridge * trace(Hc^T Hc) / M (float32)."""
    gram = hc.T @ hc  # (M, M)
    lam = (ridge * gram.diagonal().sum() / gram.shape[0]).clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.cholesky_solve(hc.T @ yc, torch.linalg.cholesky(gram + lam * eye))


def ridge_kd_cross(hidden: Tensor, targets: Tensor, fold: Tensor, ridge: float = 1e-3) -> Tensor:
    """``ridge_kd`` cross-fitted: the map is fitted to the frames of one fold and scored on the
    other's, both ways. hidden (N, M), targets (N, D), fold (N,) 0 or 1 (each utterance's frames
    in one fold, so that what is scored was not fitted), each fold holding >= 2 frames -> scalar
    float32: sum over folds k of ||Y_k - mu_Y' - (H_k - mu_H') W'||^2 over the sum of
    ||Y_k - mu_Y'||^2, where W', mu_H', mu_Y' come from the other fold. A map fitted in-sample
    explains about M / N of unrelated features by chance; scored out of sample it does not, so
    the loss (and its gradient) comes from what the layer holds that generalises from one half
    of the batch's utterances to the other. It can pass 1 where the layer predicts worse than
    the mean. Float32, autocast off; the gradient flows into ``hidden`` through the maps and the
    scored frames. The folds are 0/1 weights on every frame rather than indexed subsets, so
    nothing waits on the device (boolean indexing would sync with a GPU twice a fold)."""
    with torch.autocast(hidden.device.type, enabled=False):
        h, y = hidden.float(), targets.float().detach()
        residual = total = h.new_zeros(())
        for k in (0, 1):
            fit = (fold != k).to(h.dtype)[:, None]  # (N, 1): 1 on the frames the map is fitted to
            count = fit.sum()
            mu_h, mu_y = (fit * h).sum(0) / count, (fit * y).sum(0) / count
            hc, yc = h - mu_h, y - mu_y
            weights = _ridge_fit(hc * fit, yc * fit, ridge)
            score = 1.0 - fit
            residual = residual + (score * (yc - hc @ weights).pow(2)).sum()
            total = total + (score * yc.pow(2)).sum()
        return residual / total.clamp_min(1e-12)


def _with_ones(h: Tensor) -> Tensor:
    """(N, M) -> (N, M + 1): an intercept column appended."""
    return torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], 1)


def _ridge_coef_reference(h: Tensor, y: Tensor, ridge: float) -> Tensor:
    """(M + 1, D) coefficients of the ridge regression of y on [h, 1], float64, an explicit
    inverse, the intercept unpenalised, lam = ridge * (h's centred energy) / M."""
    m = h.shape[1]
    lam = ridge * (h - h.mean(0)).pow(2).sum() / m
    design = _with_ones(h)
    penalty = torch.diag(torch.cat([lam.expand(m), lam.new_zeros(1)]))
    return torch.linalg.inv(design.T @ design + penalty) @ design.T @ y


def ridge_kd_cross_reference(
    hidden: Tensor, targets: Tensor, fold: Tensor, ridge: float = 1e-3
) -> Tensor:
    """``ridge_kd_cross`` written out plainly, as ``ridge_kd_reference`` (float64, explicit
    inverse, intercept column): the reference the tests hold it to."""
    h, y = hidden.double(), targets.double().detach()
    residual = total = torch.zeros((), dtype=torch.float64, device=h.device)
    for k in (0, 1):
        hf, yf = h[fold != k], y[fold != k]
        coef = _ridge_coef_reference(hf, yf, ridge)
        hs, ys = h[fold == k], y[fold == k]
        residual = residual + (ys - _with_ones(hs) @ coef).pow(2).sum()
        total = total + (ys - yf.mean(0)).pow(2).sum()
    return (residual / total).float()


def ridge_kd_reference(hidden: Tensor, targets: Tensor, ridge: float = 1e-3) -> Tensor:
    """``ridge_kd`` written out plainly (float64, an explicit inverse, an appended column of
    ones for the intercept, unpenalised): the reference the tests hold it to."""
    h = hidden.double()
    y = targets.double().detach()
    residual = y - _with_ones(h) @ _ridge_coef_reference(h, y, ridge)
    total = y - y.mean(0, keepdim=True)
    return (residual.pow(2).sum() / total.pow(2).sum()).float()


def resample_rows(rows: Tensor, frames: int) -> Tensor:
    """(R, D) -> (frames, D) by linear interpolation along the rows (half-frame centres, as
    ``F.interpolate(mode='linear', align_corners=False)``); the rows themselves if R == frames."""
    if rows.shape[0] == frames:
        return rows
    out = torch.nn.functional.interpolate(
        rows.T[None], size=frames, mode="linear", align_corners=False
    )
    return out[0].T


def feature_kd_loss(
    hidden: Tensor,
    lengths: Tensor,
    targets: list[Tensor | None],
    delay: int = 0,
    ridge: float = 1e-3,
    cross_fit: bool = False,
) -> Tensor | None:
    """FKD of a batch: hidden (B, T, M) a layer's outputs, lengths (B,) valid frames, targets
    one (R_b, D) teacher rows per utterance or None (no features: the utterance adds nothing).
    Utterance b's rows are resampled to its ``lengths[b]`` frames and frame t is paired with
    row t - ``delay``. None when fewer than 2 frames pair up (no term for this batch).
    cross_fit: ``ridge_kd_cross`` with the utterances that have features dealt into two folds
    alternately (in-sample ``ridge_kd`` when a fold would hold fewer than 2 frames)."""
    hs, ys = [], []
    for b, rows in enumerate(targets):
        frames = int(lengths[b])
        if rows is None or frames - delay < 1:
            continue
        rows = resample_rows(rows.to(hidden.device, torch.float32), frames)
        hs.append(hidden[b, delay:frames])
        ys.append(rows[: frames - delay])
    if not hs or sum(len(h) for h in hs) < 2:
        return None
    if cross_fit:
        sizes = [len(h) for h in hs]
        if min(sum(sizes[0::2]), sum(sizes[1::2])) >= 2:
            fold = torch.cat([torch.full((n,), i % 2) for i, n in enumerate(sizes)])
            return ridge_kd_cross(torch.cat(hs), torch.cat(ys), fold.to(hidden.device), ridge)
    return ridge_kd(torch.cat(hs), torch.cat(ys), ridge)


# --- the stored features -----------------------------------------------------------------------


class FeatureTargets:
    """The teacher's stored features of a folder (``features.npy``, ``index.json``): ``get(id)``
    gives an utterance's standardised rows (R, D) float32, or None for an id not stored.
    ConfigError (one line naming the folder) if the folder is not such a store."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        where = f"train.feature_kd.features {folder}"
        try:
            meta = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            self.rows = np.load(folder / FEATURES_FILE, mmap_mode="r")
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: no {Path(exc.filename).name} there") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: unreadable ({exc})") from None
        try:
            self.frame_ms = int(meta["frame_ms"])
            self.index = {str(k): (int(v[0]), int(v[1])) for k, v in meta["utterances"].items()}
            self.mean = np.asarray(meta["mean"], dtype=np.float32)
            self.std = np.maximum(np.asarray(meta["std"], dtype=np.float32), 1e-5)
            self.teacher = str(meta.get("teacher", "?"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {INDEX_FILE} lacks {exc}") from None
        if self.rows.ndim != 2 or self.rows.shape[1] != len(self.mean):
            raise ConfigError(
                f"{where}: {FEATURES_FILE} has shape {self.rows.shape}, {INDEX_FILE} describes "
                f"{len(self.mean)} values a row"
            )
        end = max((a + n for a, n in self.index.values()), default=0)
        if end > self.rows.shape[0]:
            raise ConfigError(
                f"{where}: {INDEX_FILE} points past the {self.rows.shape[0]} rows of "
                f"{FEATURES_FILE}"
            )
        self.dim = len(self.mean)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, uid: str) -> Tensor | None:
        found = self.index.get(uid)
        if found is None:
            return None
        start, count = found
        rows = (
            np.asarray(self.rows[start : start + count], dtype=np.float32) - self.mean
        ) / self.std
        return torch.from_numpy(rows)


def open_store(cfg: FeatureKDConfig, frame_ms: int, num_layers: int) -> FeatureTargets:
    """The store of ``cfg.features``, checked against the student: ConfigError (one line)
    unless its rows are ``frame_ms`` apart (the student's encoder frames) and ``cfg.layer`` is
    one of the encoder's ``num_layers``."""
    assert cfg.features is not None
    targets = FeatureTargets(cfg.features)
    if targets.frame_ms != frame_ms:
        raise ConfigError(
            f"train.feature_kd.features {cfg.features}: its rows are {targets.frame_ms} ms "
            f"apart, the student's encoder frames {frame_ms} ms: extract them with "
            f"--frame-ms {frame_ms}"
        )
    if cfg.layer is not None and cfg.layer > num_layers:
        raise ConfigError(
            f"train.feature_kd.layer is {cfg.layer}, the encoder has {num_layers} layers"
        )
    return targets


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's stack of layers (``model.encoder.layers``); ConfigError if it has none."""
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ConfigError(
            f"train.feature_kd needs an encoder with a stack of layers; "
            f"{type(model).__name__} has none"
        )
    return layers


class FeatureTeacher:
    """The stored teacher of a run: a forward hook on the chosen encoder layer keeps its latest
    output, and ``loss(lengths, ids)`` compares it with the stored features of ``ids``
    (``targets``, from ``open_store``); ``close()`` removes the hook."""

    def __init__(self, cfg: FeatureKDConfig, targets: FeatureTargets, model: nn.Module) -> None:
        self.cfg, self.targets = cfg, targets
        layers = encoder_layers(model)
        self.layer = len(layers) if cfg.layer is None else cfg.layer  # in range: open_store
        self._hidden: Tensor | None = None
        self._handle = layers[self.layer - 1].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: object) -> None:
        self._hidden = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]

    def loss(self, lengths: Tensor | None, ids: list[str]) -> Tensor | None:
        """The FKD term of the batch the model has just run (unweighted), or None."""
        hidden, self._hidden = self._hidden, None
        if hidden is None or lengths is None:
            raise ValueError("train.feature_kd: the encoder layer gave no output in this batch")
        targets = [self.targets.get(uid) for uid in ids]
        return feature_kd_loss(
            hidden, lengths, targets, self.cfg.delay, self.cfg.ridge, self.cfg.cross_fit
        )

    def close(self) -> None:
        self._handle.remove()

"""The Mamba-CNN transducer (MCT) in MLX: causal front end, causal Mamba encoder, predictor
(stateless or LSTM), joiner; offline with padding masks, and streaming with an explicit state.

Shape key
    B: batch, T: feature frames, C: mel bins / channels, L: encoder frames, M: d_model,
    D: d_inner, N: d_state, K: kernel size, P: predictor_dim, J: joiner_dim, V: vocabulary.

The architecture comes from the model file's ``ModelConfig`` alone (``build_model``); the
parameters keep the PyTorch model's names and shapes (``model.frontend.stages.0.depthwise.weight``
without the ``model.`` prefix, Conv1d weights (C_out, C_in / groups, K)), so converting a
model file is renaming nothing. Arrays are channels-last, (B, L, C), MLX's natural layout.

The model follows the package's streaming protocol (``mamba_asr.models.streaming``):
``init_state(batch)``, ``forward_chunk(feats, state) -> (memory, state)``, ``subsampling``, and
the interface the searches use (``joiner.project_encoder``, ``project_predictor``, ``join``,
``predictor.init_state``, ``predictor(tokens, state)``, ``blank``, ``vocab_size``).
``forward_chunk`` accepts any array (MLX, NumPy, a CPU torch tensor: converted through NumPy),
so the package's ``Stream`` feeds it its feature chunks as they are. Chained ``forward_chunk``
calls equal ``encode`` when every chunk but the last holds a multiple of ``subsampling``
frames (as in PyTorch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mamba_asr.backends.mlx.scan import selective_scan, selective_step
from mamba_asr.config import ModelConfig

__all__ = ["MlxTransducer", "build_model", "to_mx"]

# what PyTorch's modules use: nn.LayerNorm's default, and MambaEncoder's final norm
LAYER_NORM_EPS = 1e-5
FINAL_NORM_EPS = 1e-6
ACTIVATIONS = {"swish": nn.silu, "silu": nn.silu, "gelu": nn.gelu, "relu": nn.relu}


def to_mx(x: Any) -> mx.array:
    """An MLX float32 array of ``x`` (MLX, NumPy, or a CPU torch tensor through NumPy)."""
    if isinstance(x, mx.array):
        return x.astype(mx.float32) if x.dtype != mx.float32 else x
    return mx.array(np.asarray(x, dtype=np.float32))


def length_mask(lengths: mx.array, length: int) -> mx.array:
    """(B,) valid frames -> (B, length) bool, True on valid frames."""
    return mx.arange(length)[None, :] < lengths[:, None]


def _zeros(*shape: int) -> mx.array:
    return mx.zeros(shape, dtype=mx.float32)


class Linear(nn.Module):
    """y = x W^T + b, W (out, in) as in PyTorch; ``bias`` False: no bias."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = _zeros(out_dim, in_dim)
        if bias:
            self.bias = _zeros(out_dim)

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self:
            return mx.addmm(self.bias, x, self.weight.T)
        return x @ self.weight.T


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = mx.ones((dim,)), _zeros(dim), eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


class CausalDepthwiseConv(nn.Module):
    """Depthwise Conv1d over time, weight (C, 1, K) as in PyTorch, on a left-padded input.

    ``__call__(xc)``: xc (B, K-1+L, C), the left context then L inputs -> (B, ceil(L / s), C)
    at stride s (output j sees xc[s*j : s*j + K]).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = _zeros(channels, 1, kernel_size)
        if bias:
            self.bias = _zeros(channels)
        self.kernel_size, self.stride = kernel_size, stride

    def __call__(self, xc: mx.array) -> mx.array:
        k, s = self.kernel_size, self.stride
        frames = (xc.shape[1] - k) // s + 1  # = ceil(L / s)
        w = self.weight[:, 0, :]  # (C, K)
        span = s * (frames - 1) + 1
        out = xc[:, 0:span:s] * w[:, 0]  # (B, L', C)
        for i in range(1, k):
            out = out + xc[:, i : i + span : s] * w[:, i]
        return out + self.bias if "bias" in self else out


# --- front end ---------------------------------------------------------------------------------


class FrontEndState(NamedTuple):
    """caches: one (B, K-1, C_in) array per stage, the stage's last K-1 inputs."""

    caches: tuple[mx.array, ...]


class CausalStage(nn.Module):
    """Depthwise conv (K, stride 2, causal) -> pointwise conv -> LayerNorm -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels, self.kernel_size = in_channels, kernel_size
        self.depthwise = CausalDepthwiseConv(in_channels, kernel_size, stride=2)
        self.pointwise = nn.Module()
        self.pointwise.weight = _zeros(out_channels, in_channels, 1)
        self.pointwise.bias = _zeros(out_channels)
        self.norm = LayerNorm(out_channels)

    def __call__(self, x: mx.array, cache: mx.array) -> tuple[mx.array, mx.array]:
        """x (B, L, C_in), cache (B, K-1, C_in) -> (B, ceil(L / 2), C_out), the new cache."""
        xc = mx.concatenate([cache, x], axis=1)  # (B, K-1+L, C_in)
        y = self.depthwise(xc)  # (B, L', C_in)
        y = mx.addmm(self.pointwise.bias, y, self.pointwise.weight[:, :, 0].T)  # (B, L', C_out)
        return nn.silu(self.norm(y)), xc[:, xc.shape[1] - (self.kernel_size - 1) :]


class CausalFrontEnd(nn.Module):
    """(B, T, C) features -> (B, ceil(T / S), M), S = 2 ** stages (``CausalConvFrontEnd``)."""

    def __init__(self, n_mels: int, d_model: int, channels: tuple[int, ...], kernel_size: int):
        super().__init__()
        self.subsampling = 2 ** len(channels)
        ins = (n_mels, *channels[:-1])
        self.stages = [CausalStage(i, o, kernel_size) for i, o in zip(ins, channels, strict=True)]
        self.proj = Linear(channels[-1], d_model)

    def init_state(self, batch: int) -> FrontEndState:
        return FrontEndState(
            tuple(_zeros(batch, s.kernel_size - 1, s.in_channels) for s in self.stages)
        )

    def __call__(self, feats: mx.array, state: FrontEndState) -> tuple[mx.array, FrontEndState]:
        x, caches = feats, []
        for stage, cache in zip(self.stages, state.caches, strict=True):
            x, cache = stage(x, cache)
            caches.append(cache)
        return self.proj(x), FrontEndState(tuple(caches))


# --- Mamba encoder -----------------------------------------------------------------------------


class MambaState(NamedTuple):
    """conv: (B, K-1, D) the last conv inputs; ssm: (B, D, N) the scan's state (fp32)."""

    conv: mx.array
    ssm: mx.array


class SSMBranch(nn.Module):
    """conv1d -> SiLU -> x_proj -> dt_proj -> selective scan (``_SSMBranch``'s parameters)."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int) -> None:
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = CausalDepthwiseConv(d_inner, d_conv, stride=1)
        self.x_proj = Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = Linear(dt_rank, d_inner)
        self.A_log = _zeros(d_inner, d_state)
        self.D = _zeros(d_inner)

    def __call__(self, x: mx.array, z: mx.array, state: MambaState) -> tuple[mx.array, MambaState]:
        """x, z: (B, L, D) -> y (B, L, D), the state after these L frames."""
        xc = mx.concatenate([state.conv, x], axis=1)  # (B, K-1+L, D)
        u = nn.silu(self.conv1d(xc))  # (B, L, D)
        x_dbl = self.x_proj(u)  # (B, L, R+2N)
        r, n = self.dt_rank, self.d_state
        dt, B, C = x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]
        delta = dt @ self.dt_proj.weight.T  # (B, L, D); the bias is added in the scan
        A, bias = -mx.exp(self.A_log), self.dt_proj.bias  # (D, N), (D,)
        if u.shape[1] == 1:  # streaming, one frame: the step update
            y, h = selective_step(
                u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], self.D, z[:, 0], bias, state.ssm
            )
            y = y[:, None]  # (B, 1, D)
        else:
            y, h = selective_scan(u, delta, A, B, C, self.D, z, bias, state.ssm)
        conv = xc[:, xc.shape[1] - state.conv.shape[1] :]  # (B, K-1, D)
        return y, MambaState(conv=conv, ssm=h)


class Mamba(nn.Module):
    """in_proj (M -> 2D) -> x, z -> ``SSMBranch`` ``fwd`` -> out_proj (D -> M)."""

    def __init__(
        self, d_model: int, d_state: int, expand: int, d_conv: int, dt_rank: int,
        d_inner: int | None = None,
    ):  # fmt: skip
        super().__init__()
        self.d_inner = expand * d_model if d_inner is None else d_inner  # set: a pruned model
        self.d_state, self.d_conv = d_state, d_conv
        self.in_proj = Linear(d_model, 2 * self.d_inner, bias=False)
        self.fwd = SSMBranch(self.d_inner, d_state, d_conv, dt_rank)
        self.out_proj = Linear(self.d_inner, d_model, bias=False)

    def init_state(self, batch: int) -> MambaState:
        return MambaState(
            conv=_zeros(batch, self.d_conv - 1, self.d_inner),
            ssm=_zeros(batch, self.d_inner, self.d_state),
        )

    def __call__(self, x: mx.array, state: MambaState) -> tuple[mx.array, MambaState]:
        xz = self.in_proj(x)  # (B, L, 2D)
        y, state = self.fwd(xz[..., : self.d_inner], xz[..., self.d_inner :], state)
        return self.out_proj(y), state


class FeedForward(nn.Module):
    """``net``: Linear -> activation -> Linear (PyTorch's ``net.0`` and ``net.3``; the
    parameter-free activation and dropouts hold places 1 and 2)."""

    def __init__(self, d_model: int, d_ffn: int, activation: str) -> None:
        super().__init__()
        self.net = [Linear(d_model, d_ffn), {}, {}, Linear(d_ffn, d_model)]
        self.activation = ACTIVATIONS[activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.net[3](self.activation(self.net[0](x)))


class MambaLayer(nn.Module):
    """x + Mamba(LN(x)), then x + FFN(LN(x)) (no FFN when d_ffn is 0)."""

    def __init__(self, d_model: int, d_ffn: int, activation: str, mamba: dict, dt_rank: int):
        super().__init__()
        self.norm_mamba = LayerNorm(d_model)
        self.mamba = Mamba(d_model, dt_rank=dt_rank, **mamba)
        if d_ffn:
            self.norm_ffn = LayerNorm(d_model)
            self.ffn = FeedForward(d_model, d_ffn, activation)

    def __call__(self, x: mx.array, state: MambaState) -> tuple[mx.array, MambaState]:
        y, state = self.mamba(self.norm_mamba(x), state)
        x = x + y
        if "ffn" in self:
            x = x + self.ffn(self.norm_ffn(x))
        return x, state


class EncoderState(NamedTuple):
    layers: tuple[MambaState, ...]


class MambaEncoder(nn.Module):
    """``num_layers`` ``MambaLayer``s and a final LayerNorm (eps 1e-6)."""

    def __init__(self, cfg: ModelConfig, dt_rank: int) -> None:
        super().__init__()
        mamba = {
            "d_state": cfg.mamba.d_state,
            "expand": cfg.mamba.expand,
            "d_conv": cfg.mamba.d_conv,
            "d_inner": cfg.mamba.d_inner,
        }
        activation = cfg.encoder_activation or "swish"  # as models.factory.build_encoder
        self.layers = [
            MambaLayer(cfg.d_model, cfg.d_ffn, activation, mamba, dt_rank)
            for _ in range(cfg.num_encoder_layers)
        ]
        self.norm = LayerNorm(cfg.d_model, FINAL_NORM_EPS)

    def init_state(self, batch: int) -> EncoderState:
        return EncoderState(tuple(layer.mamba.init_state(batch) for layer in self.layers))

    def __call__(self, x: mx.array, state: EncoderState) -> tuple[mx.array, EncoderState]:
        states = []
        for layer, s in zip(self.layers, state.layers, strict=True):
            x, s = layer(x, s)
            states.append(s)
        return self.norm(x), EncoderState(tuple(states))


# --- predictor, joiner, the model --------------------------------------------------------------


class StatelessPredictor(nn.Module):
    """Embedding + depthwise conv over the last ``context_size`` tokens + ReLU.

    State: (B, K-1) int64 NumPy array of the previous tokens (``blank`` at the start).
    """

    def __init__(self, vocab_size: int, dim: int, context_size: int, blank: int) -> None:
        super().__init__()
        self.context_size, self.blank = context_size, blank
        self.embedding = nn.Module()
        self.embedding.weight = _zeros(vocab_size, dim)
        if context_size > 1:
            self.conv = nn.Module()
            self.conv.weight = _zeros(dim, 1, context_size)

    def init_state(self, batch: int, device: Any = None) -> np.ndarray:
        return np.full((batch, self.context_size - 1), self.blank, dtype=np.int64)

    def __call__(self, tokens: Any, state: np.ndarray) -> tuple[mx.array, np.ndarray]:
        """tokens (B, U) -> (B, U, P) and the new state."""
        context = np.concatenate([state, np.asarray(tokens, dtype=np.int64)], axis=1)
        emb = self.embedding.weight[mx.array(context)]  # (B, K-1+U, P)
        if "conv" in self:
            k, w = self.context_size, self.conv.weight[:, 0, :]  # (P, K)
            frames = emb.shape[1] - k + 1
            out = emb[:, 0:frames] * w[:, 0]
            for i in range(1, k):
                out = out + emb[:, i : i + frames] * w[:, i]
            emb = out  # (B, U, P)
        return nn.relu(emb), context[:, context.shape[1] - (self.context_size - 1) :]


class LSTMPredictor(nn.Module):
    """Embedding -> one-layer LSTM (PyTorch's gate order i, f, g, o) -> Linear.

    State: (B, 2, P) float32 NumPy array, h and c stacked (zeros at the start), so that the
    searches select and replace streams' states by indexing, as the stateless predictor's.
    """

    def __init__(self, vocab_size: int, dim: int, blank: int) -> None:
        super().__init__()
        self.dim, self.blank = dim, blank
        self.embedding = nn.Module()
        self.embedding.weight = _zeros(vocab_size, dim)
        self.lstm = nn.Module()
        for name in ("weight_ih_l0", "weight_hh_l0"):
            setattr(self.lstm, name, _zeros(4 * dim, dim))
        for name in ("bias_ih_l0", "bias_hh_l0"):
            setattr(self.lstm, name, _zeros(4 * dim))
        self.proj = Linear(dim, dim)

    def init_state(self, batch: int, device: Any = None) -> np.ndarray:
        return np.zeros((batch, 2, self.dim), dtype=np.float32)

    def __call__(self, tokens: Any, state: np.ndarray) -> tuple[mx.array, np.ndarray]:
        """tokens (B, U) -> (B, U, P) and the new state."""
        lstm = self.lstm
        emb = self.embedding.weight[mx.array(np.asarray(tokens, dtype=np.int64))]  # (B, U, P)
        x = mx.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, emb, lstm.weight_ih_l0.T)  # (B, U, 4P)
        h, c = mx.array(state[:, 0]), mx.array(state[:, 1])  # (B, P) each
        outs = []
        for u in range(x.shape[1]):
            i, f, g, o = mx.split(x[:, u] + h @ lstm.weight_hh_l0.T, 4, axis=-1)
            c = mx.sigmoid(f) * c + mx.sigmoid(i) * mx.tanh(g)
            h = mx.sigmoid(o) * mx.tanh(c)
            outs.append(h)
        new_state = np.stack([np.array(h), np.array(c)], axis=1)  # (B, 2, P)
        return self.proj(mx.stack(outs, axis=1)), new_state


class Joiner(nn.Module):
    """logits = out(tanh(enc_proj(enc) + pred_proj(pred)))."""

    def __init__(self, d_model: int, predictor_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.enc_proj = Linear(d_model, joiner_dim)
        self.pred_proj = Linear(predictor_dim, joiner_dim)
        self.out = Linear(joiner_dim, vocab_size)

    def project_encoder(self, enc: mx.array) -> mx.array:
        return self.enc_proj(enc)

    def project_predictor(self, pred: mx.array) -> mx.array:
        return self.pred_proj(pred)

    def join(self, enc_proj: mx.array, pred_proj: mx.array) -> mx.array:
        return self.out(mx.tanh(enc_proj + pred_proj))


class TransducerState(NamedTuple):
    frontend: FrontEndState
    encoder: EncoderState


class MlxStateOps:
    """Streams joined and split: every array of a ``TransducerState`` has the batch first
    (what ``mamba_asr.streaming.decode_streams`` uses of ``models.streaming.StateOps``)."""

    @staticmethod
    def cat(states: list[TransducerState]) -> TransducerState:
        return tree_map(lambda *xs: mx.concatenate(xs, axis=0), *states)

    @staticmethod
    def split(state: TransducerState, sizes: list[int]) -> list[TransducerState]:
        ends = np.cumsum(sizes).tolist()
        bounds = zip([0, *ends[:-1]], ends, strict=True)
        return [tree_map(lambda x, a=a, b=b: x[a:b], state) for a, b in bounds]


def tree_map(fn: Any, tree: Any, *rest: Any) -> Any:
    """``fn`` over the arrays of NamedTuples and tuples of arrays, keeping the structure."""
    if isinstance(tree, mx.array):
        return fn(tree, *rest)
    items = [tree_map(fn, *xs) for xs in zip(tree, *rest, strict=True)]
    return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)


class MlxTransducer(nn.Module):
    """The MCT of a ``ModelConfig`` (``build_model``); see the module docstring."""

    def __init__(self, cfg: ModelConfig, dt_rank: int) -> None:
        super().__init__()
        f, t = cfg.frontend, cfg.transducer
        self.frontend = CausalFrontEnd(f.n_mels, cfg.d_model, tuple(f.channels), f.kernel_size)
        self.encoder = MambaEncoder(cfg, dt_rank)
        if t.predictor == "lstm":
            self.predictor = LSTMPredictor(cfg.vocab_size, t.predictor_dim, cfg.blank_index)
        else:
            self.predictor = StatelessPredictor(
                cfg.vocab_size, t.predictor_dim, t.context_size, cfg.blank_index
            )
        self.joiner = Joiner(cfg.d_model, t.predictor_dim, t.joiner_dim, cfg.vocab_size)
        self.blank, self.vocab_size = cfg.blank_index, cfg.vocab_size
        self.subsampling = self.frontend.subsampling
        self.state_ops = MlxStateOps()

    def init_state(self, batch: int, device: Any = None, dtype: Any = None) -> TransducerState:
        """Start-of-stream state of ``batch`` streams (device and dtype: accepted, unused)."""
        return TransducerState(self.frontend.init_state(batch), self.encoder.init_state(batch))

    def forward_chunk(self, feats: Any, state: TransducerState) -> tuple[mx.array, TransducerState]:
        """feats (B, t, C) -> memory (B, ceil(t / S), M) and the state after them."""
        x, fstate = self.frontend(to_mx(feats), state.frontend)
        memory, estate = self.encoder(x, state.encoder)
        return memory, TransducerState(fstate, estate)

    def output_lengths(self, lengths: mx.array) -> mx.array:
        """(B,) feature frames -> (B,) encoder frames, ceil(T / S)."""
        return (lengths + self.subsampling - 1) // self.subsampling

    def encode(self, feats: Any, lengths: Any) -> tuple[mx.array, mx.array]:
        """A padded batch: feats (B, T, C), lengths (B,) -> memory (B, L, M) zero on padding,
        and its lengths (B,). Causal: padding never reaches a valid frame."""
        feats, lengths = to_mx(feats), mx.array(np.asarray(lengths, dtype=np.int32))
        feats = feats * length_mask(lengths, feats.shape[1])[..., None]
        memory, _ = self.forward_chunk(feats, self.init_state(feats.shape[0]))
        out_lengths = self.output_lengths(lengths)
        return memory * length_mask(out_lengths, memory.shape[1])[..., None], out_lengths

    def make_search(self, batch: int, options: Any, max_symbols_per_frame: int = 4) -> Any:
        """The MLX search of ``options.strategy`` (``mamba_asr.decode.streaming.make_search``
        hands searches for this model here)."""
        from mamba_asr.backends.mlx.search import make_search

        return make_search(self, batch, options, max_symbols_per_frame)


def dt_rank_of(weights: dict[str, Any], cfg: ModelConfig) -> int:
    """The Mamba blocks' dt_rank, read from x_proj's weight (R + 2N rows)."""
    rows = weights["encoder.layers.0.mamba.fwd.x_proj.weight"].shape[0]
    return rows - 2 * cfg.mamba.d_state


def build_model(cfg: ModelConfig, weights: dict[str, Any]) -> MlxTransducer:
    """The MLX transducer of ``cfg`` with ``weights`` ({PyTorch name without ``model.``:
    array}); ValueError for a model the MLX backend does not run, or missing weights."""
    if cfg.kind != "transducer" or cfg.encoder_module != "mamba" or cfg.frontend.kind != "causal":
        raise ValueError(
            "the MLX backend runs streaming transducers (kind transducer, encoder_module mamba, "
            f"frontend.kind causal); this model is {cfg.kind} / {cfg.encoder_module} / "
            f"{cfg.frontend.kind}"
        )
    model = MlxTransducer(cfg, dt_rank_of(weights, cfg))
    wanted = {k for k, _ in _flat(model.parameters())}
    missing = sorted(wanted - set(weights))
    if missing:
        raise ValueError(f"weights missing for the MLX model: {', '.join(missing[:5])}")
    model.load_weights([(k, to_mx(weights[k])) for k in wanted], strict=True)
    mx.eval(model.parameters())
    return model


def _flat(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return tree_flatten(tree, prefix)

"""expand_hypotheses: one round of modified beam search's bookkeeping, shared by the PyTorch,
NumPy and MLX searches."""

from __future__ import annotations

import math

from mamba_asr.decode.hypothesis import expand_hypotheses, log_add

NEG_INF = float("-inf")


def test_log_add() -> None:
    assert math.isclose(log_add(math.log(0.2), math.log(0.3)), math.log(0.5))
    assert log_add(NEG_INF, -1.5) == -1.5 and log_add(-1.5, NEG_INF) == -1.5
    assert log_add(NEG_INF, NEG_INF) == NEG_INF


def test_candidates_merge_by_state_and_keep_the_first_place() -> None:
    # two utterances; hypotheses 0, 1 belong to the first, 2 to the second; blank = 0
    tokens = [(5,), (5, 7), (3,)]
    frames = [(0,), (0, 1), (1,)]
    top = [[-1.0, -1.2, -2.0, NEG_INF], [-0.5, -3.0]]
    parent = [[1, 0, 0, 1], [2, 2]]
    token = [[0, 7, 0, 4], [9, 0]]
    e = expand_hypotheses(top, parent, token, tokens, frames, frame=2, blank=0, last=False)
    # hypothesis 1 + blank and hypothesis 0 + 7 reach different states: (5, 7) closed and
    # (5, 7) still open; 0 + blank is (5,) closed; the -inf candidate is skipped
    assert e.tokens == [(5, 7), (5, 7), (5,), (3, 9), (3,)]
    assert e.opens == [False, True, False, True, False]
    assert e.parents == [1, 0, 0, 2, 2]
    assert e.emits == [-1, 7, -1, 9, -1]
    assert e.utts == [0, 0, 0, 1, 1]
    assert e.frames == [(0, 1), (0, 2), (0,), (1, 2), (1,)]
    assert e.scores == [-1.0, -1.2, -2.0, -0.5, -3.0]
    # in the frame's last round an emission closes the hypothesis, so it merges with the same
    # tokens reached by a blank; the merged score is the log-sum, in the first one's place
    e = expand_hypotheses(top, parent, token, tokens, frames, frame=2, blank=0, last=True)
    assert e.tokens == [(5, 7), (5,), (3, 9), (3,)]
    assert e.opens == [False, False, False, False]
    assert e.parents == [1, 0, 2, 2] and e.emits == [-1, -1, 9, -1]
    assert math.isclose(e.scores[0], math.log(math.exp(-1.0) + math.exp(-1.2)), rel_tol=1e-12)
    assert e.scores[1:] == [-2.0, -0.5, -3.0]

"""The README's "Extending" examples run as written and do what they say (a doc that drifts is a defect)."""

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks():
    text = README.read_text()
    section = text.split("## Extending", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_extending_examples_register_and_work():
    from tl_isokl import methods, statistics
    from tl_isokl.extract import direction_from
    from tl_isokl.records import Rollout
    from tl_isokl.steer import Steering
    from tl_isokl.vector import SteeringVector

    code = blocks()
    assert len(code) == 3
    ns: dict = {}
    try:
        for c in code:
            exec(c, ns)
        pos, neg = torch.randn(5, 6) + 1.0, torch.randn(7, 6)
        v = direction_from(pos, neg, "median_diff+project_out_half")
        torch.testing.assert_close(v, (pos.median(0).values - neg.median(0).values) /
                                   (pos.median(0).values - neg.median(0).values).norm())
        vec = SteeringVector(v, 0, "median_diff+project_out_half")
        h = torch.randn(2, 3, 6)
        assert Steering(vec, 0.0).hook(h) is None
        out = Steering(vec, 2.0).hook(h.clone())  # c = 2 x half = the full projection removed
        torch.testing.assert_close(out @ v, torch.zeros(2, 3), rtol=0, atol=1e-5)
        x = np.arange(100, dtype=float)
        assert statistics.statistic("trimmed_mean")(x) == x[(x >= 4.95) & (x <= 94.05)].mean()
        probe = ns["NoRepeatProbe"]()
        r = Rollout("p", "q", 1.0, [1], [5] * 16, False, 16)
        fps = probe.measure(None, None, [r])[0]
        assert [f.t for f in fps] == [0, 8, 16] and [f.alive(0.5) for f in fps] == [True, False, False]
    finally:
        methods.EXTRACTORS.pop("median_diff", None)
        methods.OPERATORS.pop("project_out_half", None)
        statistics._NAMED.pop("trimmed_mean", None)

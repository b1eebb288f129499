"""The CLI's progress: bars in a terminal, one line per finished stage elsewhere (nohup, CI logs), nothing when
disabled (--quiet)."""

import io

from tl_isokl_cli.common import Progress


def test_not_a_terminal_prints_one_line_per_finished_stage():
    buf = io.StringIO()
    p = Progress(stream=buf)
    for done in (8, 16, 24, 32, 32):  # a repeated final tick is not a second stage
        p("rollout α=1", done, 32)
    p("kl α=1", 5, 32)
    p("probe α=1", 32, 32)  # a new stage closes the unfinished one, with what it did
    p("calibration rollouts", 12, None)
    p.close()
    p.close()
    lines = buf.getvalue().splitlines()
    assert [line.split(" rows in ")[0] for line in lines] == [
        "rollout α=1: 32/32", "kl α=1: 5/32", "probe α=1: 32/32", "calibration rollouts: 12"]
    assert all(line.endswith(" s") for line in lines)


def test_disabled_prints_nothing():
    buf = io.StringIO()
    p = Progress(enabled=False, stream=buf)
    p("rollout", 4, 4)
    p.close()
    assert buf.getvalue() == ""


def test_terminal_bar_counts_real_increments(monkeypatch):
    import functools

    import tqdm.auto

    # tests/conftest.py silences tqdm (TQDM_DISABLE, read when tqdm is imported): a bar that counts, here
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, disable=False))
    buf = io.StringIO()
    p = Progress(stream=buf, tty=True)
    p("rollout", 16, 64)
    p("rollout", 48, 64)
    assert p.bar.n == 48 and p.bar.total == 64
    p("rollout", 64, 64)
    assert p.bar is None and "rows in" not in buf.getvalue()

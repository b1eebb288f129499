"""tl_isokl.Progress: the callbacks the library calls, shown as lines in a log (and bars in a terminal/notebook)."""

import io

from tl_isokl.progress import Progress


def test_rows_adapter_accumulates_increments_into_one_stage():
    buf = io.StringIO()
    p = Progress(stream=buf, tty=False)
    tick = p.rows("calibration rollouts", total=10)
    for k in (4, 4, 2):
        tick(k)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calibration rollouts: 10/10 rows in ")


def test_silent_when_disabled_and_not_interactive_in_a_plain_stream():
    from tl_isokl.progress import _interactive

    buf = io.StringIO()
    assert not _interactive(buf)
    p = Progress(enabled=False, stream=buf)
    p.rows("x", 3)(3)
    p("y", 2, 2)
    assert buf.getvalue() == ""

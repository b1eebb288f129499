"""Progress of long work (calibration, sweep cells, compare): one callable for the terminal, logs and notebooks.

The library reports progress through plain callbacks (`sweep(progress=...)` gets (stage, done, total);
`calibrate(progress=...)` gets rows finished); `Progress` turns them into something a person can watch, and
nothing is shown unless one is passed (`progress=None`, the default, is silent).
"""

from __future__ import annotations

import sys
import time


def _interactive(stream) -> bool:
    """A terminal, or a Jupyter kernel (whose stderr is not a TTY but renders tqdm's widget bars)."""
    if bool(getattr(stream, "isatty", lambda: False)()):
        return True
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and shell.get_ipython() is not None and "ipykernel" in sys.modules
    except Exception:  # noqa: BLE001  (IPython present but not running: not interactive)
        return False


class Progress:
    """Progress of long work on stderr, one stage at a time (stage, rows done, total rows or None).

    In a terminal or a notebook: a tqdm bar per stage (rates from real increments, not from the row counter's
    jumps). Elsewhere (nohup, a batch scheduler, a CI log): one line per finished stage, "rollout α=0,1: 96/96 rows
    in 12.3 s", so a long sweep shows where it is without carriage-return noise. `enabled=False` (`--quiet`):
    nothing.
    """

    def __init__(self, enabled: bool = True, stream=None, tty: bool | None = None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else _interactive(self.stream)
        self.bar = None
        self.stage = None
        self.done = 0
        self.total = None
        self.t0 = 0.0
        self.finished = None

    def rows(self, stage: str, total: int | None = None):
        """A callback for `calibrate(progress=...)` / `rollout(progress=...)`, which report rows finished."""
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            self(stage, done[0], total)
        return tick

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled or (stage == self.finished and total is not None and done >= total):
            return  # a repeated final tick of a stage already reported
        if stage != self.stage:
            self.close()
            self.stage, self.total, self.t0 = stage, total, time.monotonic()
            if self.tty:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=stage, unit="row", file=self.stream, leave=False)
        if self.bar is not None:
            self.bar.update(max(0, done - self.bar.n))
        self.done = done
        if total is not None and done >= total:
            self.close()
            self.finished = stage

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.stage is not None and not self.tty and self.enabled and self.done:
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.stage}: {self.done}{of} rows in {time.monotonic() - self.t0:.1f} s", file=self.stream,
                  flush=True)
        self.stage, self.done, self.total = None, 0, None

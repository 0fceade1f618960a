"""`ProgressHook`: a live progress bar of a training run, and one summary line when it ends."""
import logging
import math
import os
import sys
import time
from typing import Callable, Optional, TextIO

from tqdm import tqdm

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["ProgressHook", "PROGRESS_LINE_PERCENT", "draws_a_bar"]

logger = logging.getLogger(__name__)

#: without a terminal, one progress line every this many percent of the iterations.
PROGRESS_LINE_PERCENT = 5


def _latest_loss(storage) -> Optional[float]:
    """The last total loss the trainer wrote to EventStorage (None before the first one)."""
    history = storage.histories().get("total_loss")
    return None if history is None or not len(history.values()) else float(history.latest())


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def draws_a_bar(file: TextIO) -> bool:
    """Whether `file` is a terminal a bar can be drawn on: a TTY with a non-zero width (a TTY of
    zero columns, e.g. some CI runners' pseudo-terminals, would show nothing: lines instead)."""
    if not getattr(file, "isatty", lambda: False)():
        return False
    try:
        return os.get_terminal_size(file.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class ProgressHook(HookBase):
    """
    Shows a training run's progress: on a terminal, a tqdm bar (iteration / total, ETA, last
    total loss); otherwise (CI, a log file) one line every `line_percent` percent of the
    iterations, so that logs stay short but a stalled run is visible. When the run ends, one
    summary line: iterations, time, last total loss, or the iteration it stopped at. Lines start
    with "[progress]" and go to `file` (stderr by default, as tqdm's bar does; stdout keeps the
    trainer's log). Only the main process shows progress.
    """

    def __init__(
        self,
        name: str = "train",
        file: Optional[TextIO] = None,
        interactive: Optional[bool] = None,
        line_percent: float = PROGRESS_LINE_PERCENT,
        clock: Callable[[], float] = time.perf_counter,
    ):
        """
        Args:
            name: what is trained, shown in front of the bar and of every line.
            file: where the bar and lines go (None: sys.stderr at the start of training).
            interactive: draw a live bar (None: when `file` is a terminal).
            line_percent: the step of the non-interactive lines, in percent of the iterations.
            clock: seconds, for the ETA (a parameter so tests can make time deterministic).
        """
        self.name = name
        self.file = file
        self.interactive = interactive
        self.line_percent = float(line_percent)
        self.clock = clock
        self._bar = None
        self._next_line = 0
        self._enabled = True

    def before_train(self):
        self._enabled = comm.is_main_process()
        if not self._enabled:
            return
        self.file = self.file or sys.stderr
        if self.interactive is None:
            self.interactive = draws_a_bar(self.file)
        self._start_iter = self.trainer.start_iter
        self._total = max(self.trainer.max_iter - self._start_iter, 1)
        self._start = self.clock()
        self._next_line = 0
        if self.interactive:
            self._bar = tqdm(total=self.trainer.max_iter, initial=self._start_iter, desc=self.name,
                             file=self.file, unit="it", dynamic_ncols=True, leave=True)

    def after_step(self):
        if not self._enabled:
            return
        it = self.trainer.iter + 1  # iterations done
        loss = _latest_loss(self.trainer.storage)
        if self._bar is not None:
            self._bar.update(it - self._bar.n)
            if loss is not None:
                self._bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            return
        done = it - self._start_iter
        percent = 100.0 * done / self._total
        if percent + 1e-9 >= self._next_line or it == self.trainer.max_iter:
            self._write(self._line(it, loss, done))
            self._next_line = (math.floor(percent / self.line_percent) + 1) * self.line_percent

    def _line(self, it: int, loss: Optional[float], done: int) -> str:
        elapsed = self.clock() - self._start
        eta = elapsed / done * (self.trainer.max_iter - it) if done else float("nan")
        loss_text = "n/a" if loss is None else f"{loss:.4g}"
        eta_text = _fmt_seconds(eta) if math.isfinite(eta) else "?"
        return (f"[progress] {self.name}: iter {it}/{self.trainer.max_iter} "
                f"({100.0 * it / self.trainer.max_iter:.0f}%)  eta {eta_text}  loss {loss_text}")

    def after_train(self):
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        it = self.trainer.iter
        elapsed = _fmt_seconds(self.clock() - self._start)
        loss = _latest_loss(self.trainer.storage)
        loss_text = "n/a" if loss is None else f"{loss:.4g}"
        if it >= self.trainer.max_iter:
            self._write(f"[progress] {self.name}: done, {self.trainer.max_iter} iterations in {elapsed}, "
                        f"last total loss {loss_text}")
        else:
            self._write(f"[progress] {self.name}: stopped by an exception at iteration {it} of "
                        f"{self.trainer.max_iter} after {elapsed}, last total loss {loss_text}")

    def _write(self, line: str) -> None:
        print(line, file=self.file, flush=True)

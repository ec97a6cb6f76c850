"""What a job shows on the console: one progress line and a summary, Ray's own chatter only with -v.

Ray talks a lot on a driver's console: Ray Data's progress blocks and execution plans, the
token-authentication notice, a C++ notice about actor restarts each time an actor pool starts,
deprecation warnings, and (forwarded from every worker) Ray Train's controller and checkpoint
lines. None of it helps a raydetect user, and it drowns the line that does. Unless verbose
(``raydetect -v``, i.e. ``RAYDETECT_VERBOSE=1``), :func:`quiet_ray` turns it down where Ray allows
(logger levels, Ray Data's context, no worker log forwarding) and :class:`ConsoleFilter` drops the
few lines that reach the console anyway: what Ray's C++ core writes straight to stderr, and the
raylet's warnings that Ray's driver prints from a thread of its own. Ray's log files keep
everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings
from typing import IO, Any

VERBOSE_ENV = "RAYDETECT_VERBOSE"
INTERVAL_ENV = "RAYDETECT_PROGRESS_INTERVAL"  # seconds between progress lines when stderr is not a terminal

# Driver-side Python loggers of Ray whose console output is noise to a raydetect user.
_LOGGERS = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # "token authentication is enabled"
    "ray._private.runtime_env": logging.WARNING,
    "ray.train": logging.WARNING,
    "ray.tune": logging.WARNING,
}
# Lines that reach the console past Python logging: the C++ core's actor-restart notice, and the
# raylet's warnings (e.g. "N PYTHON worker processes have been started") that the driver prints.
NOISE = re.compile(
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and max_restarts > 0"
    r"|\(raylet\)(\x1b\[[0-9;]*m)?\s*WARNING"
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Set for this process and the processes it starts (a local Ray's workers inherit it)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def quiet_ray() -> None:
    """Turn Ray's driver-side console output down to warnings that matter (no-op when verbose)."""
    if verbose():
        return
    from ray.data import DataContext  # Ray only once a job runs: `raydetect --help` stays fast

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data logs to a file and to the console: quiet only the console handler.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    for name, level in _LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray(\.|$)")  # e.g. filter-performance hints


_stderr_tty: bool | None = None  # whether stderr was a terminal before ConsoleFilter piped it


def stderr_is_tty(stream: Any) -> bool:
    if stream is sys.stderr and _stderr_tty is not None:  # piped by ConsoleFilter
        return _stderr_tty
    return bool(getattr(stream, "isatty", lambda: False)())


class _FdFilter:
    """One file descriptor pointed at a pipe; a thread copies each line to the real target unless
    it is noise."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = os.dup(fd)
        read_fd, self.write_fd = os.pipe()
        os.dup2(self.write_fd, fd)
        self.reader = os.fdopen(read_fd, "rb")
        self.thread = threading.Thread(target=self._pump, name=f"raydetect-console-filter-{fd}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.reader:
            if not NOISE.search(line.decode(errors="replace")):
                os.write(self.saved, line)

    def close(self) -> None:
        os.dup2(self.saved, self.fd)
        os.close(self.write_fd)  # the pipe's last writer: the thread sees end of file
        self.thread.join(timeout=5)
        self.reader.close()
        os.close(self.saved)


class ConsoleFilter:
    """Drop :data:`NOISE` lines from everything written to stdout and stderr (C++ included).

    :meth:`close` restores both and drains the pipes, so nothing written before it is lost.
    """

    def __init__(self) -> None:
        global _stderr_tty
        _stderr_tty = os.isatty(2)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._filters = [_FdFilter(1), _FdFilter(2)]
        self._closed = False

    def close(self) -> None:
        global _stderr_tty
        if self._closed:
            return
        self._closed = True
        _stderr_tty = None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for f in self._filters:
            f.close()


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """One progress line for a job: inputs done / total, rate, ETA.

    On a terminal it redraws in place; elsewhere (CI, ``ray job submit`` logs, nohup) it prints a
    line every ``$RAYDETECT_PROGRESS_INTERVAL`` seconds (default 30), and always a last one.
    """

    def __init__(self, job: str, total: int | None, unit: str = "inputs", stream: IO[str] | None = None,
                 interval: float | None = None) -> None:  # fmt: skip
        self.job, self.total, self.unit = job, total, unit
        self.stream: Any = stream or sys.stderr
        self.tty = stderr_is_tty(self.stream) and not verbose()
        self.interval = interval if interval is not None else (0.5 if self.tty else float(os.environ.get(INTERVAL_ENV, "30")))
        self.done = 0
        self.start = time.monotonic()
        self._shown = self.start
        self._shown_done = -1  # inputs done when a line was last shown

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.job}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            text += f" ({min(self.done / self.total, 1):.0%})"
        text += f", {rate:.1f}/s, {_duration(elapsed)}"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            self._show(final=False, now=now)

    def _show(self, final: bool, now: float | None = None) -> None:
        if not self.tty and self.done == self._shown_done:
            return  # nothing new since the last line
        self._shown_done = self.done
        if self.tty:
            self.stream.write("\r\033[K" + self.line(now) + ("\n" if final else ""))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._show(final=True)

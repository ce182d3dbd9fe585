"""What B1 and B2 read as the CPU a reply spends: the thread's CPU time, or its instructions.

By default `cpu` is `time.thread_time`. In B7's worker, which runs under valgrind's callgrind,
`count_instructions` makes it the number of instructions the main thread has executed so far:
the same measuring code then counts work instead of timing it, and a busy machine does not
change a count.
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["CallgrindCounter", "cpu", "count_instructions", "CLIENT_SOURCE", "parse_totals"]

_read: Callable[[], float] = time.thread_time


def cpu() -> float:
    """A monotonic reading of this thread's CPU: seconds, or instructions under B7."""
    return _read()


# callgrind's client requests are inline machine code in a C header: this library is the
# smallest bridge to them (built by B7 with the machine's C compiler)
CLIENT_SOURCE = """\
#include <valgrind/callgrind.h>
int lkseg_running(void) { return RUNNING_ON_VALGRIND; }
void lkseg_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
void lkseg_zero(void) { CALLGRIND_ZERO_STATS; }
"""

_TOTALS = re.compile(r"^(?:totals|summary): (\d+)", re.MULTILINE)


def parse_totals(text: str) -> int:
    """The instruction count of one callgrind dump (its ``totals:`` line)."""
    m = _TOTALS.search(text)
    if m is None:
        raise ValueError("not a callgrind dump: no 'totals:' or 'summary:' line")
    return int(m.group(1))


class CallgrindCounter:
    """Instructions the main thread executed since the counter was made, read by asking
    callgrind to dump its counts (which also resets them) and adding them up; what a
    reading itself executes is left out (the counts are zeroed again after it).

    The process must run under ``valgrind --tool=callgrind --separate-threads=yes
    --callgrind-out-file=<out>`` (with a literal ``%p`` only where ``out`` says so): dump
    ``k`` of thread 1 is ``<out>.<k>-01``. Each dump file is deleted once read.
    """

    def __init__(self, library: Path, out: str) -> None:
        lib = ctypes.CDLL(str(library))
        if not lib.lkseg_running():
            raise RuntimeError(
                "not running under valgrind: B7's worker runs as "
                "'valgrind --tool=callgrind --separate-threads=yes ...'"
            )
        lib.lkseg_dump.argtypes = [ctypes.c_char_p]
        self._dump = lib.lkseg_dump
        self._zero = lib.lkseg_zero
        self._out = out
        self._dumps = 0
        self._total = 0

    def __call__(self) -> float:
        self._dump(b"lkseg")
        self._dumps += 1
        path = Path(f"{self._out}.{self._dumps}-01")
        self._total += parse_totals(path.read_text(errors="replace"))
        path.unlink()
        # reading the dump (a file of about a megabyte) is not what is measured
        self._zero()
        return float(self._total)


def count_instructions(counter: Callable[[], float]) -> None:
    """Make `cpu` read ``counter`` (a `CallgrindCounter`) for the rest of the process."""
    global _read
    _read = counter

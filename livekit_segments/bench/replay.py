"""A fixed workload for instruction counting (``scripts/bench-instructions``).

CPU time on a shared 2-core machine moves by a few percent from run to run, more than the
effect B1 looks for. Instruction counts under ``valgrind --tool=callgrind`` do not: this runs
R replies of S segments under one form, and the script takes the difference between two
values of R (or S) so that start-up cancels out.

    python -m livekit_segments.bench.replay {upstream,patched} REPLIES SEGMENTS
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from .fakes import ScriptedAgent, ZeroLatencySink, close_session, reply, silence, start_session
from .forms import Form, activate
from .install_cost import SCRIPT
from .segment_cost import script


async def _run(form: Form, replies: int, segments: int) -> None:
    activate(form)
    sink = ZeroLatencySink()
    lines = SCRIPT if segments <= 1 else script(segments, form)
    session = await start_session(ScriptedAgent(lines, frames=[silence(20)]), sink)
    try:
        for _ in range(3):  # warm up: first replies import and cache
            await reply(session)
        gc.collect()
        for _ in range(replies):
            await reply(session)
    finally:
        await close_session(session, sink)


def main(argv: list[str]) -> int:
    """Entry point: ``FORM REPLIES SEGMENTS``."""
    logging.getLogger("livekit").setLevel(logging.ERROR)
    form, replies, segments = Form(argv[0]), int(argv[1]), int(argv[2])
    asyncio.run(_run(form, replies, segments))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

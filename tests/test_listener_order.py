"""playout_started must not depend on the order in which the sink runs its listeners.

livekit rtc before 1.1.20 (pinned by livekit-agents 1.6.0 to 1.8.3) keeps each event's
listeners in a set, so upstream's own playback-started listener may run before or after any
other. The sink here runs them newest first, the order that broke a second listener.
"""

from __future__ import annotations

from typing import Any

from livekit_segments import SegmentBreak

from .fakes import FakeAudioSink
from .test_segments import Turn, assert_strictly_increasing


class NewestFirstSink(FakeAudioSink):
    """Runs each event's listeners in reverse registration order."""

    def emit(self, event: Any, *args: Any) -> None:
        for callback in reversed(list(self._events.get(event, ()))):
            callback(*args)


async def test_playout_started_resolves_whatever_the_listener_order() -> None:
    t = Turn([["A.", SegmentBreak(), "B.", SegmentBreak(), "C."]])
    t.sink = NewestFirstSink(t.clock)
    await t.run()
    await t.close()

    assert len(t.handles) == 3
    started = [s.started_at for s in t.sink.segments]
    assert [h.playout_started.result() for h in t.handles] == started
    assert_strictly_increasing(started)

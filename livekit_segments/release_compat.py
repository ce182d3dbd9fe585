"""Every difference between livekit-agents releases that this package meets, in one place.

The supported range is ``SUPPORTED_VERSIONS`` (1.6.0 to 1.8.x). What differs, and how:

| what                                   | releases          | how it is met                      |
|----------------------------------------|-------------------|------------------------------------|
| `SpeechHandle.interrupt(source=...)`,  | 1.8.2 on          | a segment handle's `interrupt()`   |
| `InterruptionSource`                   | (absent before)   | has the release's own signature    |
|                                        |                   | (handle_state picks it from        |
|                                        |                   | `inspect.signature`); the type is  |
|                                        |                   | never imported                     |
| playback-started listener order (rtc   | 1.6.0 to 1.8.3    | `playout_started` is resolved from |
| `EventEmitter` keeps a set before      | (livekit rtc      | `first_frame_fut.set_result`, not  |
| livekit 1.1.20)                        | 1.1.8 to 1.1.18)  | from a listener of its own; an     |
|                                        |                   | interruption inside the report is  |
|                                        |                   | told by `on_playback_started`'s    |
|                                        |                   | marker, not by listener order      |
| `AudioOutput.on_playback_progressed`   | 1.7.1 on          | `report_playback_progress` below   |
| (sinks report played stretches)        |                   | calls it where it exists           |
| `SpeechHandle.exception()`             | 1.6.5 on          | `speech_error` below: None where   |
|                                        |                   | the release cannot tell            |
| `openai>=2` with no upper bound (3.x   | 1.6.0 to 1.6.9    | install `openai<3` beside them     |
| drops httpx, `import livekit.agents`   |                   | (packaging only: scripts/compat,   |
| fails)                                 |                   | COMPAT.md, README)                 |

The seams `install()` wraps are the same in every supported release (`installer.seam_report`
checks each of them before patching). `scripts/compat` tests each release; COMPAT.md has the
results.
"""

from __future__ import annotations

from livekit.agents.voice import io
from livekit.agents.voice.speech_handle import SpeechHandle

__all__ = ["report_playback_progress", "speech_error"]

_HAS_PROGRESS = hasattr(io.AudioOutput, "on_playback_progressed")
_HAS_EXCEPTION = hasattr(SpeechHandle, "exception")


def report_playback_progress(
    output: io.AudioOutput, *, started_at: float, offset: float, duration: float
) -> None:
    """`AudioOutput.on_playback_progressed` where the release has it (1.7.1 on), else nothing.

    Before 1.7.1 a sink is described by its segment endpoints alone, so there is nothing to
    report.
    """
    if _HAS_PROGRESS:
        output.on_playback_progressed(started_at=started_at, offset=offset, duration=duration)


def speech_error(handle: SpeechHandle) -> BaseException | None:
    """What a finished handle failed with (`SpeechHandle.exception()`, 1.6.5 on).

    None while the handle is not done, and on releases before 1.6.5, which do not record it.
    """
    if not _HAS_EXCEPTION or not handle.done():
        return None
    error: BaseException | None = handle.exception()
    return error

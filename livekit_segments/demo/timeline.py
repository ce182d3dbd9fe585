"""``--plot``: the turn's waveform with each response's signals drawn where they happened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MultipleLocator

from .analysis import ONSET_THRESHOLD, Report, SegmentRow
from .turn import TurnResult

__all__ = ["plot_timeline"]

_WAVE = "#3b4252"
_CREATED = "#6b7280"
_INTERRUPT = "#d62728"
_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
_ZOOM_BEFORE, _ZOOM_AFTER = 0.03, 0.09  # seconds around playout_started in the close-ups


def plot_timeline(result: TurnResult, report: Report, path: str | Path) -> None:
    """Draw the turn: the whole waveform on top, a close-up of each response's onset below."""
    sr = report.sample_rate
    audio = report.audio.astype(np.float64) / 32768.0
    played = [r for r in report.rows if r.sink_started is not None]

    # a bare Figure renders with Agg and leaves pyplot's global state (and backend) alone
    fig = Figure(figsize=(13, 7.2), dpi=110, layout="constrained")
    n_zoom = max(len(played), 1)
    grid = fig.add_gridspec(2, n_zoom, height_ratios=[1.9, 1.0])
    top = fig.add_subplot(grid[0, :])
    _draw_turn(top, audio, sr, report)
    for n, row in enumerate(played):
        _draw_onset(fig.add_subplot(grid[1, n]), audio, sr, row)
    if not played:
        ax = fig.add_subplot(grid[1, 0])
        ax.text(0.5, 0.5, "no response reached the speaker", ha="center", va="center")
        ax.set_axis_off()

    n_handles = sum(r.handle is not None for r in report.rows)
    fig.suptitle(
        f"livekit-segments demo: one reply, {n_handles} SpeechHandle"
        f"{'' if n_handles == 1 else 's'} ({result.synth_name} voice)",
        fontsize=14,
        fontweight="bold",
    )
    fig.savefig(path, facecolor="white")


def _color(row: SegmentRow) -> str:
    return _COLORS[row.position % len(_COLORS)]


def _envelope(
    audio: npt.NDArray[np.float64], sr: int, buckets: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Min and max per bucket: a waveform that stays crisp at any length."""
    per = max(len(audio) // buckets, 1)
    usable = len(audio) // per * per
    shaped = audio[:usable].reshape(-1, per)
    t = (np.arange(shaped.shape[0]) * per + per / 2) / sr
    return t, shaped.min(axis=1), shaped.max(axis=1)


def _draw_turn(ax: Axes, audio: npt.NDArray[np.float64], sr: int, report: Report) -> None:
    duration = len(audio) / sr
    t, lo, hi = _envelope(audio, sr, 4000)
    ax.fill_between(t, lo, hi, color=_WAVE, linewidth=0.4, zorder=3)
    ax.axhline(0.0, color=_WAVE, linewidth=0.4, zorder=3)

    for row in report.rows:
        color = _color(row)
        if row.sink_started is not None:
            end = row.sink_ended if row.sink_ended is not None else duration
            ax.axvspan(row.sink_started, end, color=color, alpha=0.13, zorder=1, linewidth=0)
            status = f"\n{row.status}" if row.status.startswith("interrupted") else ""
            ax.text(
                row.sink_started + 0.04,
                0.93,
                f"#{row.position} {row.response.id}{status}",
                color=color,
                fontsize=10,
                fontweight="bold",
                va="top",
                transform=ax.get_xaxis_transform(),
                zorder=6,
            )
        elif row.speech_created is not None:
            # announced, but nothing of it played
            ax.text(
                row.speech_created + 0.01,
                -0.68,
                f"#{row.position} {row.response.id}: {row.status}",
                color=color,
                fontsize=10,
                fontweight="bold",
                zorder=6,
            )
        if row.playout_started is not None:
            ax.axvline(row.playout_started, color=color, linewidth=1.6, zorder=4)
            ax.plot(row.playout_started, 0.8, marker="v", markersize=10, color=color, zorder=5)
        if row.speech_created is not None:
            ax.axvline(row.speech_created, color=color, linewidth=1.1, linestyle=(0, (4, 3)))
            ax.plot(
                row.speech_created,
                -0.8,
                marker="D",
                markersize=7,
                color=color,
                markeredgecolor="white",
                zorder=5,
                clip_on=False,  # segment 0's is at the very start of the axis
            )

    if report.interrupt_at is not None:
        ax.axvline(report.interrupt_at, color=_INTERRUPT, linewidth=2.2, zorder=5)
        ax.text(
            report.interrupt_at - 0.015,
            0.5,
            f"interrupt\n{report.interrupt_at * 1000:.0f} ms",
            color=_INTERRUPT,
            fontsize=10,
            fontweight="bold",
            ha="right",
            va="center",
            transform=ax.get_xaxis_transform(),
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 2},
            zorder=6,
        )

    ax.set_xlim(0.0, max(duration, 0.5))
    ax.set_ylim(-1.0, 1.0)
    step = 0.5 if duration > 1.5 else 0.1
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_minor_locator(MultipleLocator(step / 5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.1f} s"))
    ax.set_xlabel("time since generate_reply()")
    ax.set_ylabel("amplitude (full scale)")
    ax.grid(axis="x", which="major", color="#d0d4dc", linewidth=0.6)
    ax.set_title(
        "the turn as it left the rtc.AudioSource  ·  shaded: each response's playout",
        fontsize=11,
        loc="left",
    )
    handles = [
        Line2D(
            [],
            [],
            color="black",
            marker="v",
            markersize=9,
            linewidth=1.6,
            label="playout_started (handle)",
        ),
        Line2D(
            [],
            [],
            color="black",
            marker="D",
            markersize=6,
            linewidth=1.1,
            linestyle=(0, (4, 3)),
            label="speech_created",
        ),
        Patch(color=_WAVE, label="audio heard"),
    ]
    if report.interrupt_at is not None:
        handles.append(Line2D([], [], color=_INTERRUPT, linewidth=2.2, label="interrupt"))
    ax.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=9,
        frameon=False,
        ncols=len(handles),
    )


def _draw_onset(ax: Axes, audio: npt.NDArray[np.float64], sr: int, row: SegmentRow) -> None:
    """A close-up around ``playout_started``, in ms from it."""
    color = _color(row)
    anchor = row.playout_started if row.playout_started is not None else row.sink_started
    assert anchor is not None
    begin = max(int((anchor - _ZOOM_BEFORE) * sr), 0)
    end = min(int((anchor + _ZOOM_AFTER) * sr), len(audio))
    t_ms = (np.arange(begin, end) / sr - anchor) * 1000.0
    ax.axvspan(0.0, t_ms[-1] if len(t_ms) else 0.0, color=color, alpha=0.13, linewidth=0)
    ax.plot(t_ms, audio[begin:end], color=_WAVE, linewidth=0.7)
    threshold = ONSET_THRESHOLD / 32768.0
    for y in (threshold, -threshold):
        ax.axhline(y, color="#9aa1ad", linewidth=0.6, linestyle=":")

    ax.axvline(0.0, color=color, linewidth=1.6)
    ax.plot(0.0, 0.8, marker="v", markersize=9, color=color)
    if row.speech_created is not None:
        created_ms = (row.speech_created - anchor) * 1000.0
        if created_ms >= -_ZOOM_BEFORE * 1000:
            ax.axvline(created_ms, color=color, linewidth=1.1, linestyle=(0, (4, 3)))
            ax.plot(
                created_ms, -0.8, marker="D", markersize=6, color=color, markeredgecolor="white"
            )
        else:
            ax.annotate(
                f"speech_created\n{created_ms:.0f} ms",
                xy=(-_ZOOM_BEFORE * 1000, -0.8),
                xytext=(-_ZOOM_BEFORE * 1000 + 4, -0.8),
                fontsize=8,
                color=color,
                va="center",
                arrowprops={"arrowstyle": "<-", "color": color},
            )
    lag = row.onset_lag
    if lag is not None:
        ax.plot(
            lag * 1000.0,
            0.0,
            marker="o",
            markersize=7,
            color=_INTERRUPT,
            zorder=5,
            markerfacecolor="none",
            markeredgewidth=1.6,
        )
        onset_text = f"audible at {lag * 1000:+.1f} ms"
    else:
        onset_text = "never audible"
    ax.set_xlim(-_ZOOM_BEFORE * 1000, _ZOOM_AFTER * 1000)
    ax.set_ylim(-1.0, 1.0)
    ax.xaxis.set_major_locator(MultipleLocator(20))
    ax.xaxis.set_minor_locator(MultipleLocator(5))
    ax.set_xlabel("ms from playout_started")
    ax.set_title(
        f"#{row.position} {row.response.id}: {onset_text}",
        fontsize=10,
        color=color,
        fontweight="bold",
    )
    ax.grid(axis="x", which="major", color="#d0d4dc", linewidth=0.6)
    if row.position == 0:
        ax.set_ylabel("amplitude")
        ax.legend(
            handles=[
                Line2D([], [], color="#9aa1ad", linestyle=":", label="onset threshold (-40 dBFS)"),
                Line2D(
                    [],
                    [],
                    color=_INTERRUPT,
                    marker="o",
                    markerfacecolor="none",
                    linestyle="",
                    label="measured onset",
                ),
            ],
            loc="upper right",
            fontsize=8,
            framealpha=0.92,
        )

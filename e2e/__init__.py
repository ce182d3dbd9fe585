"""The end-to-end harness of `scripts/heard-e2e`: a real agent session, real headless
Chromium with real WebRTC over an impaired loopback path, and a recording of what the
browser really played (a PulseAudio null sink's monitor) as ground truth.

Not part of the published package: it lives beside it, like `scripts/`.
"""

"""``livekit-segments demo``: one multi-response reply in a real, offline `AgentSession`.

Modules:

- `agent`: the scripted agent (three responses with `SegmentBreak`s) and its local models;
- `synth`: the built-in synthesizer; `espeak`: the espeak-ng adapter;
- `realtime_sink`: an audio output clocked by a real `rtc.AudioSource`, and its recording;
- `turn`: runs one reply; `analysis`: checks its signals; `timeline`: draws it;
- `cli`: the subcommand.

Everything but `cli` needs the ``demo`` extra (numpy; matplotlib for ``--plot``).
"""

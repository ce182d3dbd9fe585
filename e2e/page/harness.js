// The page of scripts/heard-e2e: the agent's audio arrives over a WebSocket, goes into a
// MediaStreamTrack, crosses real WebRTC (Opus, NetEq) between two peer connections whose
// packets pass through the harness's UDP relay, and plays to the default output device
// through an audio element, as livekit-client plays a remote track by default. The frames
// themselves are received and scheduled off this thread, in audio-worker.js.
const params = new URLSearchParams(location.search);
const relayA = Number(params.get('relayA')); // where pcA sends (it believes pcB is there)
const relayB = Number(params.get('relayB')); // where pcB sends
const state = (window.harness = { phase: 'starting', errors: [] });
const log = (...a) => console.log('[page]', ...a);

function munge(sdp) {
  // no candidates of its own reach the other side: each peer only learns the relay
  return sdp
    .split('\r\n')
    .filter((l) => !l.startsWith('a=candidate') && !l.startsWith('a=end-of-candidates'))
    .join('\r\n');
}

function relayCandidate(port) {
  return { candidate: `candidate:1 1 udp 2130706431 127.0.0.1 ${port} typ host`, sdpMid: '0', sdpMLineIndex: 0 };
}

async function main() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = 'arraybuffer';
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });

  // sending side: the agent's frames (24 kHz s16 mono) -> worklet -> track
  const sendCtx = new AudioContext({ sampleRate: 24000 });
  await sendCtx.audioWorklet.addModule('feeder-worklet.js');
  const feeder = new AudioWorkletNode(sendCtx, 'feeder', { outputChannelCount: [1] });
  // audio that reached the feeder after its time (a main thread late by more than LEAD_S)
  state.feederLateMs = 0;
  feeder.port.onmessage = (e) => {
    state.feederLateMs = e.data.lateMs;
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: 'feeder', lateMs: e.data.lateMs }));
    }
  };
  const dest = sendCtx.createMediaStreamDestination();
  dest.channelCount = 1;
  feeder.connect(dest);
  await sendCtx.resume();

  const pcA = new RTCPeerConnection();
  const pcB = new RTCPeerConnection();
  window.pcs = { pcA, pcB };
  pcA.addTrack(dest.stream.getAudioTracks()[0], dest.stream);

  const received = new Promise((resolve) => {
    pcB.ontrack = (ev) => resolve(ev.track);
  });
  const offer = await pcA.createOffer();
  await pcA.setLocalDescription(offer);
  await pcB.setRemoteDescription({ type: 'offer', sdp: munge(offer.sdp) });
  const answer = await pcB.createAnswer();
  await pcB.setLocalDescription(answer);
  await pcA.setRemoteDescription({ type: 'answer', sdp: munge(answer.sdp) });
  await pcA.addIceCandidate(relayCandidate(relayA));
  await pcB.addIceCandidate(relayCandidate(relayB));

  const track = await received;
  const audio = new Audio();
  audio.srcObject = new MediaStream([track]);
  await audio.play();
  window.remoteTrack = track;
  window.remoteAudio = audio;

  await new Promise((resolve, reject) => {
    const check = () => {
      if (pcB.connectionState === 'connected') resolve();
      if (pcB.connectionState === 'failed') reject(new Error('peer connection failed'));
    };
    pcB.onconnectionstatechange = check;
    check();
  });

  // the client companion, when the harness runs with it: loaded now, started when the
  // harness says the agent side is listening (as when a user joins an agent's room)
  let startCompanion = null;
  if (params.get('companion') === '1') {
    ({ startCompanion } = await import('./companion.js'));
  }

  ws.onmessage = (e) => {
    if (typeof e.data !== 'string') return;
    const msg = JSON.parse(e.data);
    if (msg.type === 'start-companion') {
      startCompanion({ ws, track, audio, pcB }).catch((err) => {
        state.errors.push(String(err));
        ws.send(JSON.stringify({ type: 'companion-failed', error: String(err && err.stack || err) }));
      });
    } else if (window.onHarnessMessage) window.onHarnessMessage(msg);
  };

  // the agent's audio: its own WebSocket, received and scheduled in a worker (audio-worker.js)
  // that hands each frame to the feeder directly; this thread only sends it fresh readings
  // of the sending context's clock against the wall clock
  function reading() {
    const ts = sendCtx.getOutputTimestamp();
    if (ts.contextTime > 0) return [ts.contextTime, (performance.timeOrigin + ts.performanceTime) / 1000];
    return [sendCtx.currentTime, Date.now() / 1000];
  }
  const channel = new MessageChannel();
  feeder.port.postMessage({ port: channel.port1 }, [channel.port1]);
  const worker = new Worker('audio-worker.js');
  let leadS = null;
  await new Promise((resolve, reject) => {
    worker.onmessage = (e) => {
      if (e.data.type === 'open') {
        leadS = e.data.leadS;
        resolve();
      } else reject(new Error('the audio WebSocket failed'));
    };
    worker.onerror = (e) => reject(new Error(`audio worker: ${e.message}`));
    worker.postMessage(
      { type: 'init', port: channel.port2, sampleRate: sendCtx.sampleRate, reading: reading(), url: `ws://${location.host}/audio` },
      [channel.port2],
    );
  });
  setInterval(() => worker.postMessage({ type: 'reading', reading: reading() }), 250);
  state.phase = 'ready';
  ws.send(JSON.stringify({ type: 'ready', outputLatency: sendCtx.outputLatency, leadS }));
  log('ready');
}

main().catch((e) => {
  state.phase = 'failed';
  state.errors.push(String(e && e.stack || e));
  console.error('[page] failed', e);
});

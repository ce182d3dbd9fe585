// The client companion in the harness page: client/dist's startPlayoutReporter on a stand-in
// for a livekit-client Room. The stand-in has what the companion uses of a Room: events,
// remoteParticipants (the agent, kind AGENT, with its audio track), and
// localParticipant.performRpc, which is carried over the harness WebSocket to the agent's
// registered RPC handlers with the same payloads (docs/heard-e2e.md says what that skips),
// and registerRpcMethod, whose handlers answer the agent's calls.
import { startPlayoutReporter } from '/client/index.js';

class Emitter {
  constructor() { this.handlers = new Map(); }
  on(ev, fn) { (this.handlers.get(ev) ?? this.handlers.set(ev, new Set()).get(ev)).add(fn); return this; }
  off(ev, fn) { this.handlers.get(ev)?.delete(fn); return this; }
  emit(ev, ...args) { for (const fn of [...(this.handlers.get(ev) ?? [])]) fn(...args); }
}

class RpcError extends Error {
  constructor(code, message) { super(message); this.code = code; this.name = 'RpcError'; }
}

export async function startCompanion({ ws, track, audio, pcB }) {
  const pending = new Map();
  const methods = new Map();
  let nextId = 1;
  const prevHandler = window.onHarnessMessage;
  const answer = async (msg) => {
    const reply = { type: 'rpc-call-reply', id: msg.id };
    const handler = methods.get(msg.method);
    if (!handler) reply.error = { code: 1400, message: 'Method not supported at destination' };
    else {
      try {
        reply.payload = await handler({
          requestId: String(msg.id), callerIdentity: 'agent', payload: msg.payload, responseTimeout: 10000,
        });
      } catch (e) {
        reply.error = { code: e?.code ?? 1500, message: String(e?.message ?? e) };
      }
    }
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(reply));
  };
  window.onHarnessMessage = (msg) => {
    if (msg.type === 'rpc-call') {
      void answer(msg);
    } else if (msg.type === 'rpc-reply') {
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      if (msg.error) p.reject(new RpcError(msg.error.code, msg.error.message));
      else p.resolve(msg.payload ?? '');
    } else if (prevHandler) prevHandler(msg);
  };

  // a RemoteAudioTrack as far as the companion looks: the MediaStreamTrack, the elements
  // playing it, its events and its receiver's stats
  const remoteTrack = new Emitter();
  Object.assign(remoteTrack, {
    kind: 'audio',
    sid: 'TR_agent_audio',
    mediaStreamTrack: track,
    attachedElements: [audio],
    getRTCStatsReport: () => pcB.getReceivers()[0].getStats(),
  });
  const publication = { kind: 'audio', trackSid: 'TR_agent_audio', track: remoteTrack, isSubscribed: true };
  const agent = {
    identity: 'agent',
    kind: 4, // ParticipantInfo_Kind.AGENT
    isAgent: true,
    attributes: { 'lk.agent.state': 'listening' },
    trackPublications: new Map([[publication.trackSid, publication]]),
  };
  const room = new Emitter();
  Object.assign(room, {
    name: 'heard-e2e',
    options: { webAudioMix: false },
    // livekit-client 2.9+: on the Room (earlier: on localParticipant)
    registerRpcMethod(method, handler) {
      if (methods.has(method)) throw new Error(`RPC method '${method}' already registered`);
      methods.set(method, handler);
    },
    unregisterRpcMethod(method) { methods.delete(method); },
    remoteParticipants: new Map([[agent.identity, agent]]),
    localParticipant: {
      identity: 'user',
      performRpc({ destinationIdentity, method, payload, responseTimeout = 10000 }) {
        if (destinationIdentity !== agent.identity) {
          return Promise.reject(new RpcError(1401, 'Recipient not found'));
        }
        const id = nextId++;
        return new Promise((resolve, reject) => {
          pending.set(id, { resolve, reject });
          ws.send(JSON.stringify({ type: 'rpc', id, method, payload }));
          setTimeout(() => {
            if (pending.delete(id)) reject(new RpcError(1502, 'Response timeout'));
          }, responseTimeout);
        });
      },
    },
  });

  const errors = [];
  const reporter = startPlayoutReporter(room, { onError: (e) => errors.push(String(e)) });
  window.companion = { reporter, errors };
  // the harness asks for the companion's stats at the end
  setInterval(() => {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: 'stats', stats: { ...reporter.stats, errors: errors.slice(-10) } }));
    }
  }, 1000);
}

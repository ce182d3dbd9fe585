// WebKitGTK's MiniBrowser under WebKitWebDriver (Debian's webkit2gtk-driver and
// libwebkit2gtk-4.1-0), on a private Xvfb display, driven over classic WebDriver with Node's
// fetch: the WebKit engine for the companion's browser smoke test (browser-smoke.mjs).
// Playwright's WebKit is its own patched build and cannot be downloaded here; WebKitWebDriver
// drives the stock browser. The few calls the smoke test makes are all it offers:
// version(), newPage() -> { goto, evaluate, on }, close().
import { spawn } from 'node:child_process';
import net from 'node:net';

export const MINIBROWSER = '/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser';

/** Starts Xvfb on the first free display; resolves with its number and a stop(). */
async function startXvfb() {
  // -displayfd: Xvfb picks a free display and writes its number there once it accepts clients
  const proc = spawn('Xvfb', ['-displayfd', '3', '-screen', '0', '800x600x24', '-nolisten', 'tcp'], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  const display = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill();
      reject(new Error('Xvfb did not take a display within 10 s'));
    }, 10000);
    let out = '';
    proc.stdio[3].on('data', (b) => {
      out += b;
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve(out.trim());
      }
    });
    proc.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`Xvfb: ${e.message} (scripts/setup installs xvfb)`));
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`Xvfb exited (${code}) before it took a display`));
    });
  });
  return { display: `:${display}`, stop: () => proc.kill() };
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/**
 * Launches MiniBrowser (`binary`) under WebKitWebDriver with `env` (its PulseAudio).
 * `autoplay`: MiniBrowser's autoplay policy; 'allow' lets an AudioContext start without a
 * user gesture, as the other browsers are launched (Safari's default needs one).
 */
export async function launchWebKit({ binary = MINIBROWSER, env = process.env, autoplay = 'allow' } = {}) {
  const xvfb = await startXvfb();
  let driver;
  // whatever ends the process (a failed check, an exception), these must not outlive it
  const stopAll = () => {
    driver?.kill();
    xvfb.stop();
  };
  process.once('exit', stopAll);
  let port;
  try {
    port = await freePort();
  } catch (e) {
    stopAll();
    throw e;
  }
  driver = spawn('WebKitWebDriver', [`--port=${port}`, '--host=127.0.0.1'], {
    env: { ...env, DISPLAY: xvfb.display },
    stdio: 'ignore',
  });
  const exited = new Promise((_, reject) => {
    driver.on('error', (e) => reject(new Error(`WebKitWebDriver: ${e.message} (scripts/setup installs webkit2gtk-driver)`)));
    driver.on('exit', (code) => reject(new Error(`WebKitWebDriver exited (${code})`)));
  });
  exited.catch(() => {}); // read below, while it starts; after close() nobody waits for it
  const base = `http://127.0.0.1:${port}`;
  // every request has a deadline: a driver that accepts and never answers fails the run
  const call = async (method, path, body, timeoutMs = 60000) => {
    const res = await fetch(base + path, {
      method,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`WebDriver ${method} ${path}: ${json.value?.error}: ${json.value?.message}`);
    return json.value;
  };
  let session;
  try {
    for (let i = 0; ; i++) {
      const up = await Promise.race([
        call('GET', '/status', undefined, 1000).then((v) => v.ready, () => false),
        exited,
      ]);
      if (up) break;
      if (i === 100) throw new Error('WebKitWebDriver did not answer within 10 s');
      await new Promise((r) => setTimeout(r, 100));
    }
    session = await call('POST', '/session', {
      capabilities: {
        alwaysMatch: {
          'webkitgtk:browserOptions': { binary, args: ['--automation', `--autoplay-policy=${autoplay}`] },
        },
      },
    });
    // one page's run takes about 10 s; the default script timeout is 30 s
    await call('POST', `/session/${session.sessionId}/timeouts`, { script: 180000 });
  } catch (e) {
    if (session) await call('DELETE', `/session/${session.sessionId}`, undefined, 5000).catch(() => {});
    stopAll();
    throw e;
  }
  const id = session.sessionId;
  const page = {
    on() {}, // classic WebDriver has no console or error events
    goto: (url) => call('POST', `/session/${id}/url`, { url }),
    /** Runs `fn(arg)` in the page and resolves with its (JSON) result, as Playwright does. */
    async evaluate(fn, arg) {
      const script = `const [arg, done] = arguments;
        Promise.resolve().then(() => (${fn})(arg)).then(
          (v) => done({ ok: v === undefined ? null : v }),
          (e) => done({ err: String((e && e.stack) || e) }));`;
      const out = await call('POST', `/session/${id}/execute/async`, { script, args: [arg] }, 200000);
      if ('err' in out) throw new Error(`in the page: ${out.err}`);
      return out.ok;
    },
  };
  return {
    version: async () => `${session.capabilities.browserName} (WebKitGTK ${session.capabilities.browserVersion})`,
    newPage: async () => page,
    async close() {
      await call('DELETE', `/session/${id}`, undefined, 5000).catch(() => {});
      stopAll();
      process.off('exit', stopAll);
    },
  };
}

// Starts headless Chromium (Debian's package) under playwright-core, opens the harness page,
// and keeps it open until this process is told to stop (SIGTERM or stdin closing).
// Usage: node driver.mjs URL   (PULSE_SERVER in the environment picks the output device)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.argv[2];
const profile = mkdtempSync(join(tmpdir(), 'heard-e2e-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // playwright mutes audio by default: the recording needs it
  ignoreDefaultArgs: ['--mute-audio'],
  args: [
    '--headless=new',
    '--no-sandbox',
    '--disable-gpu',
    '--autoplay-policy=no-user-gesture-required',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
let closing = false;
async function close(code) {
  if (closing) return;
  closing = true;
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
process.on('SIGTERM', () => close(0));
process.stdin.on('end', () => close(0));
process.stdin.resume();
const page = await context.newPage();
page.on('console', (m) => process.stderr.write(`[chromium ${m.type()}] ${m.text()}\n`));
page.on('pageerror', (e) => process.stderr.write(`[chromium pageerror] ${e}\n`));
page.on('crash', () => { process.stderr.write('[chromium] page crashed\n'); close(3); });
await page.goto(url);
process.stdout.write('loaded\n');

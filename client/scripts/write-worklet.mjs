// Writes dist/onset-worklet.js (for pages whose CSP forbids blob: worklets: pass its URL as
// `workletUrl`). Same text the package loads from a Blob URL by default.
import { writeFileSync } from 'node:fs';
import { workletSource } from '../dist/worklet.js';

writeFileSync(new URL('../dist/onset-worklet.js', import.meta.url), workletSource());

export { OnsetDetector, OnsetEnvelope } from './detector.js';
export {
  HELLO,
  type HelloReply,
  type HelloRequest,
  MAX_PAYLOAD,
  PROTOCOL_VERSION,
  REPORT,
  type ReportedOnset,
  type ReportRequest,
  SYNC,
  type SyncReply,
  type SyncRequest,
  type TapPath,
} from './protocol.js';
export {
  CLIENT_NAME,
  type PlayoutReporter,
  type PlayoutReporterOptions,
  type PlayoutReporterStats,
  type ReporterDeps,
  startPlayoutReporter,
} from './reporter.js';
export { choosePath, createBrowserTap, type OnsetSink, type Tap, type TapFactory, type TapOptions } from './tap.js';
export { PROCESSOR_NAME, workletSource } from './worklet.js';

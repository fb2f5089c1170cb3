// How much the page keeps: every in-page list and series has a cap, so it can stay open for hours.
export const MAX_TIMELINE = 300;      // rows of the loop's timeline (the oldest go first)
export const MAX_PLANS = 200;         // plans in the loop's plan table
export const MAX_ASSETS = 500;        // assets whose telemetry rows are folded (one every TELEMETRY_EVERY_MS)
export const MAX_RATE_POINTS = 60;    // points of each Trigger's events/s series
export const MAX_TRACE_EVENTS = 500;  // events of a causal chain drawn
export const MAX_KNOB_FIELDS = 8;     // values shown per knob (the rest is counted)
export const MAX_BUFFER = 4 << 20;    // characters of one unfinished server-sent event before the stream is reset
export const TELEMETRY_EVERY_MS = 5000;
export const STREAM_TAIL = 200;       // log positions replayed when the page first connects
export const RECONNECT_MIN_MS = 500;
export const RECONNECT_MAX_MS = 10000;
export const POLL_MS = {now: 2000, continuum: 5000, policies: 5000};

// One WebSocket to the control plane that comes back by itself: the reconnection and liveness
// rules of seed 004 ("on connection errors, clients should wait 5 seconds before attempting to
// reconnect"; "if a client doesn't receive a ping for 60 seconds, it should attempt to
// reconnect"), with the wait doubling on each failure up to a ceiling. Browsers answer the
// server's WebSocket pings themselves without telling the page, so the client sends a
// `heartbeat` every 30 s (the server answers each) and counts any frame as a sign of life.
import { decodeServerMessage, heartbeat, encode, ProtocolError, type ServerMessage, type ErrorData } from '../api/ws';

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The parts of the browser's WebSocket this uses (so tests can pass a double). */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((ev: Event) => unknown) | null;
  onclose: ((ev: CloseEvent) => unknown) | null;
  onerror: ((ev: Event) => unknown) | null;
  onmessage: ((ev: MessageEvent) => unknown) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = new (url: string, protocols?: string | string[]) => SocketLike;

export interface ReconnectOptions {
  /** The first wait after a failure (seed 004: 5 s). */
  baseDelayMs?: number;
  /** The longest wait between attempts. */
  maxDelayMs?: number;
  /** How often the client sends a heartbeat. */
  heartbeatMs?: number;
  /** Silence after which the connection is taken for dead (seed 004: 60 s). */
  silenceMs?: number;
  WebSocketImpl?: SocketFactory;
}

export const DEFAULTS = {
  baseDelayMs: 5_000,
  maxDelayMs: 60_000,
  heartbeatMs: 30_000,
  silenceMs: 60_000,
};

/** How often the liveness rules are checked. */
const WATCH_MS = 1_000;

/** The wait before attempt `n` (0-based) after a failure: 5 s, 10 s, 20 s, ... up to the ceiling. */
export function backoffDelay(attempt: number, base = DEFAULTS.baseDelayMs, max = DEFAULTS.maxDelayMs): number {
  return Math.min(max, base * 2 ** Math.min(attempt, 30));
}

/** Error codes after which trying again cannot help until something changes. */
const FATAL: ReadonlySet<string> = new Set(['AUTH_ERROR', 'VM_NOT_FOUND']);

export interface SocketEvents {
  onMessage(msg: ServerMessage): void;
  onState(state: ConnectionState, detail: { attempt: number; retryInMs: number | null }): void;
  /** A readable problem: a server `error`, a bad frame, a lost connection. */
  onProblem(message: string, data?: ErrorData): void;
  /** The connection is gone (each time, before any reconnection). */
  onDisconnect(): void;
}

export class ReconnectingSocket {
  private ws: SocketLike | null = null;
  private attempt = 0;
  private stopped = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private beatTimer: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private lastBeat = 0;
  private readonly opts: Required<Omit<ReconnectOptions, 'WebSocketImpl'>> & { WebSocketImpl: SocketFactory };

  constructor(
    private readonly url: string,
    private readonly protocols: string[],
    private readonly events: SocketEvents,
    opts: ReconnectOptions = {},
  ) {
    const impl = opts.WebSocketImpl ?? (globalThis.WebSocket as unknown as SocketFactory | undefined);
    if (!impl) throw new Error('this environment has no WebSocket');
    this.opts = {
      baseDelayMs: opts.baseDelayMs ?? DEFAULTS.baseDelayMs,
      maxDelayMs: opts.maxDelayMs ?? DEFAULTS.maxDelayMs,
      heartbeatMs: opts.heartbeatMs ?? DEFAULTS.heartbeatMs,
      silenceMs: opts.silenceMs ?? DEFAULTS.silenceMs,
      WebSocketImpl: impl,
    };
  }

  /** Opens the socket (again, at once, when it was stopped or waiting). */
  connect(): void {
    this.stopped = false;
    this.clearRetry();
    this.open();
  }

  /** Closes for good: no reconnection until [`connect`] is called again. */
  stop(): void {
    this.stopped = true;
    this.clearRetry();
    this.teardown();
    this.events.onState('closed', { attempt: this.attempt, retryInMs: null });
  }

  get isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === 1;
  }

  send(text: string): void {
    if (!this.ws || this.ws.readyState !== 1) throw new Error('not connected to the server');
    this.ws.send(text);
  }

  private open(): void {
    this.teardown();
    this.events.onState(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt, retryInMs: null });
    let ws: SocketLike;
    try {
      ws = new this.opts.WebSocketImpl(this.url, this.protocols);
    } catch (e) {
      this.events.onProblem(`cannot open the WebSocket: ${String(e)}`);
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    this.lastHeard = Date.now();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      this.events.onState('open', { attempt: this.attempt, retryInMs: null });
      this.lastBeat = Date.now();
      this.beatTimer = setInterval(() => this.tick(ws), WATCH_MS);
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      let msg: ServerMessage;
      try {
        msg = decodeServerMessage(String(ev.data));
      } catch (e) {
        this.events.onProblem(e instanceof ProtocolError ? e.message : String(e));
        return;
      }
      if (msg.type === 'connection' && msg.data.status === 'connected') {
        // A session really began: the next failure starts the waits from 5 s again.
        this.attempt = 0;
      }
      if (msg.type === 'error') {
        this.events.onProblem(`${msg.data.code}: ${msg.data.message}`, msg.data);
        if (FATAL.has(msg.data.code)) this.stopped = true;
      }
      this.events.onMessage(msg);
    };
    ws.onerror = () => {
      // A close event follows with what can be known; nothing to do twice.
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      this.teardown();
      this.events.onDisconnect();
      if (this.stopped) {
        this.events.onState('closed', { attempt: this.attempt, retryInMs: null });
        return;
      }
      if (ev.code !== 1000 && ev.code !== 1005) {
        this.events.onProblem(`the connection was lost (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`);
      }
      this.scheduleRetry();
    };
  }

  /** Every second: give up on a connection silent too long, send a heartbeat when due. */
  private tick(ws: SocketLike): void {
    if (this.ws !== ws) return;
    if (Date.now() - this.lastHeard > this.opts.silenceMs) {
      this.events.onProblem(`the server was silent for ${Math.round(this.opts.silenceMs / 1000)} s; reconnecting`);
      this.teardown();
      this.events.onDisconnect();
      this.scheduleRetry();
      return;
    }
    if (Date.now() - this.lastBeat < this.opts.heartbeatMs) return;
    this.lastBeat = Date.now();
    try {
      ws.send(encode(heartbeat()));
    } catch {
      // The close handler deals with a socket that cannot send.
    }
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    const wait = backoffDelay(this.attempt, this.opts.baseDelayMs, this.opts.maxDelayMs);
    this.attempt += 1;
    this.events.onState('reconnecting', { attempt: this.attempt, retryInMs: wait });
    this.clearRetry();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.stopped) this.open();
    }, wait);
  }

  private clearRetry(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  private teardown(): void {
    if (this.beatTimer !== null) clearInterval(this.beatTimer);
    this.beatTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        if (ws.readyState === 0 || ws.readyState === 1) ws.close(1000, 'client closing');
      } catch {
        // Already closed.
      }
    }
  }
}

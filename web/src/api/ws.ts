// The WebSocket API of seeds 003/004: `/ws/vms/{name}` (status, metrics, commands) and
// `/ws/vms/{name}/console`. Every frame is `{type, timestamp, data}`; these types mirror
// crates/wire/src/ws.rs, and ws.test.ts decodes the wire crate's golden fixtures with them.

export type WsVmStatus =
  | 'running'
  | 'stopped'
  | 'paused'
  | 'suspended'
  | 'shutdown'
  | 'crashed'
  | 'error'
  | 'unknown';

export interface StatusData {
  status: WsVmStatus;
  lastStateChange: string;
  uptime: number;
  /** vmfleet's precise state (`booting`, `stopping`, ...). */
  state?: string;
  reason?: string;
}

export interface MetricsData {
  cpu: { utilization: number };
  memory: { used: number; total: number };
  network: { rxBytes: number; txBytes: number; rxPackets?: number; txPackets?: number };
  disk: { readBytes: number; writeBytes: number; readOps?: number; writeOps?: number };
}

export type CommandAction = 'start' | 'stop' | 'restart' | 'suspend' | 'resume';
export const COMMAND_ACTIONS: readonly CommandAction[] = ['start', 'stop', 'restart', 'suspend', 'resume'];

export interface CommandData {
  action: CommandAction;
  requestId?: string;
}
export interface ResponseData {
  requestId: string;
  success: boolean;
  message: string;
}
export interface ConsoleData {
  content: string;
  eof: boolean;
  /** vmfleet: `content` is the scrollback, replayed (on connect, or after this client fell
   * behind): it replaces the screen. */
  replay?: boolean;
}
export interface ConsoleInputData {
  content: string;
}
export type WsErrorCode = 'AUTH_ERROR' | 'VM_NOT_FOUND' | 'VM_NOT_RUNNING' | 'INVALID_COMMAND' | 'UNKNOWN_ERROR' | 'RATE_LIMITED';
export interface ErrorData {
  code: WsErrorCode;
  message: string;
}
export interface ConnectionData {
  status: 'connected' | 'closing';
  vmName: string;
  message?: string;
}

interface Frame<T extends string, D> {
  type: T;
  timestamp: string;
  data: D;
}

/** What the server sends. */
export type ServerMessage =
  | Frame<'status', StatusData>
  | Frame<'metrics', MetricsData>
  | Frame<'response', ResponseData>
  | Frame<'console', ConsoleData>
  | Frame<'error', ErrorData>
  | Frame<'heartbeat', Record<string, never>>
  | Frame<'connection', ConnectionData>;

/** What a client sends. */
export type ClientMessage =
  | Frame<'command', CommandData>
  | Frame<'console_input', ConsoleInputData>
  | Frame<'heartbeat', Record<string, never>>;

/** A frame that is not one of the server's messages. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
const str = (v: unknown) => typeof v === 'string';

function need(ok: boolean, type: string, what: string): void {
  if (!ok) throw new ProtocolError(`a ${type} message has no valid ${what}`);
}

/** Decodes one frame from the server, checking the fields the dashboard relies on. */
export function decodeServerMessage(text: string): ServerMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ProtocolError('the server sent a frame that is not JSON');
  }
  if (!isObj(raw) || !str(raw.type) || !str(raw.timestamp)) {
    throw new ProtocolError('the server sent a frame without type and timestamp');
  }
  const type = raw.type as string;
  const d = isObj(raw.data) ? raw.data : {};
  switch (type) {
    case 'status':
      need(str(d.status), type, 'status');
      need(num(d.uptime), type, 'uptime');
      break;
    case 'metrics':
      need(isObj(d.cpu) && num(d.cpu.utilization), type, 'cpu.utilization');
      need(isObj(d.memory) && num(d.memory.used) && num(d.memory.total), type, 'memory');
      need(isObj(d.network) && num(d.network.rxBytes) && num(d.network.txBytes), type, 'network');
      need(isObj(d.disk) && num(d.disk.readBytes) && num(d.disk.writeBytes), type, 'disk');
      break;
    case 'response':
      need(str(d.requestId), type, 'requestId');
      need(typeof d.success === 'boolean', type, 'success');
      need(str(d.message), type, 'message');
      break;
    case 'console':
      need(str(d.content), type, 'content');
      break;
    case 'error':
      need(str(d.code) && str(d.message), type, 'code and message');
      break;
    case 'connection':
      need(str(d.status), type, 'status');
      break;
    case 'heartbeat':
      break;
    default:
      throw new ProtocolError(`the server sent a message of unknown type ${JSON.stringify(type)}`);
  }
  if (type === 'console' && typeof d.eof !== 'boolean') d.eof = false;
  return { type, timestamp: raw.timestamp, data: d } as ServerMessage;
}

export function encode(msg: ClientMessage): string {
  return JSON.stringify(msg);
}

export function command(action: CommandAction, requestId: string): ClientMessage {
  return { type: 'command', timestamp: new Date().toISOString(), data: { action, requestId } };
}
export function consoleInput(content: string): ClientMessage {
  return { type: 'console_input', timestamp: new Date().toISOString(), data: { content } };
}
export function heartbeat(): ClientMessage {
  return { type: 'heartbeat', timestamp: new Date().toISOString(), data: {} };
}

/** The URL of a VM's socket on the page's own server (or `base`). */
export function socketUrl(path: string, opts: { base?: string; owner?: string | null; metricsInterval?: number } = {}): string {
  const base = opts.base ?? (typeof window !== 'undefined' ? window.location.origin : 'http://127.0.0.1');
  const url = new URL(path, base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (opts.owner) url.searchParams.set('owner', opts.owner);
  if (opts.metricsInterval) url.searchParams.set('metrics_interval', String(opts.metricsInterval));
  return url.toString();
}

/** The subprotocols that carry the token (kept out of the URL): `vmfleet.v1`, `token.<JWT>`. */
export function protocols(token: string | null | undefined): string[] {
  return token ? ['vmfleet.v1', `token.${token}`] : [];
}

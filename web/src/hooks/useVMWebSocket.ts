// `useVMWebSocket(name)`: a VM's live status and metrics from `/ws/vms/{name}`, and
// `sendCommand(action)`, whose promise the matching `response` settles.
import { useCallback, useEffect, useRef, useState } from 'react';
import { command, encode, protocols, socketUrl, type CommandAction, type ErrorData, type MetricsData, type ResponseData, type StatusData } from '../api/ws';
import { ReconnectingSocket, type ConnectionState, type ReconnectOptions } from './socket';

export interface MetricsSample {
  /** Unix milliseconds of the server's timestamp. */
  at: number;
  metrics: MetricsData;
}

export interface VMWebSocketOptions extends ReconnectOptions {
  token: string | null;
  /** An admin's view of another owner's VM. */
  owner?: string | null;
  /** Seconds between metrics messages. */
  metricsInterval?: number;
  /** Samples kept for the charts. */
  historySize?: number;
  /** The server's origin; the page's own by default. */
  baseUrl?: string;
}

/** A command the server answered with `success: false`, or that got no answer. */
export class CommandError extends Error {
  constructor(
    readonly action: CommandAction,
    message: string,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}

export interface VMWebSocket {
  connectionState: ConnectionState;
  /** Seconds until the next attempt while reconnecting. */
  retryInMs: number | null;
  status: StatusData | null;
  metrics: MetricsData | null;
  history: MetricsSample[];
  /** The latest problem, as a sentence (server `error`s included). */
  error: string | null;
  errorData: ErrorData | null;
  /** Commands sent and not answered yet. */
  pending: number;
  sendCommand(action: CommandAction): Promise<ResponseData>;
  reconnect(): void;
  clearError(): void;
}

interface Pending {
  action: CommandAction;
  resolve(r: ResponseData): void;
  reject(e: Error): void;
}

let counter = 0;
/** A request id unique in this page: `cmd-<ms>-<n>-<random>`. */
export function newRequestId(): string {
  counter += 1;
  return `cmd-${Date.now()}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

export function useVMWebSocket(name: string | null, opts: VMWebSocketOptions): VMWebSocket {
  const [connectionState, setConnectionState] = useState<ConnectionState>('idle');
  const [retryInMs, setRetryInMs] = useState<number | null>(null);
  const [status, setStatus] = useState<StatusData | null>(null);
  const [metrics, setMetrics] = useState<MetricsData | null>(null);
  const [history, setHistory] = useState<MetricsSample[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [errorData, setErrorData] = useState<ErrorData | null>(null);
  const [pendingCount, setPendingCount] = useState(0);
  const socket = useRef<ReconnectingSocket | null>(null);
  const pending = useRef(new Map<string, Pending>());
  const historySize = opts.historySize ?? 120;
  const { token, owner, metricsInterval, baseUrl, baseDelayMs, maxDelayMs, heartbeatMs, silenceMs, WebSocketImpl } = opts;

  const failPending = useCallback((why: string) => {
    for (const [, p] of pending.current) p.reject(new CommandError(p.action, `${p.action}: ${why}`));
    pending.current.clear();
    setPendingCount(0);
  }, []);

  useEffect(() => {
    if (!name || !token) return undefined;
    let live = true;
    const path = `/ws/vms/${encodeURIComponent(name)}`;
    const s = new ReconnectingSocket(
      socketUrl(path, { base: baseUrl, owner, metricsInterval }),
      protocols(token),
      {
        onState: (st, d) => {
          if (!live) return;
          setConnectionState(st);
          setRetryInMs(d.retryInMs);
        },
        onProblem: (message, data) => {
          if (!live) return;
          setError(message);
          setErrorData(data ?? null);
        },
        onDisconnect: () => failPending('the connection closed before the server answered'),
        onMessage: (msg) => {
          if (!live) return;
          switch (msg.type) {
            case 'connection':
              setError(null);
              setErrorData(null);
              break;
            case 'status':
              setStatus(msg.data);
              break;
            case 'metrics': {
              const sample = { at: Date.parse(msg.timestamp) || Date.now(), metrics: msg.data };
              setMetrics(msg.data);
              setHistory((h) => [...h, sample].slice(-historySize));
              break;
            }
            case 'response': {
              const p = pending.current.get(msg.data.requestId);
              if (!p) break;
              pending.current.delete(msg.data.requestId);
              setPendingCount(pending.current.size);
              if (msg.data.success) p.resolve(msg.data);
              else p.reject(new CommandError(p.action, msg.data.message));
              break;
            }
            default:
              break;
          }
        },
      },
      { baseDelayMs, maxDelayMs, heartbeatMs, silenceMs, WebSocketImpl },
    );
    socket.current = s;
    s.connect();
    return () => {
      live = false;
      socket.current = null;
      s.stop();
      failPending('the view closed before the server answered');
    };
  }, [name, token, owner, metricsInterval, baseUrl, baseDelayMs, maxDelayMs, heartbeatMs, silenceMs, WebSocketImpl, historySize, failPending]);

  const sendCommand = useCallback((action: CommandAction): Promise<ResponseData> => {
    const s = socket.current;
    if (!s || !s.isOpen) {
      return Promise.reject(new CommandError(action, `${action}: not connected to the server`));
    }
    const requestId = newRequestId();
    return new Promise<ResponseData>((resolve, reject) => {
      pending.current.set(requestId, { action, resolve, reject });
      setPendingCount(pending.current.size);
      try {
        s.send(encode(command(action, requestId)));
      } catch (e) {
        pending.current.delete(requestId);
        setPendingCount(pending.current.size);
        reject(new CommandError(action, `${action}: ${e instanceof Error ? e.message : String(e)}`));
      }
    });
  }, []);

  const reconnect = useCallback(() => socket.current?.connect(), []);
  const clearError = useCallback(() => {
    setError(null);
    setErrorData(null);
  }, []);

  return { connectionState, retryInMs, status, metrics, history, error, errorData, pending: pendingCount, sendCommand, reconnect, clearError };
}

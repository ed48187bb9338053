// `useVMConsole(name)`: a VM's serial console from `/ws/vms/{name}/console`. Each connection
// begins with the server's scrollback (the console's last 64 KiB), so on every (re)connection
// the screen is reset and rebuilt from it: a reload or a dropped connection shows the same
// screen as before. Output goes to subscribers (the terminal) rather than React state.
import { useCallback, useEffect, useRef, useState } from 'react';
import { consoleInput, encode, protocols, socketUrl, type ErrorData } from '../api/ws';
import { ReconnectingSocket, type ConnectionState, type ReconnectOptions } from './socket';

export type ConsoleEvent = { kind: 'reset' } | { kind: 'data'; text: string };
export type ConsoleListener = (ev: ConsoleEvent) => void;

export interface VMConsoleOptions extends ReconnectOptions {
  token: string | null;
  owner?: string | null;
  /** Connect only while this is true (the console needs a running VM). */
  enabled?: boolean;
  baseUrl?: string;
  /** The most text kept to replay to a terminal that subscribes late. */
  keepChars?: number;
}

export interface VMConsoleHandle {
  connectionState: ConnectionState;
  retryInMs: number | null;
  error: string | null;
  errorData: ErrorData | null;
  /** The server said the console ended (the guest stopped). */
  ended: boolean;
  /** Sends keystrokes or text to the guest; false when not connected. */
  send(data: string): boolean;
  /** Receives a `reset` and the current screen at once, then what follows. */
  subscribe(listener: ConsoleListener): () => void;
  /** Everything since the latest reset. */
  screen(): string;
  reconnect(): void;
}

export function useVMConsole(name: string | null, opts: VMConsoleOptions): VMConsoleHandle {
  const [connectionState, setConnectionState] = useState<ConnectionState>('idle');
  const [retryInMs, setRetryInMs] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [errorData, setErrorData] = useState<ErrorData | null>(null);
  const [ended, setEnded] = useState(false);
  const socket = useRef<ReconnectingSocket | null>(null);
  const listeners = useRef(new Set<ConsoleListener>());
  const buffer = useRef('');
  const keep = opts.keepChars ?? 256 * 1024;
  const { token, owner, baseUrl, baseDelayMs, maxDelayMs, heartbeatMs, silenceMs, WebSocketImpl } = opts;
  const enabled = opts.enabled ?? true;

  const emit = useCallback((ev: ConsoleEvent) => {
    if (ev.kind === 'reset') buffer.current = '';
    else {
      buffer.current += ev.text;
      if (buffer.current.length > keep) buffer.current = buffer.current.slice(-keep);
    }
    for (const l of listeners.current) l(ev);
  }, [keep]);

  useEffect(() => {
    if (!name || !token || !enabled) return undefined;
    let live = true;
    setEnded(false);
    const s = new ReconnectingSocket(
      socketUrl(`/ws/vms/${encodeURIComponent(name)}/console`, { base: baseUrl, owner }),
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
          // The guest is not running: waiting will not help; the caller re-enables later.
          if (data?.code === 'VM_NOT_RUNNING') s.stop();
        },
        onDisconnect: () => {},
        onMessage: (msg) => {
          if (!live) return;
          if (msg.type === 'connection') {
            setError(null);
            setErrorData(null);
            // The scrollback follows: rebuild the screen from it.
            emit({ kind: 'reset' });
          } else if (msg.type === 'console') {
            // The scrollback again (this client fell behind): it replaces the screen.
            if (msg.data.replay) emit({ kind: 'reset' });
            if (msg.data.content) emit({ kind: 'data', text: msg.data.content });
            if (msg.data.eof) {
              setEnded(true);
              s.stop();
            }
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
    };
  }, [name, token, owner, enabled, baseUrl, baseDelayMs, maxDelayMs, heartbeatMs, silenceMs, WebSocketImpl, emit]);

  const send = useCallback((data: string) => {
    const s = socket.current;
    if (!s || !s.isOpen) return false;
    try {
      s.send(encode(consoleInput(data)));
      return true;
    } catch (e) {
      setError(`console input was not sent: ${e instanceof Error ? e.message : String(e)}`);
      return false;
    }
  }, []);

  const subscribe = useCallback((listener: ConsoleListener) => {
    listeners.current.add(listener);
    listener({ kind: 'reset' });
    if (buffer.current) listener({ kind: 'data', text: buffer.current });
    return () => {
      listeners.current.delete(listener);
    };
  }, []);

  const screen = useCallback(() => buffer.current, []);
  const reconnect = useCallback(() => {
    setEnded(false);
    socket.current?.connect();
  }, []);

  return { connectionState, retryInMs, error, errorData, ended, send, subscribe, screen, reconnect };
}

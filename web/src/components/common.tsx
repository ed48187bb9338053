import type { ReactNode } from 'react';
import type { ConnectionState } from '../hooks/socket';

const TONE: Record<string, string> = {
  running: 'ok',
  booting: 'busy',
  stopping: 'busy',
  created: 'idle',
  stopped: 'idle',
  shutdown: 'idle',
  paused: 'warn',
  suspended: 'warn',
  error: 'bad',
  crashed: 'bad',
  unknown: 'warn',
  deleted: 'idle',
  ONLINE: 'ok',
  OFFLINE: 'bad',
  MAINTENANCE: 'warn',
};

/** A VM's or node's state as a coloured badge. */
export function StateBadge({ state, title }: { state: string; title?: string }) {
  return (
    <span className={`badge badge-${TONE[state] ?? 'idle'}`} data-state={state} title={title}>
      {state}
    </span>
  );
}

const CONN_LABEL: Record<ConnectionState, string> = {
  idle: 'not connected',
  connecting: 'connecting',
  open: 'live',
  reconnecting: 'reconnecting',
  closed: 'disconnected',
};

export function ConnectionDot({ state, retryInMs }: { state: ConnectionState; retryInMs?: number | null }) {
  const retry = state === 'reconnecting' && retryInMs ? ` (retry in ${Math.round(retryInMs / 1000)} s)` : '';
  return (
    <span className={`conn conn-${state}`} data-connection={state}>
      ● {CONN_LABEL[state]}
      {retry}
    </span>
  );
}

/** A problem, shown until dismissed. */
export function ErrorBanner({ error, onDismiss }: { error: string | null | undefined; onDismiss?: () => void }) {
  if (!error) return null;
  return (
    <div className="error" role="alert">
      <span>{error}</span>
      {onDismiss && (
        <button type="button" className="link" onClick={onDismiss} aria-label="dismiss">
          ×
        </button>
      )}
    </div>
  );
}

export function Card({ title, children, actions }: { title: string; children: ReactNode; actions?: ReactNode }) {
  return (
    <section className="card">
      <header>
        <h2>{title}</h2>
        {actions}
      </header>
      {children}
    </section>
  );
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatAge(unixSeconds: number | null | undefined): string {
  if (unixSeconds === null || unixSeconds === undefined) return 'never';
  const s = Math.max(0, Math.round(Date.now() / 1000 - unixSeconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

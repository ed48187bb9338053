import { useCallback, useEffect, useState } from 'react';
import { describe, deviceText, type SnapshotView, type VmInfo } from '../api/client';
import type { CommandAction, StatusData } from '../api/ws';
import { Card, ConnectionDot, ErrorBanner, StateBadge, formatBytes } from '../components/common';
import { VMConsole } from '../components/VMConsole';
import { VMMetricsChart } from '../components/VMMetricsChart';
import { useVMConsole } from '../hooks/useVMConsole';
import { useVMWebSocket } from '../hooks/useVMWebSocket';
import { useRouter } from '../router';
import { useSession } from '../session';

/** Operations that can take long: their progress is shown while they run. */
interface Busy {
  label: string;
  since: number;
}

/** Seconds since the guest booted: the server's figure, carried forward while it runs. */
function uptime(status: StatusData | null, now: number): string {
  if (!status) return '—';
  if (status.status !== 'running') return '0 s';
  const since = Date.parse(status.lastStateChange);
  const s = Number.isNaN(since) ? status.uptime : Math.max(status.uptime, Math.round((now - since) / 1000));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.floor(s / 60)} min` : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function VmDetail({ owner, name }: { owner: string; name: string }) {
  const { client, session } = useSession();
  const { navigate } = useRouter();
  const token = session?.token ?? null;
  const [vm, setVm] = useState<VmInfo | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [busy, setBusy] = useState<Busy | null>(null);
  const [now, setNow] = useState(Date.now());
  // The clock the progress and the uptime read.
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, []);
  const [snapshots, setSnapshots] = useState<SnapshotView[]>([]);
  const [restoreId, setRestoreId] = useState('');
  const [confirmDelete, setConfirmDelete] = useState(false);

  const monitor = useVMWebSocket(name, { token, owner });
  const liveState = monitor.status?.state ?? vm?.state ?? 'unknown';
  const hasGuest = ['running', 'booting', 'stopping', 'paused'].includes(liveState);
  // What the state machine lets a restore start from.
  const canRestore = ['created', 'stopped', 'error'].includes(liveState);
  const vmConsole = useVMConsole(name, { token, owner, enabled: hasGuest });

  const load = useCallback(async () => {
    try {
      const vms = await client.post('/vm/list', { owner });
      const found = vms.find((v) => v.name === name) ?? null;
      setVm(found);
      setLoadError(found ? null : `There is no VM named ${name} of ${owner}`);
    } catch (e) {
      setLoadError(`Cannot load the VM: ${describe(e)}`);
    }
  }, [client, owner, name]);

  useEffect(() => {
    void load();
  }, [load]);
  // The REST record (address, resources) follows the live state's changes.
  useEffect(() => {
    if (monitor.status) void load();
  }, [monitor.status, load]);
  // The VM's snapshots, as its node has them.
  const buildId = vm?.build_id;
  const vmOwner = vm?.owner;
  const loadSnapshots = useCallback(async () => {
    if (!buildId || !vmOwner) return;
    try {
      setSnapshots(await client.snapshots(buildId, vmOwner));
    } catch {
      // A node that is offline has nothing to list now; the list stays as it was.
    }
  }, [client, buildId, vmOwner]);
  // Again whenever the VM's record is read again (after each operation, each state change).
  useEffect(() => {
    void loadSnapshots();
  }, [loadSnapshots, vm]);

  async function run(label: string, op: () => Promise<{ message?: string } | unknown>) {
    setError(null);
    setNotice(null);
    setBusy({ label, since: Date.now() });
    try {
      const r = await op();
      const message = typeof r === 'object' && r !== null && 'message' in r ? String((r as { message: unknown }).message) : `${label}: done`;
      setNotice(message);
      void load();
    } catch (e) {
      setError(`${label} failed: ${describe(e)}`);
    } finally {
      setBusy(null);
    }
  }

  const ws = (action: CommandAction, label: string) => run(label, () => monitor.sendCommand(action));

  if (!vm) {
    return (
      <main>
        <h1>{name}</h1>
        <ErrorBanner error={loadError} />
        {!loadError && <p className="muted">Loading…</p>}
      </main>
    );
  }

  const id = vm.build_id;
  const o = vm.owner;

  return (
    <main>
      <div className="title-row">
        <h1>
          {vm.name} <StateBadge state={liveState} title={monitor.status?.reason} />
        </h1>
        <ConnectionDot state={monitor.connectionState} retryInMs={monitor.retryInMs} />
      </div>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      <ErrorBanner error={monitor.error} onDismiss={monitor.clearError} />
      {monitor.status?.reason && <p className="muted">{monitor.status.reason}</p>}
      {notice && <div className="note" data-testid="notice">{notice}</div>}
      {busy && (
        <p className="progress" data-testid="progress">
          {busy.label}… {Math.max(0, Math.round((now - busy.since) / 1000))} s
        </p>
      )}

      <Card title="Power">
        <div className="buttons" data-testid="power">
          {(liveState === 'created' || liveState === 'stopped' || liveState === 'error') && (
            <button type="button" disabled={!!busy} onClick={() => void run('Start', () => (vm.state === 'created' ? client.boot(id, o) : client.start(id, o)))}>
              Start
            </button>
          )}
          <button type="button" disabled={!!busy || !hasGuest} onClick={() => void run('Stop', () => client.stop(id, o))}>
            Stop
          </button>
          <button type="button" disabled={!!busy || !hasGuest} onClick={() => void run('Force stop', () => client.stop(id, o, true))}>
            Force stop
          </button>
          <button type="button" disabled={!!busy || liveState !== 'running'} onClick={() => void run('Restart', () => client.reboot(id, o))}>
            Restart
          </button>
          <button type="button" disabled={!!busy || liveState !== 'running'} onClick={() => void ws('suspend', 'Suspend')}>
            Suspend
          </button>
          <button type="button" disabled={!!busy || liveState !== 'paused'} onClick={() => void ws('resume', 'Resume')}>
            Resume
          </button>
          <button type="button" disabled={!!busy || liveState !== 'running'} onClick={() => void run('Power button', () => client.powerButton(id, o))}>
            Power button
          </button>
        </div>
        <div className="buttons">
          <button
            type="button"
            disabled={!!busy || !hasGuest}
            onClick={() =>
              void run('Snapshot', async () => {
                const r = await client.snapshot(id, o);
                setRestoreId(r.snapshot_id);
                return r;
              })
            }
          >
            Snapshot
          </button>
          <input list="snapshots" placeholder="snapshot id" value={restoreId} onChange={(e) => setRestoreId(e.target.value)} />
          <datalist id="snapshots">
            {snapshots.map((s) => (
              <option key={s.snapshot_id} value={s.snapshot_id} />
            ))}
          </datalist>
          <button type="button" disabled={!!busy || !canRestore || !restoreId.trim()} onClick={() => void run('Restore', () => client.restore(id, o, restoreId.trim()))}>
            Restore
          </button>
          <span className="spacer" />
          {!confirmDelete ? (
            <button type="button" className="danger" disabled={!!busy} onClick={() => setConfirmDelete(true)}>
              Delete
            </button>
          ) : (
            <span className="confirm" role="alertdialog">
              Delete {vm.name} and its disks for good?{' '}
              <button
                type="button"
                className="danger"
                onClick={() =>
                  void run('Delete', async () => {
                    const r = await client.deleteVm(id, o);
                    navigate('/');
                    return r;
                  })
                }
              >
                Yes, delete
              </button>{' '}
              <button type="button" onClick={() => setConfirmDelete(false)}>
                Cancel
              </button>
            </span>
          )}
        </div>
      </Card>

      <Card title="Details">
        <dl className="facts">
          <dt>ID</dt>
          <dd className="mono">{vm.build_id}</dd>
          <dt>Owner</dt>
          <dd className="mono">{vm.owner}</dd>
          <dt>Resources</dt>
          <dd>
            {vm.resources.vcpu_count} vCPU, {formatBytes(vm.resources.mem_size_mib * 1024 * 1024)} memory, {vm.resources.disk_size} GiB disk
          </dd>
          <dt>Address</dt>
          <dd>{vm.ip_address ?? '—'}</dd>
          {vm.devices && vm.devices.length > 0 && (
            <>
              <dt>Devices</dt>
              <dd>{vm.devices.map((d) => `${d.id}: ${deviceText(d)}`).join(', ')}</dd>
            </>
          )}
          <dt>Uptime</dt>
          <dd>{uptime(monitor.status, now)}</dd>
        </dl>
      </Card>

      {snapshots.length > 0 && (
        <Card title="Snapshots">
          <table data-testid="snapshots">
            <thead>
              <tr>
                <th>Snapshot</th>
                <th>Taken</th>
                <th>Size</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {snapshots.map((s) => (
                <tr key={s.snapshot_id}>
                  <td className="mono">{s.snapshot_id}</td>
                  <td>{new Date(s.created_at * 1000).toLocaleString()}</td>
                  <td>{formatBytes(s.size_bytes)}</td>
                  <td>
                    <button
                      type="button"
                      aria-label={`Restore snapshot ${s.snapshot_id}`}
                      disabled={!!busy || !canRestore}
                      title={canRestore ? undefined : 'Stop the VM to restore it'}
                      onClick={() => void run('Restore', () => client.restore(id, o, s.snapshot_id))}
                    >
                      Restore
                    </button>{' '}
                    <button
                      type="button"
                      className="danger"
                      aria-label={`Delete snapshot ${s.snapshot_id}`}
                      disabled={!!busy}
                      onClick={() => void run('Delete snapshot', () => client.deleteSnapshot(id, o, s.snapshot_id))}
                    >
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </Card>
      )}

      <Card title="Metrics">
        <VMMetricsChart history={monitor.history} />
      </Card>

      <Card title="Console">
        {hasGuest || vmConsole.ended || vmConsole.screen() ? (
          <VMConsole console={vmConsole} />
        ) : (
          <p className="muted">The console is there while the VM runs.</p>
        )}
      </Card>
    </main>
  );
}

import { useCallback, useEffect, useState } from 'react';
import { describe, type VmInfo } from '../api/client';
import { ErrorBanner, StateBadge, formatBytes } from '../components/common';
import { useVMWebSocket } from '../hooks/useVMWebSocket';
import { Link, vmPath } from '../router';
import { useSession } from '../session';

/** A VM's state, live from its monitor socket once connected (the list's otherwise). */
function LiveState({ vm }: { vm: VmInfo }) {
  const { session } = useSession();
  // Statuses come at once and on every change; metrics are not needed here.
  const live = useVMWebSocket(vm.name, { token: session?.token ?? null, owner: vm.owner, metricsInterval: 3600 });
  const state = live.status?.state ?? vm.state;
  return <StateBadge state={state} title={live.connectionState === 'open' ? 'live' : `from the list (${live.connectionState})`} />;
}

/** Rows watched live; the rest show the list's state (each socket counts against the rate limit). */
export const LIVE_ROWS = 20;

export function VmList() {
  const { client } = useSession();
  const [vms, setVms] = useState<VmInfo[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setVms(await client.listVms());
      setError(null);
    } catch (e) {
      setError(`Cannot list the VMs: ${describe(e)}`);
    }
  }, [client]);

  useEffect(() => {
    void load();
    const t = setInterval(() => void load(), 15_000);
    return () => clearInterval(t);
  }, [load]);

  return (
    <main>
      <div className="title-row">
        <h1>Virtual machines</h1>
        <Link to="/new" className="button primary">
          New VM
        </Link>
      </div>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {vms === null && !error && <p className="muted">Loading…</p>}
      {vms !== null && vms.length === 0 && <p className="muted">No VMs yet. Create one.</p>}
      {vms !== null && vms.length > 0 && (
        <table className="list" data-testid="vm-list">
          <thead>
            <tr>
              <th>Name</th>
              <th>State</th>
              <th>vCPUs</th>
              <th>Memory</th>
              <th>Disk</th>
              <th>Address</th>
              <th>Owner</th>
            </tr>
          </thead>
          <tbody>
            {vms.map((vm, i) => (
              <tr key={vm.build_id} data-vm={vm.name}>
                <td>
                  <Link to={vmPath(vm.owner, vm.name)}>{vm.name}</Link>
                </td>
                <td>
                  {i < LIVE_ROWS ? <LiveState vm={vm} /> : <StateBadge state={vm.state} title="from the list" />}
                </td>
                <td>{vm.resources.vcpu_count}</td>
                <td>{formatBytes(vm.resources.mem_size_mib * 1024 * 1024)}</td>
                <td>{vm.resources.disk_size} GiB</td>
                <td>{vm.ip_address ?? '—'}</td>
                <td className="mono">{vm.owner}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}

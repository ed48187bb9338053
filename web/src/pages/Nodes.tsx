import { useCallback, useEffect, useState } from 'react';
import { describe, type NodeView } from '../api/client';
import { ErrorBanner, StateBadge, formatAge, formatBytes } from '../components/common';
import { useSession } from '../session';

function GpuCells({ m }: { m: NonNullable<NodeView['metrics']> }) {
  const n = Math.max(m.gpuUtilization?.length ?? 0, m.gpuMemoryUsedMb?.length ?? 0, m.gpuTemp?.length ?? 0);
  if (n === 0) return <span className="muted">no GPU</span>;
  return (
    <ul className="gpus">
      {Array.from({ length: n }, (_, i) => (
        <li key={i}>
          GPU {i}: {m.gpuUtilization?.[i] ?? '—'} %, {m.gpuMemoryUsedMb?.[i] ?? '—'} MB, {m.gpuTemp?.[i] ?? '—'} °C
        </li>
      ))}
    </ul>
  );
}

export function Nodes() {
  const { client } = useSession();
  const [nodes, setNodes] = useState<NodeView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setNodes(await client.nodes());
      setError(null);
    } catch (e) {
      setError(`Cannot list the nodes: ${describe(e)}`);
    }
  }, [client]);

  useEffect(() => {
    void load();
    const t = setInterval(() => void load(), 5_000);
    return () => clearInterval(t);
  }, [load]);

  async function toggle(node: NodeView) {
    const draining = node.status !== 'MAINTENANCE';
    setBusy(node.node_id);
    try {
      if (draining) await client.drain(node.node_id);
      else await client.undrain(node.node_id);
      await load();
    } catch (e) {
      setError(`${draining ? 'Drain' : 'Undrain'} of ${node.name} failed: ${describe(e)}`);
    } finally {
      setBusy(null);
    }
  }

  return (
    <main>
      <h1>Nodes</h1>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {nodes === null && !error && <p className="muted">Loading…</p>}
      {nodes !== null && nodes.length === 0 && <p className="muted">No nodes registered.</p>}
      {nodes !== null && nodes.length > 0 && (
        <table className="list" data-testid="node-list">
          <thead>
            <tr>
              <th>Name</th>
              <th>Status</th>
              <th>Capacity</th>
              <th>Last heartbeat</th>
              <th>CPU</th>
              <th>Memory</th>
              <th>Disk</th>
              <th>Network</th>
              <th>GPUs</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {nodes.map((n) => {
              const m = n.metrics ?? null;
              return (
                <tr key={n.node_id} data-node={n.name}>
                  <td>
                    {n.name}
                    <div className="mono muted small">{n.node_id}</div>
                  </td>
                  <td>
                    <StateBadge state={n.status} />
                  </td>
                  <td>
                    {n.capacity.vcpus} vCPU, {formatBytes(n.capacity.memory_mib * 1024 * 1024)}, {n.capacity.disk_gib} GiB, {n.capacity.gpus} GPU
                  </td>
                  <td>{formatAge(n.last_heartbeat)}</td>
                  <td>{m ? `${m.cpuUsagePercent.toFixed(1)} %${m.cpuTemp != null ? `, ${m.cpuTemp} °C` : ''}` : '—'}</td>
                  <td>{m ? `${m.ramUsageMb} / ${m.ramTotalMb} MB` : '—'}</td>
                  <td>{m ? `${m.diskUsageGb.toFixed(1)} / ${m.diskTotalGb.toFixed(1)} GB` : '—'}</td>
                  <td>{m ? `↓ ${m.networkRxMbps.toFixed(2)} ↑ ${m.networkTxMbps.toFixed(2)} Mbps` : '—'}</td>
                  <td>{m ? <GpuCells m={m} /> : '—'}</td>
                  <td>
                    <button type="button" disabled={busy === n.node_id} onClick={() => void toggle(n)}>
                      {n.status === 'MAINTENANCE' ? 'Undrain' : 'Drain'}
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </main>
  );
}

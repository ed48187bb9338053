// The series the metrics charts draw, from the samples of `useVMWebSocket`: gauges as they
// come, cumulative counters (network, disk) as per-second rates. No DOM here.
import type uPlot from 'uplot';
import type { MetricsSample } from '../hooks/useVMWebSocket';
import { formatBytes } from './common';

interface Series {
  label: string;
  color: string;
  value(cur: MetricsSample, prev: MetricsSample | null): number | null;
}

export interface ChartSpec {
  key: string;
  title: string;
  unit: (v: number) => string;
  series: Series[];
}

/** The per-second rate of a cumulative counter between two samples. */
function rate(get: (s: MetricsSample) => number) {
  return (cur: MetricsSample, prev: MetricsSample | null): number | null => {
    if (!prev) return null;
    const dt = (cur.at - prev.at) / 1000;
    const d = get(cur) - get(prev);
    // A counter that went back (the guest restarted) starts over: no rate for that step.
    if (dt <= 0 || d < 0) return null;
    return d / dt;
  };
}

export const CHARTS: ChartSpec[] = [
  {
    key: 'cpu',
    title: 'CPU',
    unit: (v) => `${v.toFixed(1)} %`,
    series: [{ label: 'utilization', color: '#2563eb', value: (s) => s.metrics.cpu.utilization }],
  },
  {
    key: 'memory',
    title: 'Memory',
    unit: formatBytes,
    series: [
      { label: 'used', color: '#16a34a', value: (s) => s.metrics.memory.used },
      { label: 'total', color: '#9ca3af', value: (s) => s.metrics.memory.total },
    ],
  },
  {
    key: 'network',
    title: 'Network',
    unit: (v) => `${formatBytes(v)}/s`,
    series: [
      { label: 'rx', color: '#0891b2', value: rate((s) => s.metrics.network.rxBytes) },
      { label: 'tx', color: '#d97706', value: rate((s) => s.metrics.network.txBytes) },
    ],
  },
  {
    key: 'disk',
    title: 'Disk',
    unit: (v) => `${formatBytes(v)}/s`,
    series: [
      { label: 'read', color: '#7c3aed', value: rate((s) => s.metrics.disk.readBytes) },
      { label: 'write', color: '#db2777', value: rate((s) => s.metrics.disk.writeBytes) },
    ],
  },
];

/** The columns uPlot draws: x in seconds, then one array per series. */
export function chartData(spec: ChartSpec, history: MetricsSample[]): uPlot.AlignedData {
  const xs = history.map((s) => s.at / 1000);
  const ys = spec.series.map((ser) => history.map((s, i) => ser.value(s, i > 0 ? history[i - 1] : null)));
  return [xs, ...ys] as uPlot.AlignedData;
}

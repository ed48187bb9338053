// `VMMetricsChart`: live CPU, memory, network and disk charts (uPlot) from the samples of
// `useVMWebSocket`. Network and disk counters are cumulative; the charts show their rates.
import { useEffect, useMemo, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { MetricsSample } from '../hooks/useVMWebSocket';
import { formatBytes } from './common';

interface Series {
  label: string;
  color: string;
  value(cur: MetricsSample, prev: MetricsSample | null): number | null;
}

interface ChartSpec {
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

function Chart({ spec, history }: { spec: ChartSpec; history: MetricsSample[] }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const data = useMemo(() => chartData(spec, history), [spec, history]);
  const first = Array.from(data[1] as ArrayLike<number | null | undefined>);
  const points = first.filter((v) => v !== null && v !== undefined).length;
  const last = first.length ? first[first.length - 1] : null;

  useEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: 160,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { values: (_u, vals) => vals.map((v) => spec.unit(v)), size: 80 }],
      series: [{}, ...spec.series.map((s) => ({ label: s.label, stroke: s.color, width: 2, points: { show: true, size: 4 } }))],
    };
    const u = new uPlot(opts, [[], ...spec.series.map(() => [])] as uPlot.AlignedData, el);
    plot.current = u;
    const ro = typeof ResizeObserver !== 'undefined' ? new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: 160 })) : null;
    ro?.observe(el);
    return () => {
      ro?.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [spec]);

  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);

  return (
    <div className="chart" data-chart={spec.key} data-points={points}>
      <h3>
        {spec.title} <small>{last !== null && last !== undefined ? spec.unit(last) : '—'}</small>
      </h3>
      <div ref={box} />
    </div>
  );
}

export function VMMetricsChart({ history }: { history: MetricsSample[] }) {
  return (
    <div className="charts">
      {history.length === 0 && <p className="muted">Waiting for the first metrics (they come while the VM runs)…</p>}
      {CHARTS.map((c) => (
        <Chart key={c.key} spec={c} history={history} />
      ))}
    </div>
  );
}

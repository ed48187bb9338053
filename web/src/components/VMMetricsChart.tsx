// `VMMetricsChart`: live CPU, memory, network and disk charts (uPlot) from the samples of
// `useVMWebSocket` (the series: metricsSeries.ts).
import { useEffect, useMemo, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { MetricsSample } from '../hooks/useVMWebSocket';
import { CHARTS, chartData, type ChartSpec } from './metricsSeries';

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

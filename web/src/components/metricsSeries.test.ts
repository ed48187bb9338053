import { describe, expect, it } from 'vitest';
import type { MetricsSample } from '../hooks/useVMWebSocket';
import { CHARTS, chartData } from './metricsSeries';

const sample = (sec: number, cpu: number, rx: number, read: number): MetricsSample => ({
  at: sec * 1000,
  metrics: {
    cpu: { utilization: cpu },
    memory: { used: 100, total: 400 },
    network: { rxBytes: rx, txBytes: 0 },
    disk: { readBytes: read, writeBytes: 0 },
  },
});

const chart = (key: string) => {
  const c = CHARTS.find((x) => x.key === key);
  if (!c) throw new Error(key);
  return c;
};

describe('chartData', () => {
  const history = [sample(10, 5, 1000, 0), sample(15, 50, 6000, 4096), sample(20, 20, 100, 4096)];

  it('plots gauges as they come, against seconds', () => {
    const [xs, cpu] = chartData(chart('cpu'), history);
    expect(xs).toEqual([10, 15, 20]);
    expect(cpu).toEqual([5, 50, 20]);
    const [, used, total] = chartData(chart('memory'), history);
    expect(used).toEqual([100, 100, 100]);
    expect(total).toEqual([400, 400, 400]);
  });

  it('plots counters as per-second rates, with no point where a counter went back', () => {
    const [, rx, tx] = chartData(chart('network'), history);
    expect(rx).toEqual([null, 1000, null]);
    expect(tx).toEqual([null, 0, 0]);
    const [, read] = chartData(chart('disk'), history);
    expect(read).toEqual([null, 4096 / 5, 0]);
  });
});

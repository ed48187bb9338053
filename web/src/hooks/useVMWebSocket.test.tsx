import { act, renderHook } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeSocket } from '../test/fakeSocket';
import { backoffDelay } from './socket';
import { CommandError, useVMWebSocket } from './useVMWebSocket';

const metrics = (cpu: number) => ({
  cpu: { utilization: cpu },
  memory: { used: 100, total: 200 },
  network: { rxBytes: 1, txBytes: 2 },
  disk: { readBytes: 3, writeBytes: 4 },
});

function setup(opts: Record<string, unknown> = {}) {
  return renderHook(() => useVMWebSocket('my-vm', { token: 'jwt.abc.def', WebSocketImpl: FakeSocket, baseUrl: 'http://127.0.0.1:8080', ...opts }));
}

/** Opens the latest socket and plays the server's greeting. */
function greet(s = FakeSocket.last()) {
  act(() => {
    s.open();
    s.receive('connection', { status: 'connected', vmName: 'my-vm' });
    s.receive('status', { status: 'running', lastStateChange: '2026-01-01T00:00:00Z', uptime: 3, state: 'running' });
  });
  return s;
}

beforeEach(() => {
  FakeSocket.reset();
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('useVMWebSocket', () => {
  it('connects with the token as a subprotocol, not in the URL, and shows status', () => {
    const { result } = setup();
    const s = FakeSocket.last();
    expect(s.url).toBe('ws://127.0.0.1:8080/ws/vms/my-vm');
    expect(s.protocols).toEqual(['vmfleet.v1', 'token.jwt.abc.def']);
    expect(result.current.connectionState).toBe('connecting');
    greet(s);
    expect(result.current.connectionState).toBe('open');
    expect(result.current.status?.status).toBe('running');
  });

  it('resolves each command by its own response, in any order', async () => {
    const { result } = setup();
    const s = greet();
    let first!: Promise<unknown>;
    let second!: Promise<unknown>;
    act(() => {
      first = result.current.sendCommand('restart');
      second = result.current.sendCommand('suspend');
    });
    const sent = s.frames().filter((f) => f.type === 'command');
    expect(sent.map((f) => f.data.action)).toEqual(['restart', 'suspend']);
    const [idA, idB] = sent.map((f) => String(f.data.requestId));
    expect(idA).not.toBe(idB);
    expect(result.current.pending).toBe(2);

    const settled: string[] = [];
    void first.then(() => settled.push('first'));
    void second.then(() => settled.push('second'));
    act(() => {
      // An answer to somebody else's request settles nothing.
      s.receive('response', { requestId: 'cmd-other', success: true, message: 'x' });
      s.receive('response', { requestId: idB, success: true, message: 'suspend done' });
    });
    await act(async () => {});
    expect(settled).toEqual(['second']);
    await expect(second).resolves.toMatchObject({ requestId: idB, message: 'suspend done' });
    act(() => s.receive('response', { requestId: idA, success: true, message: 'restart done' }));
    await expect(first).resolves.toMatchObject({ requestId: idA, message: 'restart done' });
    expect(result.current.pending).toBe(0);
  });

  it("rejects a command with the server's message when it failed", async () => {
    const { result } = setup();
    const s = greet();
    let p!: Promise<unknown>;
    act(() => {
      p = result.current.sendCommand('resume');
    });
    const id = String(s.frames().find((f) => f.type === 'command')?.data.requestId);
    act(() => {
      s.receive('error', { code: 'VM_NOT_RUNNING', message: 'VM my-vm is stopped: resume needs it running' });
      s.receive('response', { requestId: id, success: false, message: 'VM my-vm is not running' });
    });
    await expect(p).rejects.toThrow(CommandError);
    await expect(p).rejects.toThrow('VM my-vm is not running');
    expect(result.current.error).toBe('VM_NOT_RUNNING: VM my-vm is stopped: resume needs it running');
  });

  it('rejects commands still waiting when the connection drops, and refuses them while down', async () => {
    const { result } = setup();
    const s = greet();
    let p!: Promise<unknown>;
    act(() => {
      p = result.current.sendCommand('stop');
    });
    act(() => s.drop(1006));
    await expect(p).rejects.toThrow(/connection closed before the server answered/);
    await expect(result.current.sendCommand('start')).rejects.toThrow(/not connected/);
  });

  it('reconnects after 5 s, doubling the wait on each failure, and starts over after a session', () => {
    const { result } = setup();
    greet();
    act(() => FakeSocket.last().drop(1006));
    expect(result.current.connectionState).toBe('reconnecting');
    expect(result.current.retryInMs).toBe(5000);
    expect(result.current.error).toMatch(/connection was lost/);
    expect(FakeSocket.instances).toHaveLength(1);
    act(() => vi.advanceTimersByTime(4999));
    expect(FakeSocket.instances).toHaveLength(1);
    act(() => vi.advanceTimersByTime(1));
    expect(FakeSocket.instances).toHaveLength(2);

    // The server is still down: 10 s, then 20 s.
    act(() => FakeSocket.last().drop(1006));
    expect(result.current.retryInMs).toBe(10000);
    act(() => vi.advanceTimersByTime(9999));
    expect(FakeSocket.instances).toHaveLength(2);
    act(() => vi.advanceTimersByTime(1));
    expect(FakeSocket.instances).toHaveLength(3);
    act(() => FakeSocket.last().drop(1006));
    expect(result.current.retryInMs).toBe(20000);
    act(() => vi.advanceTimersByTime(20000));
    expect(FakeSocket.instances).toHaveLength(4);

    // It comes back: the status flows again, and the next failure waits 5 s again.
    greet();
    expect(result.current.connectionState).toBe('open');
    expect(result.current.error).toBeNull();
    act(() => FakeSocket.last().drop(1006));
    expect(result.current.retryInMs).toBe(5000);
  });

  it('caps the wait at 60 s', () => {
    expect([0, 1, 2, 3, 4, 5, 10].map((n) => backoffDelay(n))).toEqual([5000, 10000, 20000, 40000, 60000, 60000, 60000]);
  });

  it('sends heartbeats and reconnects when the server is silent for 60 s', () => {
    const { result } = setup();
    const s = greet();
    act(() => vi.advanceTimersByTime(30_000));
    expect(s.frames().filter((f) => f.type === 'heartbeat')).toHaveLength(1);
    // The server answers: still alive.
    act(() => s.receive('heartbeat', {}));
    act(() => vi.advanceTimersByTime(30_000));
    expect(FakeSocket.instances).toHaveLength(1);
    // Then nothing for more than 60 s.
    act(() => vi.advanceTimersByTime(31_000));
    expect(s.closedByClient).toBe(true);
    expect(result.current.connectionState).toBe('reconnecting');
    expect(result.current.error).toMatch(/silent/);
    act(() => vi.advanceTimersByTime(5000));
    expect(FakeSocket.instances).toHaveLength(2);
  });

  it('stops trying after an authentication error and says why', () => {
    const { result } = setup();
    const s = FakeSocket.last();
    act(() => {
      s.open();
      s.receive('error', { code: 'AUTH_ERROR', message: 'the token has expired' });
      s.drop(1000);
    });
    expect(result.current.connectionState).toBe('closed');
    expect(result.current.error).toBe('AUTH_ERROR: the token has expired');
    act(() => vi.advanceTimersByTime(120_000));
    expect(FakeSocket.instances).toHaveLength(1);
    // Asked to, it tries again.
    act(() => result.current.reconnect());
    expect(FakeSocket.instances).toHaveLength(2);
  });

  it('keeps a bounded metrics history across reconnections, and reports bad frames', () => {
    const { result } = setup({ historySize: 3 });
    const s = greet();
    act(() => {
      for (let i = 0; i < 4; i++) s.receive('metrics', metrics(i), `2026-01-01T00:00:0${i}Z`);
    });
    expect(result.current.history.map((h) => h.metrics.cpu.utilization)).toEqual([1, 2, 3]);
    act(() => s.receiveRaw('{"type":"metrics","timestamp":"x","data":{}}'));
    expect(result.current.error).toMatch(/metrics message has no valid cpu/);
    act(() => s.drop());
    act(() => vi.advanceTimersByTime(5000));
    greet();
    act(() => FakeSocket.last().receive('metrics', metrics(9)));
    expect(result.current.history.map((h) => h.metrics.cpu.utilization)).toEqual([2, 3, 9]);
  });

  it('closes its socket when unmounted', () => {
    const { unmount } = setup();
    const s = greet();
    unmount();
    expect(s.closedByClient).toBe(true);
    act(() => vi.advanceTimersByTime(60_000));
    expect(FakeSocket.instances).toHaveLength(1);
  });
});

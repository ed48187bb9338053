import { act, renderHook } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeSocket } from '../test/fakeSocket';
import { useVMConsole, type ConsoleEvent } from './useVMConsole';

beforeEach(() => {
  FakeSocket.reset();
  vi.useFakeTimers();
});
afterEach(() => vi.useRealTimers());

function setup(enabled = true) {
  return renderHook(({ on }) => useVMConsole('my-vm', { token: 't.o.k', enabled: on, WebSocketImpl: FakeSocket, baseUrl: 'http://h:1' }), {
    initialProps: { on: enabled },
  });
}

function connect(scrollback: string) {
  const s = FakeSocket.last();
  act(() => {
    s.open();
    s.receive('connection', { status: 'connected', vmName: 'my-vm' });
    if (scrollback) s.receive('console', { content: scrollback, eof: false });
  });
  return s;
}

describe('useVMConsole', () => {
  it('streams output and sends input as console_input', () => {
    const { result } = setup();
    expect(FakeSocket.last().url).toBe('ws://h:1/ws/vms/my-vm/console');
    const events: ConsoleEvent[] = [];
    act(() => void result.current.subscribe((e) => events.push(e)));
    const s = connect('boot log\r\n# ');
    act(() => s.receive('console', { content: 'more', eof: false }));
    expect(result.current.screen()).toBe('boot log\r\n# more');
    expect(events.filter((e) => e.kind === 'data').map((e) => (e as { text: string }).text)).toEqual(['boot log\r\n# ', 'more']);
    expect(result.current.send('echo hi\r')).toBe(true);
    expect(s.frames()).toEqual([expect.objectContaining({ type: 'console_input', data: { content: 'echo hi\r' } })]);
  });

  it('rebuilds the screen from the scrollback on reconnection, without repeating it', () => {
    const { result } = setup();
    const events: ConsoleEvent[] = [];
    act(() => void result.current.subscribe((e) => events.push(e)));
    const first = connect('line 1\r\n');
    act(() => first.receive('console', { content: 'line 2\r\n', eof: false }));
    act(() => first.drop(1006));
    expect(result.current.connectionState).toBe('reconnecting');
    expect(result.current.send('x')).toBe(false);
    act(() => vi.advanceTimersByTime(5000));
    expect(FakeSocket.instances).toHaveLength(2);
    // The server replays its scrollback: everything so far, and what came meanwhile.
    connect('line 1\r\nline 2\r\nline 3\r\n');
    expect(result.current.screen()).toBe('line 1\r\nline 2\r\nline 3\r\n');
    const afterLastReset = events.slice(events.map((e) => e.kind).lastIndexOf('reset') + 1);
    expect(afterLastReset).toEqual([{ kind: 'data', text: 'line 1\r\nline 2\r\nline 3\r\n' }]);
  });

  it('starts the screen over when the server replays its scrollback to a client that fell behind', () => {
    const { result } = setup();
    const events: ConsoleEvent[] = [];
    act(() => void result.current.subscribe((e) => events.push(e)));
    const s = connect('a\r\n');
    act(() => s.receive('console', { content: 'b\r\n', eof: false }));
    act(() => s.receive('error', { code: 'UNKNOWN_ERROR', message: 'this client fell behind' }));
    act(() => s.receive('console', { content: 'a\r\nb\r\nc\r\nd\r\n', eof: false, replay: true }));
    expect(result.current.screen()).toBe('a\r\nb\r\nc\r\nd\r\n');
    expect(events.at(-2)).toEqual({ kind: 'reset' });
    expect(result.current.connectionState).toBe('open');
  });

  it('replays the current screen to a late subscriber', () => {
    const { result } = setup();
    connect('hello');
    const events: ConsoleEvent[] = [];
    act(() => void result.current.subscribe((e) => events.push(e)));
    expect(events).toEqual([{ kind: 'reset' }, { kind: 'data', text: 'hello' }]);
  });

  it('ends at eof without reconnecting, and waits while disabled', () => {
    const { result, rerender } = setup();
    const s = connect('bye');
    act(() => {
      s.receive('console', { content: '', eof: true });
      s.drop(1000);
    });
    expect(result.current.ended).toBe(true);
    expect(result.current.connectionState).toBe('closed');
    act(() => vi.advanceTimersByTime(60_000));
    expect(FakeSocket.instances).toHaveLength(1);
    rerender({ on: false });
    rerender({ on: true });
    expect(FakeSocket.instances).toHaveLength(2);
    expect(result.current.ended).toBe(false);
  });

  it('shows VM_NOT_RUNNING and does not retry', () => {
    const { result } = setup();
    const s = FakeSocket.last();
    act(() => {
      s.open();
      s.receive('error', { code: 'VM_NOT_RUNNING', message: 'VM my-vm is stopped: its console needs it running' });
      s.drop(1000);
    });
    expect(result.current.error).toBe('VM_NOT_RUNNING: VM my-vm is stopped: its console needs it running');
    act(() => vi.advanceTimersByTime(60_000));
    expect(FakeSocket.instances).toHaveLength(1);
  });
});

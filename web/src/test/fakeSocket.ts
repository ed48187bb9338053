// A WebSocket double for the hooks' tests: records what the client sends and lets a test play
// the server (open, frames, drops).
import type { SocketLike } from '../hooks/socket';

export class FakeSocket implements SocketLike {
  static instances: FakeSocket[] = [];
  static reset() {
    FakeSocket.instances = [];
  }
  static last(): FakeSocket {
    const s = FakeSocket.instances[FakeSocket.instances.length - 1];
    if (!s) throw new Error('no socket was opened');
    return s;
  }

  readyState = 0;
  sent: string[] = [];
  closedByClient = false;
  onopen: ((ev: Event) => unknown) | null = null;
  onclose: ((ev: CloseEvent) => unknown) | null = null;
  onerror: ((ev: Event) => unknown) | null = null;
  onmessage: ((ev: MessageEvent) => unknown) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
    this.sent.push(data);
  }

  close(): void {
    this.closedByClient = true;
    this.readyState = 3;
  }

  // The server's side.
  open(): void {
    this.readyState = 1;
    this.onopen?.(new Event('open'));
  }
  receive(type: string, data: unknown, timestamp = new Date().toISOString()): void {
    this.onmessage?.({ data: JSON.stringify({ type, timestamp, data }) } as MessageEvent);
  }
  receiveRaw(text: string): void {
    this.onmessage?.({ data: text } as MessageEvent);
  }
  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason } as CloseEvent);
  }
  /** The frames the client sent, parsed. */
  frames(): { type: string; data: Record<string, unknown> }[] {
    return this.sent.map((s) => JSON.parse(s) as { type: string; data: Record<string, unknown> });
  }
}

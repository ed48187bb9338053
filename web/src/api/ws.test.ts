// The TypeScript side of the WebSocket protocol against the wire crate's golden fixtures (the
// examples of seeds 003 and 004): every server message decodes, every client message the
// dashboard builds has the fixtures' shape.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { command, consoleInput, decodeServerMessage, heartbeat, ProtocolError, socketUrl } from './ws';

const FIXTURES = join(__dirname, '../../../crates/wire/tests/fixtures');
const CLIENT_TYPES = new Set(['command', 'console_input']);

function fixtures(doc: string): [string, Record<string, unknown>][] {
  return readdirSync(join(FIXTURES, doc))
    .filter((f) => f.endsWith('.json'))
    .map((f) => [`${doc}/${f}`, JSON.parse(readFileSync(join(FIXTURES, doc, f), 'utf8')) as Record<string, unknown>]);
}

const all = [...fixtures('003'), ...fixtures('004')];

describe('the wire fixtures', () => {
  it('are there', () => {
    expect(all.length).toBeGreaterThanOrEqual(10);
  });

  for (const [name, frame] of all) {
    if (CLIENT_TYPES.has(String(frame.type))) {
      it(`${name}: the client builds the same shape`, () => {
        const data = frame.data as Record<string, unknown>;
        const built =
          frame.type === 'command'
            ? command(data.action as 'start', String(data.requestId))
            : consoleInput(String(data.content));
        expect(Object.keys(built).sort()).toEqual(Object.keys(frame).sort());
        expect(built.data).toEqual(data);
        expect(Number.isNaN(Date.parse(built.timestamp))).toBe(false);
      });
    } else {
      it(`${name}: decodes`, () => {
        const msg = decodeServerMessage(JSON.stringify(frame));
        expect(msg.type).toBe(frame.type);
        expect(msg.data).toEqual(frame.data);
      });
    }
  }
});

describe('decodeServerMessage', () => {
  it('refuses what is not a server message, with a sentence', () => {
    for (const bad of ['nope', '[]', '{"type":"status"}', '{"type":"command","timestamp":"t","data":{}}', '{"type":"response","timestamp":"t","data":{"requestId":1}}']) {
      expect(() => decodeServerMessage(bad)).toThrow(ProtocolError);
    }
  });

  it('reads a heartbeat without data', () => {
    expect(decodeServerMessage('{"type":"heartbeat","timestamp":"2026-01-01T00:00:00Z"}').type).toBe('heartbeat');
    expect(heartbeat().type).toBe('heartbeat');
  });
});

describe('socketUrl', () => {
  it('maps the page origin to ws or wss and adds the query', () => {
    expect(socketUrl('/ws/vms/a', { base: 'https://x.example' })).toBe('wss://x.example/ws/vms/a');
    expect(socketUrl('/ws/vms/a', { base: 'http://127.0.0.1:8080', owner: '0xab', metricsInterval: 2 })).toBe(
      'ws://127.0.0.1:8080/ws/vms/a?owner=0xab&metrics_interval=2',
    );
  });
});

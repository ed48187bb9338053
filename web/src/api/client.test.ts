import { describe, expect, it } from 'vitest';
import { jwtClaims, sessionFromToken, siweMessage, toChecksumAddress } from '../auth';
import { fieldOf } from '../pages/CreateVm';
import { ApiError, Client, deviceText } from './client';

function fakeFetch(status: number, body: string, seen: { url?: string; init?: RequestInit } = {}): typeof fetch {
  return (async (url: string, init?: RequestInit) => {
    seen.url = url;
    seen.init = init;
    return new Response(body, { status, statusText: status === 200 ? 'OK' : 'Bad', headers: { 'content-type': 'application/json' } });
  }) as typeof fetch;
}

describe('Client', () => {
  it('sends the bearer token and the typed body', async () => {
    const seen: { url?: string; init?: RequestInit } = {};
    const c = new Client({ baseUrl: 'http://s', token: 'tok', fetch: fakeFetch(200, '{"success":true,"message":"ok"}', seen) });
    await expect(c.stop('vm-1', '0xab', true)).resolves.toEqual({ success: true, message: 'ok' });
    expect(seen.url).toBe('http://s/vm/stop');
    expect((seen.init?.headers as Record<string, string>).authorization).toBe('Bearer tok');
    expect(JSON.parse(String(seen.init?.body))).toEqual({ build_id: 'vm-1', owner: '0xab', force: true });
  });

  it("turns an error body into an ApiError with the server's sentence and code", async () => {
    const c = new Client({ fetch: fakeFetch(400, '{"success":false,"message":"mem_size_mib must be between 64 and 4194304, not 1","code":"BAD_REQUEST"}') });
    const err = await c.listVms().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(400);
    expect((err as ApiError).code).toBe('BAD_REQUEST');
    expect((err as ApiError).message).toBe('mem_size_mib must be between 64 and 4194304, not 1');
  });

  it('says what happened when the answer is not the API error body', async () => {
    const c = new Client({ fetch: fakeFetch(502, '<html>bad gateway</html>') });
    await expect(c.nodes()).rejects.toThrow('GET /nodes failed: HTTP 502 Bad: <html>bad gateway</html>');
    const down = new Client({
      fetch: (async () => {
        throw new TypeError('Failed to fetch');
      }) as typeof fetch,
    });
    await expect(down.nonce()).rejects.toThrow(/cannot be reached \(TypeError: Failed to fetch\)/);
  });
});

describe('sign-in', () => {
  it('checksums addresses as EIP-55 does', () => {
    expect(toChecksumAddress('0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed')).toBe('0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed');
    expect(toChecksumAddress('0xFB6916095CA1DF60BB79CE92CE3EA74C37C5D359')).toBe('0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359');
    expect(() => toChecksumAddress('0x12')).toThrow(/not an Ethereum address/);
  });

  it('writes the EIP-4361 message the server parses', () => {
    const m = siweMessage({ domain: 'h:1', address: '0xA', uri: 'http://h:1', chainId: 1, nonce: 'abcdefgh12', issuedAt: '2026-01-01T00:00:00.000Z' });
    expect(m).toBe(
      'h:1 wants you to sign in with your Ethereum account:\n0xA\n\nSign in to vmfleet.\n\nURI: http://h:1\nVersion: 1\nChain ID: 1\nNonce: abcdefgh12\nIssued At: 2026-01-01T00:00:00.000Z',
    );
  });

  it('reads a pasted token, refusing what is none', () => {
    const payload = btoa(JSON.stringify({ sub: 'operator:admin', role: 'admin', perms: ['read'], exp: 4102444800 })).replace(/=+$/, '');
    const s = sessionFromToken(`  xx.${payload}.sig \n`);
    expect(s).toMatchObject({ address: null, role: 'admin', expiresAt: 4102444800, via: 'token' });
    expect(jwtClaims('not-a-jwt')).toBeNull();
    expect(() => sessionFromToken('')).toThrow(/paste a token/);
    expect(() => sessionFromToken('hello')).toThrow(/neither a JWT/);
    const old = btoa(JSON.stringify({ sub: 'x', role: 'standard', exp: 1 }));
    expect(() => sessionFromToken(`a.${old}.b`)).toThrow(/expired/);
    expect(sessionFromToken('vmf_abc').role).toBe('unknown');
  });
});

describe('the create form', () => {
  it("puts the API's messages by the field they name", () => {
    expect(fieldOf('mem_size_mib must be between 64 and 4194304, not 1')).toBe('mem_size_mib');
    expect(fieldOf('vcpu_count must be between 1 and 256, not 0')).toBe('vcpu_count');
    expect(fieldOf("invalid request body: invalid VM name: character ' ' is not allowed at line 1 column 19")).toBe('name');
    expect(fieldOf('invalid request body: a wallet address has 40 hex digits, not 2 at line 1 column 26')).toBe('owner');
    expect(fieldOf('insufficient resources')).toBeNull();
  });
});

describe("a VM's devices", () => {
  it('are said in words, a share by its tag', () => {
    expect(deviceText({ id: 'dev0', kind: 'rng' })).toBe('entropy device');
    expect(deviceText({ id: 'dev1', kind: 'pci-passthrough', address: '0000:3b:00.1' })).toBe('PCI device 0000:3b:00.1');
    expect(deviceText({ id: 'dev2', kind: 'share', tag: 'data', read_only: true })).toBe('shared directory data (read-only)');
    expect(deviceText({ id: 'dev3', kind: 'share', tag: 'out', read_only: false })).toBe('shared directory out (writable)');
  });
});

// Who is signed in: a wallet (Sign-In with Ethereum through an EIP-1193 provider) or a pasted
// token (the admin token of `vmfleet up`, or a sign-in JWT). Kept in localStorage so that a
// reload keeps the session.
import { keccak_256 } from '@noble/hashes/sha3';
import { Client } from './api/client';

export interface Session {
  token: string;
  /** The wallet the token speaks for, checksummed; null for an operator token. */
  address: string | null;
  role: 'standard' | 'privileged' | 'admin' | 'unknown';
  /** Unix seconds; null when unknown. */
  expiresAt: number | null;
  via: 'wallet' | 'token';
}

const KEY = 'vmfleet.session';

export function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    const s = JSON.parse(raw) as Session;
    if (typeof s.token !== 'string') return null;
    if (s.expiresAt !== null && s.expiresAt * 1000 < Date.now()) return null;
    return s;
  } catch {
    return null;
  }
}

export function saveSession(s: Session | null): void {
  if (s) localStorage.setItem(KEY, JSON.stringify(s));
  else localStorage.removeItem(KEY);
}

interface Claims {
  sub?: string;
  role?: string;
  exp?: number;
}

/** The claims of a JWT, read without verifying (the server verifies); null if it is none. */
export function jwtClaims(token: string): Claims | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const c = JSON.parse(json) as unknown;
    return typeof c === 'object' && c !== null ? (c as Claims) : null;
  } catch {
    return null;
  }
}

/** A session for a pasted token; throws a readable error when it cannot be one. */
export function sessionFromToken(raw: string): Session {
  const token = raw.trim();
  if (!token) throw new Error('paste a token first');
  if (/\s/.test(token)) throw new Error('a token has no spaces or line breaks');
  if (token.startsWith('vmf_')) {
    return { token, address: null, role: 'unknown', expiresAt: null, via: 'token' };
  }
  const claims = jwtClaims(token);
  if (!claims) throw new Error('this is neither a JWT nor a vmfleet API token (vmf_...)');
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) throw new Error('this token has expired');
  const sub = typeof claims.sub === 'string' ? claims.sub : '';
  const role = claims.role === 'admin' || claims.role === 'privileged' || claims.role === 'standard' ? claims.role : 'unknown';
  return {
    token,
    address: /^0x[0-9a-fA-F]{40}$/.test(sub) ? toChecksumAddress(sub) : null,
    role,
    expiresAt: typeof claims.exp === 'number' ? claims.exp : null,
    via: 'token',
  };
}

/** EIP-55. */
export function toChecksumAddress(address: string): string {
  const lower = address.toLowerCase().replace(/^0x/, '');
  if (!/^[0-9a-f]{40}$/.test(lower)) throw new Error(`${address} is not an Ethereum address`);
  const hash = keccak_256(new TextEncoder().encode(lower));
  let out = '0x';
  for (let i = 0; i < 40; i++) {
    const nibble = (hash[i >> 1] >> (i % 2 === 0 ? 4 : 0)) & 0xf;
    out += nibble >= 8 ? lower[i].toUpperCase() : lower[i];
  }
  return out;
}

/** The EIP-4361 message the server accepts (crates/auth/src/siwe.rs). */
export function siweMessage(p: { domain: string; address: string; uri: string; chainId: number; nonce: string; issuedAt: string }): string {
  return [
    `${p.domain} wants you to sign in with your Ethereum account:`,
    p.address,
    '',
    'Sign in to vmfleet.',
    '',
    `URI: ${p.uri}`,
    'Version: 1',
    `Chain ID: ${p.chainId}`,
    `Nonce: ${p.nonce}`,
    `Issued At: ${p.issuedAt}`,
  ].join('\n');
}

/** An EIP-1193 provider, as wallets inject it as `window.ethereum`. */
export interface Eip1193Provider {
  request(args: { method: string; params?: unknown[] }): Promise<unknown>;
}

function utf8Hex(text: string): string {
  return '0x' + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, '0')).join('');
}

function walletError(e: unknown): Error {
  const msg = typeof e === 'object' && e !== null && 'message' in e ? String((e as { message: unknown }).message) : String(e);
  return new Error(`the wallet refused: ${msg}`);
}

/** Signs in with the wallet: nonce, EIP-4361 message, `personal_sign`, `/auth/login`. */
export async function walletSignIn(provider: Eip1193Provider, client: Client, loc: Location = window.location): Promise<Session> {
  let accounts: unknown;
  try {
    accounts = await provider.request({ method: 'eth_requestAccounts' });
  } catch (e) {
    throw walletError(e);
  }
  if (!Array.isArray(accounts) || typeof accounts[0] !== 'string') throw new Error('the wallet gave no account');
  const address = toChecksumAddress(accounts[0]);
  let chainId = 1;
  try {
    const c = await provider.request({ method: 'eth_chainId' });
    if (typeof c === 'string' && /^0x[0-9a-f]+$/i.test(c)) chainId = parseInt(c, 16);
  } catch {
    // Wallets without a chain answer sign in on mainnet's id.
  }
  const { nonce } = await client.nonce();
  const message = siweMessage({ domain: loc.host, address, uri: loc.origin, chainId, nonce, issuedAt: new Date().toISOString() });
  let signature: unknown;
  try {
    signature = await provider.request({ method: 'personal_sign', params: [utf8Hex(message), address] });
  } catch (e) {
    throw walletError(e);
  }
  if (typeof signature !== 'string') throw new Error('the wallet gave no signature');
  const login = await client.login(message, signature);
  return { token: login.token, address: login.address, role: sessionFromToken(login.token).role, expiresAt: login.expires_at, via: 'wallet' };
}

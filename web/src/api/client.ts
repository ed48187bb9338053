// A small typed client for vmfleet's REST API. The types come from `openapi.json`, the
// checked-in copy of what the server serves at `/openapi.json` (a Rust test keeps the two
// equal; `npm run gen` turns it into `schema.d.ts`).
import type { components, paths } from './schema';

export type Schemas = components['schemas'];
export type VmInfo = Schemas['VmInfo'];
export type VmState = Schemas['VmState'];
export type NodeView = Schemas['NodeView'];
export type HostMetrics = Schemas['HostMetrics'];
export type CreateVmRequest = Schemas['CreateVmRequest'];
export type LoginResponse = Schemas['LoginResponse'];
export type ErrorBody = Schemas['ErrorBody'];
export type VmDevice = Schemas['VmDevice'];
export type SnapshotView = Schemas['SnapshotView'];

/** The JSON body a route's operation takes, where it takes one. */
type BodyOf<Op> = Op extends { requestBody: { content: { 'application/json': infer B } } }
  ? B
  : Op extends { requestBody?: { content: { 'application/json': infer B } } }
    ? B | undefined
    : undefined;

/** The JSON body of a route's 2xx answer. */
type OkOf<Op> = Op extends { responses: infer R }
  ? {
      [S in keyof R]: S extends 200 | 201 | 202
        ? R[S] extends { content: { 'application/json': infer B } }
          ? B
          : never
        : never;
    }[keyof R]
  : never;

export type PostPath = { [P in keyof paths]: paths[P] extends { post: object } ? P : never }[keyof paths];
export type GetPath = { [P in keyof paths]: paths[P] extends { get: object } ? P : never }[keyof paths];
type PostOp<P extends PostPath> = paths[P] extends { post: infer O } ? O : never;
type GetOp<P extends GetPath> = paths[P] extends { get: infer O } ? O : never;

/** An error from the API, with the server's own sentence as its message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Turns a failed response into an [`ApiError`] carrying the server's message. */
async function failure(resp: Response, what: string): Promise<ApiError> {
  const text = await resp.text().catch(() => '');
  try {
    const body = JSON.parse(text) as Partial<ErrorBody>;
    if (typeof body.message === 'string') {
      return new ApiError(resp.status, body.message, body.code ?? undefined);
    }
  } catch {
    // Not JSON: fall through to the status line.
  }
  const detail = text.trim().slice(0, 200);
  return new ApiError(
    resp.status,
    `${what} failed: HTTP ${resp.status} ${resp.statusText}${detail ? `: ${detail}` : ''}`,
  );
}

export interface ClientOptions {
  /** The server's origin; the page's own when empty. */
  baseUrl?: string;
  token?: string | null;
  fetch?: typeof fetch;
}

export class Client {
  readonly baseUrl: string;
  readonly token: string | null;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ClientOptions = {}) {
    this.baseUrl = opts.baseUrl ?? '';
    this.token = opts.token ?? null;
    this.fetchImpl = opts.fetch ?? ((input, init) => fetch(input, init));
  }

  withToken(token: string | null): Client {
    return new Client({ baseUrl: this.baseUrl, token, fetch: this.fetchImpl });
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let resp: Response;
    try {
      resp = await this.fetchImpl(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, `${method} ${path}: the server cannot be reached (${String(e)})`);
    }
    if (!resp.ok) throw await failure(resp, `${method} ${path}`);
    const text = await resp.text();
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(resp.status, `${method} ${path}: the answer is not JSON`);
    }
  }

  /** `POST` to a route of the document, with its typed body and answer. */
  post<P extends PostPath>(path: P, body: BodyOf<PostOp<P>>): Promise<OkOf<PostOp<P>>>;
  post(path: string, body?: unknown): Promise<unknown>;
  post(path: string, body?: unknown): Promise<unknown> {
    return this.request('POST', path, body ?? {});
  }

  /** `GET` a route of the document. */
  get<P extends GetPath>(path: P): Promise<OkOf<GetOp<P>>>;
  get(path: string): Promise<unknown>;
  get(path: string): Promise<unknown> {
    return this.request('GET', path);
  }

  // The operations the dashboard uses, named.
  nonce() {
    return this.get('/auth/nonce');
  }
  login(message: string, signature: string) {
    return this.post('/auth/login', { message, signature });
  }
  listVms() {
    return this.post('/vm/list', {});
  }
  info(build_id: string, owner: string) {
    return this.post('/vm/info', { build_id, owner });
  }
  createVm(req: CreateVmRequest) {
    return this.post('/vm/create', req);
  }
  boot(build_id: string, owner: string) {
    return this.post('/vm/boot', { build_id, owner });
  }
  start(build_id: string, owner: string) {
    return this.post('/vm/start', { build_id, owner });
  }
  stop(build_id: string, owner: string, force = false) {
    return this.post('/vm/stop', { build_id, owner, force });
  }
  reboot(build_id: string, owner: string) {
    return this.post('/vm/reboot', { build_id, owner });
  }
  powerButton(build_id: string, owner: string) {
    return this.post('/vm/power-button', { build_id, owner });
  }
  snapshot(build_id: string, owner: string) {
    return this.post('/vm/snapshot', { build_id, owner });
  }
  snapshots(build_id: string, owner: string) {
    return this.post('/vm/snapshot/list', { build_id, owner });
  }
  deleteSnapshot(build_id: string, owner: string, snapshot_id: string) {
    return this.post('/vm/snapshot/delete', { build_id, owner, snapshot_id });
  }
  restore(build_id: string, owner: string, snapshot_id: string) {
    return this.post('/vm/restore', { build_id, owner, snapshot_id });
  }
  deleteVm(build_id: string, owner: string) {
    return this.post('/vm/delete', { build_id, owner });
  }
  nodes() {
    return this.get('/nodes');
  }
  drain(id: string) {
    return this.request<unknown>('POST', `/nodes/${encodeURIComponent(id)}/drain`, {});
  }
  undrain(id: string) {
    return this.request<unknown>('POST', `/nodes/${encodeURIComponent(id)}/undrain`, {});
  }
}

/** A readable sentence for anything thrown. */
/** A VM's device or share in words (as `vmfleet vm info` says it). */
export function deviceText(d: VmDevice): string {
  switch (d.kind) {
    case 'rng':
      return 'entropy device';
    case 'pci-passthrough':
      return `PCI device ${d.address}`;
    case 'share':
      return `shared directory ${d.tag} (${d.read_only ? 'read-only' : 'writable'})`;
  }
}

export function describe(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

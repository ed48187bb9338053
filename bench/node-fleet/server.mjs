// The floor of vmfleet-bench's `fleet` scenario: a minimal Socket.IO server in Node.js with the
// semantics of vmfleet's `/fleet` namespace (seed 001), written the way one would in Node.
//
// - namespace `/fleet`; the host key as `Authorization: Bearer <key>` in the handshake or
//   `{ token }` in the connect payload; it is checked by hashing it (SHA-256, hex) and looking
//   the hash up in SQLite; only hashes are stored. A wrong key gets `connect_error`.
// - on connect: the node is marked ONLINE and gets `node_info` `{ nodeId, name }`.
// - `heartbeat`: the payload is checked (nodeId of this key, status, metrics), its time and
//   metrics (JSON text) and the capacity written to the node's row, and the event acked
//   `{ success: true }` (or `{ success: false, message }`).
// - a node silent for three heartbeat periods is dropped and marked OFFLINE, as is one that
//   disconnects.
//
// Usage: node server.mjs --db FILE --nodes FILE.json [--listen 127.0.0.1:0] [--heartbeat-secs 5]
// The nodes file is `[{ "id", "name", "keyHash" }]` (SHA-256 hex of each host key). Prints
// `listening on http://HOST:PORT` on stdout once bound; SIGTERM or SIGINT stops it.

import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { Server } from 'socket.io';

const { values: args } = parseArgs({
  options: {
    db: { type: 'string' },
    nodes: { type: 'string' },
    listen: { type: 'string', default: '127.0.0.1:0' },
    'heartbeat-secs': { type: 'string', default: '5' },
  },
});
if (!args.db) {
  console.error('node-fleet: --db FILE is required');
  process.exit(2);
}
const periodMs = Number(args['heartbeat-secs']) * 1000;
const MISSED_HEARTBEATS = 3;

// The database: WAL, synchronous NORMAL and a busy timeout, as vmfleet opens SQLite.
const db = new Database(args.db);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.pragma('foreign_keys = ON');
db.pragma('busy_timeout = 5000');
db.exec(`CREATE TABLE IF NOT EXISTS nodes (
  id                TEXT PRIMARY KEY,
  name              TEXT NOT NULL UNIQUE,
  host_key_hash     TEXT NOT NULL UNIQUE,
  status            TEXT NOT NULL CHECK (status IN ('ONLINE', 'OFFLINE', 'MAINTENANCE')),
  cap_vcpus         INTEGER NOT NULL DEFAULT 0,
  cap_memory_mib    INTEGER NOT NULL DEFAULT 0,
  cap_disk_gib      INTEGER NOT NULL DEFAULT 0,
  cap_gpus          INTEGER NOT NULL DEFAULT 0,
  last_heartbeat_at INTEGER,
  metrics           TEXT,
  created_at        INTEGER NOT NULL
)`);
if (args.nodes) {
  const nodes = JSON.parse(readFileSync(args.nodes, 'utf8'));
  const insert = db.prepare(
    `INSERT OR IGNORE INTO nodes (id, name, host_key_hash, status, created_at)
     VALUES (?, ?, ?, 'OFFLINE', ?)`,
  );
  db.transaction((rows) => {
    for (const n of rows) insert.run(n.id, n.name, n.keyHash, Date.now());
  })(nodes);
}
const byKeyHash = db.prepare('SELECT id, name, status FROM nodes WHERE host_key_hash = ?');
const setStatus = db.prepare('UPDATE nodes SET status = ? WHERE id = ?');
const recordHeartbeat = db.prepare(
  'UPDATE nodes SET last_heartbeat_at = ?, metrics = ? WHERE id = ?',
);
const recordHeartbeatCapacity = db.prepare(
  `UPDATE nodes SET last_heartbeat_at = ?, metrics = ?, cap_vcpus = ?, cap_memory_mib = ?,
   cap_disk_gib = ?, cap_gpus = ? WHERE id = ?`,
);

const sha256 = (s) => createHash('sha256').update(s, 'utf8').digest('hex');

function hostKey(socket) {
  const header = socket.handshake.headers.authorization;
  if (typeof header === 'string' && header.startsWith('Bearer ')) return header.slice(7);
  const token = socket.handshake.auth?.token;
  if (typeof token !== 'string') return null;
  return token.startsWith('Bearer ') ? token.slice(7) : token;
}

const STATUSES = new Set(['online', 'busy', 'maintenance']);
const NUMBERS = ['cpuUsagePercent', 'ramUsageMb', 'ramTotalMb', 'diskUsageGb', 'diskTotalGb',
  'networkRxMbps', 'networkTxMbps'];
const ARRAYS = ['gpuTemp', 'gpuUtilization', 'gpuMemoryUsedMb'];
const CAPACITY = ['vcpus', 'memoryMb', 'diskGb', 'gpus'];

// What the heartbeat is wrong about, or null.
function invalid(hb, nodeId) {
  if (hb === null || typeof hb !== 'object') return 'a heartbeat is an object';
  if (hb.nodeId !== nodeId) return `nodeId ${hb.nodeId} is not the node this host key belongs to`;
  if (!STATUSES.has(hb.status)) return `unknown status ${hb.status}`;
  const m = hb.metrics;
  if (m === null || typeof m !== 'object') return 'metrics missing';
  for (const k of NUMBERS) if (typeof m[k] !== 'number') return `metrics.${k} is not a number`;
  if (m.cpuTemp !== null && typeof m.cpuTemp !== 'number') return 'metrics.cpuTemp';
  for (const k of ARRAYS) {
    if (m[k] !== undefined && !(Array.isArray(m[k]) && m[k].every((x) => typeof x === 'number'))) {
      return `metrics.${k} is not an array of numbers`;
    }
  }
  const c = hb.capacity;
  if (c !== undefined && c !== null) {
    for (const k of CAPACITY) {
      if (!Number.isInteger(c[k]) || c[k] < 0) return `capacity.${k} is not a count`;
    }
  }
  return null;
}

const http = createServer((req, res) => {
  res.writeHead(404).end();
});
const io = new Server(http, { serveClient: false });
const fleet = io.of('/fleet');
// Connected nodes: node id -> { socket, seen }.
const connected = new Map();

fleet.use((socket, next) => {
  const key = hostKey(socket);
  const node = key === null ? undefined : byKeyHash.get(sha256(key));
  if (!node) return next(new Error('invalid host key'));
  socket.data.node = { nodeId: node.id, name: node.name, status: node.status };
  next();
});

fleet.on('connection', (socket) => {
  const { nodeId, name, status } = socket.data.node;
  const old = connected.get(nodeId);
  connected.set(nodeId, { socket, seen: Date.now() });
  if (old) old.socket.disconnect(true);
  socket.on('heartbeat', (hb, ack) => {
    const entry = connected.get(nodeId);
    if (entry) entry.seen = Date.now();
    const reply = (r) => {
      if (typeof ack === 'function') ack(r);
    };
    const wrong = invalid(hb, nodeId);
    if (wrong) return reply({ success: false, message: wrong });
    try {
      const metrics = JSON.stringify(hb.metrics);
      const c = hb.capacity;
      if (c) {
        recordHeartbeatCapacity.run(Date.now(), metrics, c.vcpus, c.memoryMb, c.diskGb, c.gpus,
          nodeId);
      } else {
        recordHeartbeat.run(Date.now(), metrics, nodeId);
      }
      if (hb.status === 'maintenance') setStatus.run('MAINTENANCE', nodeId);
    } catch (e) {
      return reply({ success: false, message: String(e) });
    }
    reply({ success: true });
  });
  socket.on('disconnect', () => {
    if (connected.get(nodeId)?.socket === socket) {
      connected.delete(nodeId);
      setStatus.run('OFFLINE', nodeId);
    }
  });
  // A drained node stays in maintenance when its agent reconnects.
  if (status !== 'MAINTENANCE') setStatus.run('ONLINE', nodeId);
  socket.emit('node_info', { nodeId, name });
});

// Drops nodes that stopped heartbeating.
const watchdog = setInterval(() => {
  const limit = Date.now() - periodMs * MISSED_HEARTBEATS;
  for (const [nodeId, { socket, seen }] of connected) {
    if (seen < limit) {
      connected.delete(nodeId);
      socket.disconnect(true);
      setStatus.run('OFFLINE', nodeId);
    }
  }
}, periodMs);

const [host, port] = [args.listen.slice(0, args.listen.lastIndexOf(':')),
  Number(args.listen.slice(args.listen.lastIndexOf(':') + 1))];
http.listen({ host, port, backlog: 1024 }, () => {
  const a = http.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});

function stop() {
  clearInterval(watchdog);
  io.close(() => {
    db.close();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

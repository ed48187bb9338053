// A host agent written with the official socket.io-client for Node.js, connecting exactly as
// seed 001's example does (the namespace in the URL, the host key as an extraHeaders Bearer).
// It emits every agent event with an acknowledgement and answers the control plane's
// commands, printing one line per step for the Rust test that runs it.
//
// Usage: node node_agent.mjs URL HOST_KEY FIXTURES_DIR TRANSPORT

import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [url, key, fixtures, transport] = process.argv.slice(2);
const fixture = (name) => JSON.parse(readFileSync(`${fixtures}/001/${name}.json`, "utf8"));
const say = (...parts) => console.log(parts.join(" "));

const socket = io(`${url}/fleet`, {
  extraHeaders: { Authorization: `Bearer ${key}` },
  transports: [transport],
  reconnection: false,
});

socket.on("connect_error", (err) => {
  say("connect_error", err.message);
  process.exit(1);
});

for (const name of ["start_instance", "stop_instance"]) {
  socket.on(name, (data, ack) => {
    say(name, data.rentalId);
    ack({ success: true });
  });
}

socket.on("drain_node", (data, ack) => {
  say("drain_node", data.reason);
  ack({ success: true });
  // Let the acknowledgement go out before leaving.
  setTimeout(() => {
    socket.disconnect();
    say("done");
  }, 500);
});

socket.on("node_info", async (info) => {
  say("connected", info.nodeId);
  const hb = fixture("heartbeat");
  hb.nodeId = info.nodeId;
  for (const [name, payload] of [
    ["heartbeat", hb],
    ["instance_started", fixture("instance_started")],
    ["instance_stopped", fixture("instance_stopped")],
  ]) {
    const ack = await socket.timeout(10000).emitWithAck(name, payload);
    say(name, JSON.stringify(ack));
  }
  say("ready");
});

setTimeout(() => {
  say("timeout");
  process.exit(2);
}, 30000).unref();

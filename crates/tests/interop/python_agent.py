"""A host agent written with the official python-socketio client, as seed 001's Python example
does it: it connects to /fleet with its host key as a Bearer header, emits every agent event
with an acknowledgement, and answers the control plane's commands. It prints one line per
step for the Rust test that runs it.

Usage: python_agent.py URL HOST_KEY FIXTURES_DIR TRANSPORT
"""

import json
import sys
import threading
import time

import socketio

url, key, fixtures, transport = sys.argv[1:5]
sio = socketio.Client(reconnection=False)
node = {}
info = threading.Event()
drained = threading.Event()


def fixture(name):
    with open(f"{fixtures}/001/{name}.json") as f:
        return json.load(f)


@sio.on("node_info", namespace="/fleet")
def on_node_info(data):
    node.update(data)
    info.set()


@sio.on("start_instance", namespace="/fleet")
def on_start_instance(data):
    print("start_instance", data["rentalId"], flush=True)
    return {"success": True}


@sio.on("stop_instance", namespace="/fleet")
def on_stop_instance(data):
    print("stop_instance", data["rentalId"], flush=True)
    return {"success": True}


@sio.on("drain_node", namespace="/fleet")
def on_drain_node(data):
    print("drain_node", data["reason"], flush=True)
    drained.set()
    return {"success": True}


sio.connect(
    url,
    namespaces=["/fleet"],
    headers={"Authorization": f"Bearer {key}"},
    transports=[transport],
)
if not info.wait(10):
    sys.exit("no node_info")
print("connected", node["nodeId"], flush=True)

hb = fixture("heartbeat")
hb["nodeId"] = node["nodeId"]
for name, payload in [
    ("heartbeat", hb),
    ("instance_started", fixture("instance_started")),
    ("instance_stopped", fixture("instance_stopped")),
]:
    ack = sio.call(name, payload, namespace="/fleet", timeout=10)
    print(name, json.dumps(ack, sort_keys=True), flush=True)

print("ready", flush=True)
if not drained.wait(15):
    sys.exit("no drain_node")
# The handler's return value (the ack) is sent after it returns: let it go out first.
time.sleep(0.5)
sio.disconnect()
print("done", flush=True)

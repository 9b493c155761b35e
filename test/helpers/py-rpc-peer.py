# -*- coding: utf-8 -*-
"""A Python snakeMQ 1.6 RPC peer for our interop tests (our own helper; needs `import snakemq`).

  python3 py-rpc-peer.py server IDENT
      listens on 127.0.0.1 port 0, prints {"port": N}, serves the object "calc" (below)
  python3 py-rpc-peer.py client IDENT PORT SERVER_IDENT
      connects to 127.0.0.1:PORT, calls SERVER_IDENT's "calc" (the methods our test server
      has), prints one JSON line per call, then {"done": true}, and exits
  python3 py-rpc-peer.py compare HEX...
      for pairs of pickle bodies (theirs, ours) in hex: prints whether Python reads both the same
"""

import json
import sys
import threading
import traceback

import snakemq.link
import snakemq.messaging
import snakemq.packeter
import snakemq.rpc


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class CustomError(Exception):
    pass


class Calc(object):
    def __init__(self):
        self.notes = []

    def add(self, a, b):
        return a + b

    def echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs, "repr": repr((args, kwargs))}

    def big(self):
        return 2 ** 70

    def types(self):
        return [1, -7, 2 ** 70, -2 ** 70, 1.5, u"\u017elu\u0165ou\u010dk\u00fd k\u016f\u0148", b"\x00\xffbytes",
                None, True, False, [1, [2, 3]], (4, 5), {"k": [1, 2], "n": None}]

    def fail(self):
        raise ValueError("bad value", 42)

    def aset(self):
        return {1, 2}

    def custom(self):
        raise CustomError("custom failure")

    @snakemq.rpc.as_signal
    def notify(self, text, level=0):
        self.notes.append([text, level])

    def get_notes(self):
        return self.notes


def make_peer(ident):
    link = snakemq.link.Link()
    packeter = snakemq.packeter.Packeter(link)
    messaging = snakemq.messaging.Messaging(ident, "", packeter)
    hook = snakemq.messaging.ReceiveHook(messaging)
    return link, messaging, hook


def server(ident):
    link, messaging, hook = make_peer(ident)
    srv = snakemq.rpc.RpcServer(hook)
    srv.register_object(Calc(), "calc")
    host, port = link.add_listener(("127.0.0.1", 0))
    out({"port": port})
    link.loop()


def describe_exception(exc):
    return {
        "error": type(exc).__name__,
        "module": type(exc).__module__,
        "args": repr(exc.args),
        "tb": getattr(exc, snakemq.rpc.REMOTE_TRACEBACK_ATTR, None),
    }


def client(ident, port, server_ident):
    link, messaging, hook = make_peer(ident)
    cli = snakemq.rpc.RpcClient(hook)
    link.add_connector(("127.0.0.1", int(port)), reconnect_interval=0.2)
    proxy = cli.get_proxy(server_ident, "calc")

    def call(name, fn):
        try:
            value = fn()
            out({"name": name, "repr": repr(value), "type": type(value).__name__})
        except Exception as exc:  # the remote exception, as a Python caller sees it
            d = describe_exception(exc)
            d["name"] = name
            out(d)

    def run():
        try:
            for m in ("add", "echo", "greet", "fail", "explode", "nosuch", "big", "get_notes", "bump", "types"):
                getattr(proxy, m).set_timeout(10)
            call("add", lambda: proxy.add(2, 3))
            call("echo", lambda: proxy.echo(1, -7, 2 ** 70, -2 ** 70, 1.5, u"\u017elu\u0165ou\u010dk\u00fd k\u016f\u0148",
                                           b"\x00\xffbytes", None, True, False, [1, [2, 3]], (4, 5),
                                           {"k": [1, 2], "n": None}))
            call("types", lambda: proxy.types())
            call("greet", lambda: proxy.greet("bob", greeting="hi"))
            call("kwargs-refused", lambda: proxy.add(1, b=2))
            call("fail", lambda: proxy.fail("bad"))
            call("explode", lambda: proxy.explode())
            call("nosuch", lambda: proxy.nosuch())
            call("big", lambda: proxy.big())
            proxy.notify.as_signal(10)
            proxy.notify(u"hello \u017e", level=3)
            call("get_notes", lambda: proxy.get_notes())
            # the same request twice (as after a reconnect): run once, answered twice
            params = {"command": "call", "object": "calc", "method": "bump", "args": (), "kwargs": {},
                      "req_id": b"0123456789abcdef"}
            call("bump-1", lambda: cli.call_regular(server_ident, proxy.bump, dict(params)))
            call("bump-1-again", lambda: cli.call_regular(server_ident, proxy.bump, dict(params)))
            call("bump-2", lambda: proxy.bump())
            call("set-argument", lambda: proxy.add({1, 2}, 3))
            # the server cuts the connection while slow() runs: snakeMQ re-sends the same req_id
            proxy.slow.set_timeout(10)
            call("slow-reconnect", lambda: proxy.slow())
        except Exception:
            out({"crash": traceback.format_exc()})
        out({"done": True})
        link.stop()

    t = threading.Thread(target=run)
    t.daemon = True
    t.start()
    link.loop()


def compare(hexes):
    import pickle
    for i in range(0, len(hexes), 2):
        theirs = pickle.loads(bytes.fromhex(hexes[i]))
        ours = pickle.loads(bytes.fromhex(hexes[i + 1]))
        for d in (theirs, ours):
            if isinstance(d, dict) and isinstance(d.get("exception"), BaseException):
                e = d["exception"]
                d["exception"] = (type(e).__module__, type(e).__name__, e.args)
        out({"same": theirs == ours, "theirs": repr(theirs), "ours": repr(ours)})


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(sys.argv[2])
    elif mode == "client":
        client(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "compare":
        sys.modules["myservice"] = sys.modules[__name__]  # the recorded custom exception's module
        compare(sys.argv[2:])

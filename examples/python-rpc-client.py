#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""A Python snakeMQ 1.6 RPC client ("soldier") calling our examples/rpc-listener.ts ("boss",
object "abc"): RPC across the two languages, the bodies pickles.

Run, in two terminals (SNAKEMQ_PY: a folder from which `import snakemq` works):
    npx tsx examples/rpc-listener.ts [port]
    PYTHONPATH=$SNAKEMQ_PY python3 examples/python-rpc-client.py [port]
"""

import sys
import threading

import snakemq.link
import snakemq.messaging
import snakemq.packeter
import snakemq.rpc

port = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
link = snakemq.link.Link()
messaging = snakemq.messaging.Messaging("soldier", "", snakemq.packeter.Packeter(link))
client = snakemq.rpc.RpcClient(snakemq.messaging.ReceiveHook(messaging))
link.add_connector(("127.0.0.1", port))
abc = client.get_proxy("boss", "abc")


def run():
    try:
        for name in ("getFo", "slowAdd", "greet", "fail"):
            getattr(abc, name).set_timeout(10)
        print(abc.getFo())
        print("sum: %r" % abc.slowAdd(2 ** 70, 1))  # any size of int
        print(abc.greet("soldier", greeting="hi"))  # keyword arguments: boss registered greet to take them
        abc.mysignal.as_signal(10)
        abc.mysignal()
        print("mysignal sent")
        try:
            abc.fail()
        except Exception as exc:  # a built-in exception, with boss's stack attached
            print("remote exception: %s %r" % (type(exc).__name__, exc.args))
            print("remote traceback %s" % getattr(exc, snakemq.rpc.REMOTE_TRACEBACK_ATTR))
    finally:
        link.stop()


thread = threading.Thread(target=run)
thread.daemon = True
thread.start()
link.loop()

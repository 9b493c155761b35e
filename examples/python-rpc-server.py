#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""A Python snakeMQ 1.6 RPC server ("boss", object "abc", as snakeMQ's rpc1_listener.py) for our
examples/rpc-connector.ts: RPC across the two languages, the bodies pickles.

Run, in two terminals (SNAKEMQ_PY: a folder from which `import snakemq` works):
    PYTHONPATH=$SNAKEMQ_PY python3 examples/python-rpc-server.py [port]
    npx tsx examples/rpc-connector.ts [port]
"""

import sys
import time

import snakemq.link
import snakemq.messaging
import snakemq.packeter
import snakemq.rpc


class A(object):
    def getFo(self):
        return "fo value"

    @snakemq.rpc.as_signal
    def mysignal(self):
        print("mysignal")
        sys.stdout.flush()

    def slowAdd(self, a, b):
        time.sleep(0.1)
        return a + b

    def greet(self, name, greeting="hello"):
        return "%s, %s" % (greeting, name)

    def fail(self):
        raise ValueError("this one fails on purpose", 42)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
link = snakemq.link.Link()
messaging = snakemq.messaging.Messaging("boss", "", snakemq.packeter.Packeter(link))
server = snakemq.rpc.RpcServer(snakemq.messaging.ReceiveHook(messaging))
server.register_object(A(), "abc")
host, bound = link.add_listener(("127.0.0.1", port))
print('boss serves "abc" on 127.0.0.1:%d' % bound)
sys.stdout.flush()
try:
    link.loop()
except KeyboardInterrupt:
    pass

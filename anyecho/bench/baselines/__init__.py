"""Reference echo servers, each a small program written the usual way for its stack.

Every one listens on 127.0.0.1, takes ``--port`` (``0`` picks a free port) and, once
it accepts connections, prints one line to standard output::

    serving echo on tcp://127.0.0.1:PORT (baseline NAME, loop LOOP)

At a client's end of stream each sends back what is left and closes (or half-closes)
its side, so a client can drain the connection. Run one with, for example::

    python -m anyecho.bench.baselines.protocol --port 0 --loop uvloop
"""

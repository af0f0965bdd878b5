"""``anyecho bench``: anyecho against reference echo servers, on every event loop.

Each server runs in its own process, pinned to one CPU core where the system allows;
load generator processes (:mod:`anyecho.bench.loadgen`) on the other cores drive it
with ping-pong or pipelined messages, verify every echoed byte, and time every round
trip. :mod:`anyecho.bench.runner` interleaves the runs of the servers,
:mod:`anyecho.bench.report` turns them into a JSON document (schema
``anyecho-bench/1``), and :mod:`anyecho.bench.render` prints it as a table, as
Markdown, or draws it as a chart.

The reference servers live in :mod:`anyecho.bench.baselines`; each is a small
program runnable on its own (``python -m anyecho.bench.baselines.protocol --port 0``).

The library never imports anything here: only the command line's entry point
does, to register ``anyecho bench`` (the layers contract in ``pyproject.toml``
checks it). Importing this package is cheap.
"""

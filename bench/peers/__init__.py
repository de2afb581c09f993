"""The sides of ``bench/bench_peers.py``: each reads one topic of closed 1m bars and reports.

Python and Java peers (``floor_side``, ``flink_sql_side``, ``quix_side``, ``bytewax_side``) run
inside ``bench_peers.py --side SPEC`` in a process of their own; ``klineflow_side`` drives the
job through its CLI. ``common`` holds what they share: the spec, the report, the roll-up maths
of the Python peers and a pool of worker processes.
"""

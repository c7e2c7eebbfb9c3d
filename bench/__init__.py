"""Benchmarks: axlpy against ``cp -r && sync``, ``rsync -a && sync`` and ``shutil.copytree``.

``python -m bench`` runs the full benchmark (see :mod:`bench.run`); ``python -m bench
--quick`` checks in seconds that it still runs. ``bench/io_queues.py`` measures the IO
queues alone.
"""

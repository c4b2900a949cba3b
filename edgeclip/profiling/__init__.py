"""Benchmark machinery behind ``edgeclip-bench`` (runtime side: numpy, onnxruntime, no torch).

``targets`` turns MODEL arguments into runnable (model, tower, backend, precision) targets,
``inputs`` builds real inputs and times preprocessing / tokenization, ``loop`` runs the
interleaved timing rounds, ``probe`` measures cold start and peak memory in a fresh process,
``machine`` describes the host, ``report`` writes the table, JSON, CSV and plot.
"""

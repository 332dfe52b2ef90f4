"""Runs: what a run leaves on disk and how it is read back.

Run-directory rules (``rundir``), metrics.jsonl / TensorBoard / summary.json writing
(``runlog``), the metric table (``metrics_table``), TensorBoard layouts (``tb_layout``), claims
(``claims``), reports and plots (``report``, ``plots``). May import every lower layer
(``theory``, ``models``, ``envs``, ``algorithms``, ``training``); never experiments or the CLIs,
which sit on top (``tests/test_layout.py``).
"""

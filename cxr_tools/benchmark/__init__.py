"""``cxr benchmark``: a paper's few-shot table (methods × shots × seeds) as a plan of ``cxr`` command lines.

:mod:`~cxr_tools.benchmark.plan` reads and checks the plan file, :mod:`~cxr_tools.benchmark.steps` expands it into
steps (one ``cxr`` command line each, with its output and dependencies), :mod:`~cxr_tools.benchmark.state` keeps
one small JSON per step in the output root, :mod:`~cxr_tools.benchmark.worker` runs one step,
:mod:`~cxr_tools.benchmark.local` and :mod:`~cxr_tools.benchmark.slurm` execute a plan, and
:mod:`~cxr_tools.benchmark.report` turns the ``cxr compare`` outputs into the table and plots. Steps are whole
commands run as subprocesses, never engine calls, so every number comes from the commands a user would type
(docs/benchmarks.md, "Benchmark runner overhead", measures what that costs).
"""

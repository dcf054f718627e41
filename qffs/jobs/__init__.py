"""The jobs the command line runs, one module each; each checks its inputs and outputs before any
long work, shows progress, writes atomically, and takes its output's lock itself.

- :mod:`~qffs.jobs.options`, :mod:`~qffs.jobs.loaders`: the data options and loaders every job shares;
- :mod:`~qffs.jobs.outputs`: the one output policy (suffixes, sidecars, locks, staged results);
- :mod:`~qffs.jobs.training`: :class:`TrainingRun` and FP training; :mod:`~qffs.jobs.quantize`: QAT;
- :mod:`~qffs.jobs.recipes`: the named QAT recipes;
- :mod:`~qffs.jobs.convert`, :mod:`~qffs.jobs.evaluation`, :mod:`~qffs.jobs.pipeline`,
  :mod:`~qffs.jobs.export`, :mod:`~qffs.jobs.ablate`: the other stages.

Artifacts are loaded by :mod:`qffs.artifacts`, below the jobs.
"""

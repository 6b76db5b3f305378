"""``cxr app``: a web page (Gradio) to try a trained run in a browser.

Four tabs over one run loaded once per process (:class:`~cxr_tools.webapp.service.RunService`):

* **Classify**: per-finding probabilities, each an independent sigmoid with the run's thresholds (findings are
  multi-label, so nothing is normalised across them), the run's own preprocessing, a Grad-CAM overlay of a chosen
  finding (:mod:`cxr_tools.models.saliency`) and the CSV ``cxr predict`` writes;
* **Similarity**: two images -> the run's similarity and embedding distance, as ``cxr similarity`` computes them;
* **Few-shot**: K positive and K negative uploads of a new finding, adapted with the run's own method
  (:mod:`cxr_tools.methods.adapters`); the adapted scorer lives in the browser session only, and is saved as a
  directory ``cxr predict --config`` reproduces on request;
* **Results**: an evaluation or comparison directory: its table with intervals, plots and paired differences.

The package sits at the engine level (it orchestrates models, methods, data and eval) and is imported only by
``cxr app``; Gradio is an optional extra (``pip install 'cxr-tools[app]'``).
"""

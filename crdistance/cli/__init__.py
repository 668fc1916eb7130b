"""The ``crdistance`` command: fit, predict, evaluate, demo, export and serve.

Every subcommand prints its result on stdout (a JSON object with ``--json``),
messages and progress bars on stderr (silenced by ``-q``), and exits with 0 on
success, 1 on an error it explains (without a traceback) and 2 on a usage error.
The library never imports this wing.

Behind this entrance, one module per verb or concern: ``_main`` (the verbs and
:func:`main`), ``_fit``, ``_parser`` (arguments), ``_io`` (files, messages,
progress bars), ``_features`` (patch features and scores batch by batch),
``_model`` (featurizer and detector building, fitting, loading),
``_categories`` (several DATA_DIRs as product categories, thresholds on
held-out images of each), ``_predict``, ``_evaluate``, ``_table`` (its rows,
text and CSV), ``_plots`` (figures), ``_auto``, ``_cse``, ``_demo`` and
``_demo_data`` (the generated inspection dataset).
"""

from crdistance.cli._main import main

__all__ = ["main"]

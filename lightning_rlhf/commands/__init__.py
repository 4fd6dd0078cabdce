"""The ``lightning-rlhf`` command and what only it uses: the step CLIs, the pipeline, ``generate``, log filters."""

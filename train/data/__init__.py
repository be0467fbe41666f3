"""HF `datasets` pipelines. Every batch is a pure function of (seed, step) and each process
reads only its own rows, so resuming needs nothing but the step number."""

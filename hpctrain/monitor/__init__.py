"""Per-rank resource monitoring of training runs: the sampler thread (:mod:`.sampler`), what it
reads (:mod:`.probes`), the alert rules (:mod:`.alerts`, pure) and the report of a run dir's
samples (:mod:`.report`, behind ``hpctrain monitor``). See docs/monitor.md."""

"""What the tests and the benchmarks share: a tiny text encoder built offline, the loop-form losses
(the test oracle), small pipelines, real servers on 127.0.0.1 (MLflow, Postgres) and a Ray cluster
on one machine. Not used by the pipeline itself; nothing here runs at import."""

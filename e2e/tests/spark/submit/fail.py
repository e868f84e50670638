"""A job submitted with `staging-server submit` that fails: it raises before any Spark work, so
its driver pod ends `Failed` while spark-submit (cluster mode) exits 0. `submit` reports the
driver's failure and exits with its exit code."""

raise RuntimeError("kubebed-submit: this job fails on purpose")

"""A Spark job on the test bed in k8s:// client mode: a shuffle, then (once dynamic allocation
has removed every executor, and with it the pods that wrote the map output) the same result
read again by fresh executors, which must fetch every block from the nodes' shuffle services.

Prints one JSON line: the results' check and the executors' lifetimes as the driver saw them.
"""
import argparse
import json
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

p = argparse.ArgumentParser()
p.add_argument("--master", required=True)
p.add_argument("--driver-host", required=True)
p.add_argument("--image", required=True)
p.add_argument("--namespace", default="default")
p.add_argument("--executor-template", required=True)
p.add_argument("--event-dir", required=True)
a = p.parse_args()

spark = (
    SparkSession.builder.master(a.master)
    .appName("kubebed-shuffle")
    .config("spark.submit.deployMode", "client")
    .config("spark.driver.host", a.driver_host)
    .config("spark.driver.bindAddress", a.driver_host)
    .config("spark.kubernetes.container.image", a.image)
    .config("spark.kubernetes.namespace", a.namespace)
    .config("spark.kubernetes.executor.podTemplateFile", a.executor_template)
    .config("spark.executor.memory", "512m")
    .config("spark.executor.cores", "1")
    .config("spark.kubernetes.executor.request.cores", "100m")
    .config("spark.shuffle.service.enabled", "true")
    .config("spark.dynamicAllocation.enabled", "true")
    .config("spark.dynamicAllocation.minExecutors", "0")
    .config("spark.dynamicAllocation.initialExecutors", "2")
    .config("spark.dynamicAllocation.maxExecutors", "2")
    .config("spark.dynamicAllocation.executorIdleTimeout", "2s")
    .config("spark.kubernetes.dynamicAllocation.deleteGracePeriod", "1s")
    .config("spark.kubernetes.allocation.batch.delay", "200ms")
    .config("spark.eventLog.enabled", "true")
    .config("spark.eventLog.dir", a.event_dir)
    .config("spark.eventLog.compress", "false")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.adaptive.enabled", "false")
    .config("spark.sql.shuffle.partitions", "6")
    .config("spark.stage.maxConsecutiveAttempts", "1")
    .config("spark.task.maxFailures", "1")
    .getOrCreate()
)
sc = spark.sparkContext
sc.setLogLevel("INFO")
jsc = sc._jsc.sc()

def executors():
    ids = jsc.getExecutorIds().mkString(",")
    return sorted(i for i in ids.split(",") if i)

df = spark.range(0, 600_000, numPartitions=6).select((F.col("id") % 1013).alias("k"), F.col("id").alias("v"))
q = df.groupBy("k").agg(F.sum("v").alias("s"), F.count("*").alias("n"))
expected = {k: (sum(range(k, 600_000, 1013)), len(range(k, 600_000, 1013))) for k in range(1013)}

def check(rows):
    got = {r["k"]: (r["s"], r["n"]) for r in rows}
    return got == expected

ok1 = check(q.collect())

# Executors idle for 2 s are removed and their pods deleted; the map output stays on the nodes.
deadline = time.time() + 180
while executors() and time.time() < deadline:
    time.sleep(0.5)
gone = not executors()

# The same query again: its map stage is skipped and fresh executors fetch every block of the
# removed ones from the shuffle services.
ok2 = check(q.collect())
second_executors = executors()
print(json.dumps({"ok1": ok1, "ok2": ok2, "all_removed": gone,
                  "second": second_executors,
                  "app_id": sc.applicationId}))
sys.stdout.flush()
spark.stop()

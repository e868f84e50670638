"""A Spark job for the test bed, in k8s:// client or cluster mode: a shuffle, then the same
result read again by other executors than the ones that wrote the map output, which must
fetch every remote block from the nodes' shuffle services.

Between the two reads the executors that wrote the map output go away:
- `--mode dynamic`: dynamic allocation removes them (idle) and Spark deletes their pods;
- `--mode delete-pod`: static allocation; one executor's pod is deleted through the API;
- `--mode static`: static allocation, nothing goes away (executors still read each other's
  blocks through the shuffle services);
- `--mode hold`: static allocation; after the first read, prints `{"held": ...}` and waits
  (at most 10 minutes) for the ConfigMap `--release` to exist before reading again;
- `--mode dynamic` with `--release`: as `dynamic`, then, once the executors are gone, holds as
  `hold` does.

Prints one JSON line: the results' check and what happened to the executors.
"""
import argparse
import json
import sys
import time
import urllib.request

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["dynamic", "delete-pod", "static", "hold"], default="dynamic")
p.add_argument("--api", help="the API server, for --mode delete-pod and hold")
p.add_argument("--release", help="--mode hold (and dynamic): the ConfigMap that ends the wait")
p.add_argument("--master", help="client mode: the k8s:// master (cluster mode: from spark-submit)")
p.add_argument("--driver-host", help="client mode: the driver's address")
p.add_argument("--image")
p.add_argument("--namespace", default="default")
p.add_argument("--executor-template")
p.add_argument("--event-dir")
p.add_argument("--conf", action="append", default=[], help="client mode: an extra key=value")
a = p.parse_args()

b = SparkSession.builder.appName("kubebed-shuffle")
if a.master:
    b = (b.master(a.master)
         .config("spark.submit.deployMode", "client")
         .config("spark.driver.host", a.driver_host)
         .config("spark.driver.bindAddress", a.driver_host)
         .config("spark.kubernetes.container.image", a.image)
         .config("spark.kubernetes.namespace", a.namespace)
         .config("spark.kubernetes.executor.podTemplateFile", a.executor_template)
         .config("spark.eventLog.enabled", "true")
         .config("spark.eventLog.dir", a.event_dir)
         .config("spark.eventLog.compress", "false"))
    for kv in a.conf:
        k, v = kv.split("=", 1)
        b = b.config(k, v)
common = {
    "spark.executor.memory": "512m",
    "spark.executor.cores": "1",
    "spark.kubernetes.executor.request.cores": "100m",
    "spark.kubernetes.allocation.batch.delay": "200ms",
    "spark.shuffle.service.enabled": "true",
    # Every block of another executor goes through a shuffle service, even on the same node
    # (where Spark would otherwise read the files itself), so that each run proves the services
    # serve, whatever node the scheduler picked.
    "spark.shuffle.readHostLocalDisk": "false",
    "spark.ui.enabled": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.shuffle.partitions": "6",
    "spark.stage.maxConsecutiveAttempts": "1",
    "spark.task.maxFailures": "1",
}
if a.mode == "dynamic":
    common.update({
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.initialExecutors": "2",
        "spark.dynamicAllocation.maxExecutors": "2",
        "spark.dynamicAllocation.executorIdleTimeout": "2s",
        "spark.kubernetes.dynamicAllocation.deleteGracePeriod": "1s",
    })
else:
    common.update({"spark.dynamicAllocation.enabled": "false", "spark.executor.instances": "2"})
for k, v in common.items():
    b = b.config(k, v)
spark = b.getOrCreate()
sc = spark.sparkContext
sc.setLogLevel("INFO")
jsc = sc._jsc.sc()


def executors():
    ids = jsc.getExecutorIds().mkString(",")
    return sorted(i for i in ids.split(",") if i)


def wait(cond, seconds):
    deadline = time.time() + seconds
    while not cond() and time.time() < deadline:
        time.sleep(0.5)
    return cond()


N = 600_000
df = spark.range(0, N, numPartitions=6).select((F.col("id") % 1013).alias("k"), F.col("id").alias("v"))
q = df.groupBy("k").agg(F.sum("v").alias("s"), F.count("*").alias("n"))
expected = {k: (sum(range(k, N, 1013)), len(range(k, N, 1013))) for k in range(1013)}


def check(rows):
    return {r["k"]: (r["s"], r["n"]) for r in rows} == expected


if a.mode in ("delete-pod", "static", "hold"):
    # Both executors up, so that both hold map output.
    wait(lambda: len(executors()) >= 2, 120)
ok1 = check(q.collect())
out = {"ok1": ok1, "app_id": sc.applicationId}

if a.mode == "dynamic":
    # Executors idle for 2 s are removed and their pods deleted; the map output stays.
    out["all_removed"] = wait(lambda: not executors(), 180)
if a.mode == "hold" or (a.mode == "dynamic" and a.release):
    print(json.dumps({"held": True, **out}))
    sys.stdout.flush()
    url = f"{a.api}/api/v1/namespaces/{a.namespace}/configmaps/{a.release}"

    def released():
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return True
        except Exception:
            return False

    out["released"] = wait(released, 600)
elif a.mode == "delete-pod":
    victim = executors()[0]
    sel = f"spark-app-selector={sc.applicationId},spark-exec-id={victim}"
    url = f"{a.api}/api/v1/namespaces/{a.namespace}/pods?labelSelector={urllib.request.quote(sel)}"
    pods = json.load(urllib.request.urlopen(url, timeout=10))["items"]
    name = pods[0]["metadata"]["name"]
    req = urllib.request.Request(f"{a.api}/api/v1/namespaces/{a.namespace}/pods/{name}", method="DELETE")
    urllib.request.urlopen(req, timeout=10).read()
    out["deleted"] = {"executor": victim, "pod": name}
    out["lost"] = wait(lambda: victim not in executors(), 120)
    # A replacement comes up.
    wait(lambda: len(executors()) >= 2, 120)

# The same query again: its map stage is skipped; the reducers fetch the blocks of executors
# that are gone from the shuffle services.
out["ok2"] = check(q.collect())
out["second"] = executors()
print(json.dumps(out))
sys.stdout.flush()
if a.mode == "static":
    # The sidecars' counters go with their pods: leave time to read them.
    time.sleep(3)
spark.stop()

"""Real Spark against the shuffle service's Spark protocol listener.

    e2e.py --port N --scenario {default,oldfetch,todisk,auth,crypto} [--secret S] [--conf k=v ...]

Runs pyspark in local-cluster (whose workers start no shuffle service of their own) with
spark.shuffle.service.enabled=true and spark.shuffle.service.port=N, and dynamic allocation
with a short idle timeout: the map stage runs, its executors go away, and the reducers of the
next job, on fresh executors, read the map output through the service. One executor at a time
(each is a JVM and a Python worker: the fewest that show the point), but two in the default
scenario, whose SQL query reads one executor's map output from the other within a job (AQE's
batch fetches).
Checks every job's result; prints one JSON line of what it saw; exits 1 on a wrong result.
Needs SPARK_LOCAL_DIRS (under the service's volume) and SPARK_LOCAL_IP=127.0.0.1.
"""
import argparse
import glob
import json
import os
import sys
import time

from pyspark.sql import SparkSession


def wait_executors_gone(sc, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sc._jsc.sc().getExecutorIds().size() == 0:
            return
        time.sleep(0.2)
    raise SystemExit("executors did not go away")


def shuffle_files(shuffle_id):
    root = os.environ["SPARK_LOCAL_DIRS"]
    return glob.glob(f"{root}/**/shuffle_{shuffle_id}_*_0.data", recursive=True) + glob.glob(
        f"{root}/**/shuffle_{shuffle_id}_*_0.index", recursive=True
    )


MARKER = "PLAINTEXT-ROW-"


def crypto(sc, seen):
    """Rows whose text is easy to find: the test looks for it on the wire."""
    n = 60_000
    pairs = sc.parallelize(range(n), 8).map(lambda x: (x % 97, f"{MARKER}{x:08d}")).groupByKey(6)
    counts = pairs.mapValues(len)
    expected = {}
    for x in range(n):
        expected[x % 97] = expected.get(x % 97, 0) + 1
    assert dict(counts.collect()) == expected, "first reduce differs"
    wait_executors_gone(sc)
    files = shuffle_files(0)
    seen["shuffle_files_after_job1"] = len(files)
    # The control of the wire check: the rows' text is in the files the service sends.
    seen["marker_in_shuffle_files"] = any(
        MARKER.encode() in open(f, "rb").read() for f in files if f.endswith(".data")
    )
    assert dict(counts.collect()) == expected, "reduce through the shuffle service differs"
    seen["reduce_through_service"] = "ok"
    seen["marker"] = MARKER


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--scenario", required=True, choices=["default", "oldfetch", "todisk", "auth", "crypto"])
    ap.add_argument("--secret")
    ap.add_argument("--conf", action="append", default=[], help="extra Spark setting k=v")
    a = ap.parse_args()

    executors = "2" if a.scenario == "default" else "1"
    b = (
        SparkSession.builder.master(f"local-cluster[{executors},1,1024]")
        .appName(f"shuffle-e2e-{a.scenario}")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.shuffle.service.enabled", "true")
        .config("spark.shuffle.service.port", str(a.port))
        .config("spark.dynamicAllocation.enabled", "true")
        .config("spark.dynamicAllocation.minExecutors", "0")
        .config("spark.dynamicAllocation.initialExecutors", executors)
        .config("spark.dynamicAllocation.maxExecutors", executors)
        .config("spark.dynamicAllocation.executorIdleTimeout", "1s")
        .config("spark.dynamicAllocation.schedulerBacklogTimeout", "1s")
        .config("spark.shuffle.io.maxRetries", "1")
        .config("spark.shuffle.io.retryWait", "1s")
        .config("spark.executor.memory", "512m")
        .config("spark.sql.shuffle.partitions", "16")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
    )
    if a.scenario == "oldfetch":
        b = b.config("spark.shuffle.useOldFetchProtocol", "true")
    if a.scenario == "todisk":
        b = b.config("spark.network.maxRemoteBlockSizeFetchToMem", "1k")
    if a.secret:
        b = b.config("spark.authenticate", "true").config("spark.authenticate.secret", a.secret)
    if a.scenario == "crypto":
        # Uncompressed shuffle data, so that a row's text would show on the wire if it were
        # not encrypted.
        b = b.config("spark.shuffle.compress", "false")
    for kv in a.conf:
        k, v = kv.split("=", 1)
        b = b.config(k, v)
    spark = b.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    seen = {"scenario": a.scenario, "app_id": sc.applicationId}

    if a.scenario == "crypto":
        crypto(sc, seen)
        spark.stop()
        print(json.dumps(seen), flush=True)
        return

    # Job 1 runs the map stage (shuffle 0) and a reduce; then every executor goes away.
    n = 200_000
    # groupByKey (no map-side combine): blocks of some 20 KB, above the fetch-to-disk threshold.
    pairs = sc.parallelize(range(n), 8).map(lambda x: (x % 97, x)).groupByKey(6).mapValues(sum)
    expected = {}
    for x in range(n):
        expected[x % 97] = expected.get(x % 97, 0) + x
    first = dict(pairs.collect())
    assert first == expected, "first reduce differs"
    wait_executors_gone(sc)
    seen["shuffle_files_after_job1"] = len(shuffle_files(0))
    # Job 2 reuses shuffle 0: new executors fetch every block through the service.
    second = dict(pairs.collect())
    assert second == expected, "reduce through the shuffle service differs"
    seen["reduce_through_service"] = "ok"

    if a.scenario == "default":
        # SQL with AQE partition coalescing: batch fetches of contiguous reduce ranges.
        df = spark.range(0, 300_000, 1, 8).selectExpr("id % 1000 AS k", "id AS v")
        agg = {r["k"]: r["s"] for r in df.groupBy("k").agg({"v": "sum"}).withColumnRenamed("sum(v)", "s").collect()}
        assert len(agg) == 1000 and agg[7] == sum(range(7, 300_000, 1000)), "SQL result differs"
        seen["sql"] = "ok"
        # Drop shuffle 0 after its executors are gone: the driver sends RemoveBlocks.
        wait_executors_gone(sc)
        before = len(shuffle_files(0))
        sc._jsc.sc().cleaner().get().doCleanupShuffle(0, True)
        deadline = time.time() + 30
        while shuffle_files(0) and time.time() < deadline:
            time.sleep(0.2)
        seen["removed"] = {"before": before, "after": len(shuffle_files(0))}
        assert before > 0 and not shuffle_files(0), f"RemoveBlocks left files: {seen['removed']}"

    spark.stop()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"e2e: {e}", file=sys.stderr)
        sys.exit(1)

"""The workloads of `loadtest dra` (and of the e2e test that keeps its harness working): the same
code in every configuration of executors (the shuffle service, shuffle tracking, PVC reuse,
static executors), which only Spark's settings tell apart. Every result is checked against a
closed form computed on the driver, so a lost or doubled block fails the run.

- `skew`: a join where one key holds 90 % of the rows (a default or null key, as real skew
  often is): a wide map stage, then a reduce stage whose one hot partition runs long after the
  others have finished (the long tail; on the test bed the executors share two cores, so the
  hot partition's work must dwarf the rest's for the tail to be longer than an idle timeout);
- `etl`: three jobs of several shuffles each, with a step on the driver between them (collect
  a small result, write it to a file, pause);
- `iter`: one shuffle read again by later jobs, each after an idle gap (the map stage runs
  once; the later jobs run only the reduce stage).

The job to disturb (`loadtest dra --kill-runs` deletes an executor pod in the middle of its
reduce stage, `--node-runs` loses a whole node then) runs in the job group `target`. Prints one JSON line: {"dra": {...}}.
"""
import argparse
import json
import os
import sys
import time

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

p = argparse.ArgumentParser()
p.add_argument("--workload", choices=["skew", "etl", "iter"], required=True)
p.add_argument("--scale", type=float, default=1.0, help="multiplies the row counts")
p.add_argument("--pause", type=float, default=20.0, help="seconds of the driver's step or gap")
p.add_argument("--out", default="/tmp/dra-out", help="etl: where the small results go")
a = p.parse_args()

spark = SparkSession.builder.appName(f"dra-{a.workload}").getOrCreate()
sc = spark.sparkContext
# The plan is the workload's, the same whatever runs the executors: 16 reduce partitions (the
# hot key 2 of `skew` in one of them), sort-merge joins, and no adaptive
# execution (which would reshape the stages from run to run).
spark.conf.set("spark.sql.shuffle.partitions", "16")
spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
spark.conf.set("spark.sql.adaptive.enabled", "false")
marks = []


def mark(what):
    marks.append({"at_ms": int(time.time() * 1000), "what": what})


def target(on):
    if on:
        sc.setJobGroup("target", "the job whose reduce stage loses an executor")
    else:
        sc.setJobGroup("other", "")


def classes(n, period):
    """For ids 0..n-1 grouped by id % period: (residue, count, sum of ids) of each class."""
    for r in range(min(period, n)):
        c = (n - 1 - r) // period + 1
        yield r, c, c * r + period * c * (c - 1) // 2


def skew():
    n = int(6_000_000 * a.scale)
    keys = 200_000
    facts = spark.range(0, n, 1, 32).select(
        F.when(F.col("id") % 10 < 9, F.lit(2)).otherwise(F.col("id") % keys).alias("k"),
        F.col("id").alias("v"),
    )
    dim = spark.range(0, keys, 1, 4).select(
        F.col("id").alias("k"), (F.col("id") % 7 + 1).alias("w")
    )
    # Work per joined row on the reduce side: it needs both sides, so it cannot move before
    # the shuffle; its sum is the same in every configuration (compared across runs).
    h = F.conv(F.substring(F.sha2(F.concat_ws(":", "v", "w"), 256), 1, 8), 16, 10)
    q = (
        facts.join(dim, "k")
        .groupBy((F.col("k") % 10).alias("b"))
        .agg(
            F.count("*").alias("n"),
            F.sum(F.col("v") * F.col("w")).alias("s"),
            F.sum(h.cast("long")).alias("h"),
        )
    )
    target(True)
    mark("join")
    rows = q.collect()
    mark("joined")
    target(False)
    # ids with id % 10 < 9 have k = 2, the others k = id % keys: each class of
    # id % keys (10 divides keys) has one k and one w.
    want = {}
    for r, c, s in classes(n, keys):
        k = 2 if r % 10 < 9 else r
        w = k % 7 + 1
        b = k % 10
        cn, cs = want.get(b, (0, 0))
        want[b] = (cn + c, cs + s * w)
    got = {r["b"]: (r["n"], r["s"]) for r in rows}
    return got == want, str(sum(r["h"] for r in rows))


def etl():
    n = int(4_000_000 * a.scale)
    users, items = 10_000, 1_000
    ev = spark.range(0, n, 1, 16).select(
        (F.col("id") % users).alias("user"),
        (F.col("id") % items).alias("item"),
        (F.col("id") * 7919 % 1000).alias("amount"),
    )
    # users is a multiple of items and of 1000: each class of id % users has one user, item
    # and amount.
    cls = [(r, c, (r * 7919) % 1000) for r, c, _ in classes(n, users)]
    os.makedirs(a.out, exist_ok=True)
    ok = True
    digest = []

    def step(i, rows, key):
        with open(os.path.join(a.out, f"step{i}.json"), "w") as f:
            json.dump(sorted([r.asDict() for r in rows], key=lambda r: r[key]), f)
        mark(f"pause{i}")
        time.sleep(a.pause)

    # Job 1: spend per user, summed per user bucket.
    mark("job1")
    per_user = ev.groupBy("user").agg(F.sum("amount").alias("ua"), F.count("*").alias("uc"))
    rows = per_user.groupBy((F.col("user") % 10).alias("b")).agg(
        F.sum("ua").alias("a"), F.count("*").alias("u")
    ).collect()
    want = {}
    for r, c, amt in cls:
        a_, u = want.get(r % 10, (0, 0))
        want[r % 10] = (a_ + c * amt, u + 1)
    ok &= {r["b"]: (r["a"], r["u"]) for r in rows} == want
    digest.append(sum(r["a"] for r in rows))
    step(1, rows, "b")

    # Job 2: every event joined with its item's and its user's totals (three shuffles of the
    # events), summed per item bucket.
    target(True)
    mark("job2")
    per_item = ev.groupBy("item").agg(F.sum("amount").alias("ia"), F.count("*").alias("ic"))
    per_user = ev.groupBy("user").agg(F.count("*").alias("uc"))
    rows = (
        ev.join(per_item, "item")
        .join(per_user, "user")
        .groupBy((F.col("item") % 100).alias("b"))
        .agg(F.sum(F.col("amount") * F.col("uc")).alias("x"), F.sum("ia").alias("y"),
             F.count("*").alias("n"))
        .collect()
    )
    target(False)
    ia, ic, uc = {}, {}, {}
    for r, c, amt in cls:
        ia[r % items] = ia.get(r % items, 0) + c * amt
        ic[r % items] = ic.get(r % items, 0) + c
        uc[r] = c
    want = {}
    for r, c, amt in cls:
        b = (r % items) % 100
        x, y, m = want.get(b, (0, 0, 0))
        want[b] = (x + c * amt * uc[r], y + c * ia[r % items], m + c)
    ok &= {r["b"]: (r["x"], r["y"], r["n"]) for r in rows} == want
    digest.append(sum(r["x"] for r in rows))
    step(2, rows, "b")

    # Job 3: distinct (user, item) pairs per item, then per item bucket.
    mark("job3")
    rows = (
        ev.groupBy("user", "item").agg(F.count("*").alias("c"))
        .groupBy("item").agg(F.count("*").alias("pairs"), F.sum("c").alias("c"))
        .groupBy((F.col("item") % 10).alias("b"))
        .agg(F.sum("pairs").alias("pairs"), F.sum("c").alias("c"))
        .collect()
    )
    want = {}
    for r, c, _ in cls:
        pairs, cc = want.get(r % 10, (0, 0))
        want[r % 10] = (pairs + 1, cc + c)
    ok &= {r["b"]: (r["pairs"], r["c"]) for r in rows} == want
    digest.append(sum(r["pairs"] for r in rows))
    mark("done")
    return ok, ":".join(map(str, digest))


def iterative():
    n = int(4_000_000 * a.scale)
    groups = 20_000
    pairs = spark.range(0, n, 1, 16).select(
        (F.col("id") % groups).alias("g"), F.col("id").alias("v")
    )
    # The reduce side sorts every row of its partition: the window's rows are the shuffle's.
    by_g = Window.partitionBy("g")
    q = (
        pairs.withColumn("r", F.row_number().over(by_g.orderBy("v")))
        .withColumn("c", F.count("*").over(by_g))
        .withColumn("s", F.sum("v").over(by_g))
        .filter(F.col("r") == 1)
        .select("g", "v", "c", "s")
    )
    want = {r: (r, c, s) for r, c, s in classes(n, groups)}
    ok = True
    for i in range(3):
        # The same Dataset each time: its shuffle is written once and read by every round.
        target(i == 1)
        mark(f"round{i + 1}")
        rows = q.collect()
        target(False)
        ok &= {r["g"]: (r["v"], r["c"], r["s"]) for r in rows} == want
        if i < 2:
            mark(f"gap{i + 1}")
            time.sleep(a.pause)
    mark("done")
    return ok, str(len(want))


mark("start")
ok, digest = {"skew": skew, "etl": etl, "iter": iterative}[a.workload]()
print(json.dumps({"dra": {"workload": a.workload, "ok": ok, "digest": digest,
                          "app_id": sc.applicationId, "marks": marks}}))
sys.stdout.flush()
spark.stop()

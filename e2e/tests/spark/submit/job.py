"""A job submitted with `staging-server submit`: this file, the jar and the text file exist only
on the submitting machine. It calls a class from the staged jar (a Java UDF on the driver's and
executors' classpath) and reads the staged text file on the executors. Prints one JSON line."""
import json
import sys

from pyspark.sql import SparkSession
from pyspark.sql.types import LongType

staged = sys.argv[1]
spark = SparkSession.builder.appName("kubebed-submit").getOrCreate()
spark.udf.registerJavaFunction("plus", "staged.Plus", LongType())
words = spark.read.text(f"file://{staged}/words.txt").repartition(2)
lines = sorted(r.value for r in words.collect())
nums = [r.p for r in spark.range(3).selectExpr("plus(id) AS p").collect()]
print(json.dumps({"lines": lines, "plus": sorted(nums)}))
sys.stdout.flush()
spark.stop()

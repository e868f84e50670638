"""A Spark job that needs the files staged for it: a class from a staged jar (a Java UDF on the
driver's and executors' classpath through `--jars local://...`) and a staged text file read by
the executors. Prints one JSON line."""
import json
import sys

from pyspark.sql import SparkSession
from pyspark.sql.types import LongType

spark = SparkSession.builder.appName("kubebed-staged").getOrCreate()
spark.udf.registerJavaFunction("plus", "staged.Plus", LongType())
words = spark.read.text("file:///var/spark-data/spark-jars/words.txt").repartition(2)
lines = sorted(r.value for r in words.collect())
nums = [r.p for r in spark.range(3).selectExpr("plus(id) AS p").collect()]
executors = spark.sparkContext._jsc.sc().getExecutorIds().mkString(",")
print(json.dumps({"lines": lines, "plus": sorted(nums), "executors": executors}))
sys.stdout.flush()
spark.stop()

#!/bin/bash
# The test bed's stand-in for the entrypoint of Spark's container image: `driver` runs
# spark-submit in client mode bound to the pod's address, `executor` runs
# KubernetesExecutorBackend with the JVM options Spark put in SPARK_JAVA_OPT_<n> (in <n> order),
# anything else runs as given.
set -euo pipefail

classpath="${SPARK_CLASSPATH:-}:${SPARK_HOME}/jars/*"
if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then
  classpath="$classpath:$SPARK_EXTRA_CLASSPATH"
fi
if [ -n "${SPARK_CONF_DIR:-}" ]; then
  classpath="$SPARK_CONF_DIR:$classpath"
else
  classpath="$SPARK_HOME/conf:$classpath"
fi

java_opts=()
while IFS= read -r opt; do
  java_opts+=("$opt")
done < <(env | sed -n 's/^SPARK_JAVA_OPT_\([0-9]*\)=\(.*\)$/\1 \2/p' | sort -n | cut -d' ' -f2-)

role="${1:-}"
case "$role" in
  driver)
    shift
    exec "$SPARK_HOME/bin/spark-submit" \
      --conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    exec "$JAVA_HOME/bin/java" "${java_opts[@]}" \
      "-Xms$SPARK_EXECUTOR_MEMORY" "-Xmx$SPARK_EXECUTOR_MEMORY" \
      -cp "$classpath:${SPARK_DIST_CLASSPATH:-}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" \
      --executor-id "$SPARK_EXECUTOR_ID" \
      --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" \
      --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "$SPARK_RESOURCE_PROFILE_ID" \
      --podName "$SPARK_EXECUTOR_POD_NAME"
    ;;
  *)
    exec "$@"
    ;;
esac

//! The four ways of running executors that `loadtest dra` compares, as Spark settings: the
//! same executor size, idle timeout and maximum number of executors in each; only how shuffle
//! output outlives (or does not outlive) an executor differs.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How executors are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// The DaemonSet shuffle service from `k8s/shuffle-service/daemonset/` (this project):
    /// `spark.shuffle.service.enabled=true` and dynamic allocation; an idle executor goes after
    /// the idle timeout whatever shuffle output it wrote.
    Service,
    /// Dynamic allocation with shuffle tracking: an executor holding shuffle output that a live
    /// shuffle may still need stays.
    Tracking,
    /// Shuffle tracking plus on-demand PVCs the driver owns and hands to new executors, which
    /// recover the shuffle files they find (`KubernetesLocalDiskShuffleDataIO`).
    Pvc,
    /// Static allocation: the maximum number of executors for the whole application.
    Static,
}

impl Config {
    /// Every configuration, in report order.
    pub const ALL: [Self; 4] = [Self::Service, Self::Tracking, Self::Pvc, Self::Static];

    /// The short name (command lines, JSON).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Tracking => "tracking",
            Self::Pvc => "pvc",
            Self::Static => "static",
        }
    }

    /// What it is, for tables and charts.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Service => "shuffle service (DaemonSet)",
            Self::Tracking => "shuffle tracking",
            Self::Pvc => "PVC reuse + shuffle recovery",
            Self::Static => "static allocation",
        }
    }

    /// The configuration of a short name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Spark's settings for executors of this configuration, then the settings' extra ones.
    /// `template` is the DaemonSet mode's executor pod template
    /// (`k8s/shuffle-service/daemonset/spark/executor-pod-template.yaml`).
    #[must_use]
    pub fn confs(self, s: &super::Settings, template: &Path) -> Vec<(String, String)> {
        let mut c = self.own_confs(s, template);
        c.extend(s.extra_confs.iter().cloned());
        c
    }

    fn own_confs(self, s: &super::Settings, template: &Path) -> Vec<(String, String)> {
        let mut c = Confs::default();
        c.set("spark.executor.cores", "1");
        c.set("spark.executor.memory", &s.executor_memory);
        // The same in every configuration, dynamic or not.
        c.set(
            "spark.dynamicAllocation.executorIdleTimeout",
            &format!("{}s", s.idle_timeout_s),
        );
        c.set(
            "spark.dynamicAllocation.maxExecutors",
            &s.max_executors.to_string(),
        );
        if self == Self::Static {
            c.set("spark.dynamicAllocation.enabled", "false");
            c.set("spark.executor.instances", &s.max_executors.to_string());
            return c.0;
        }
        c.set("spark.dynamicAllocation.enabled", "true");
        c.set("spark.dynamicAllocation.minExecutors", "0");
        if self == Self::Service {
            c.set("spark.shuffle.service.enabled", "true");
            c.set("spark.dynamicAllocation.shuffleTracking.enabled", "false");
            c.set(
                "spark.kubernetes.executor.podTemplateFile",
                &template.display().to_string(),
            );
            return c.0;
        }
        // Without a shuffle service, dynamic allocation needs shuffle tracking, with the PVC
        // plugin too: its driver side (LocalDiskShuffleDriverComponents) does not claim
        // reliable storage.
        c.set("spark.dynamicAllocation.shuffleTracking.enabled", "true");
        if self == Self::Pvc {
            let vol = "spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1";
            for (k, v) in [
                ("options.claimName", "OnDemand"),
                ("options.storageClass", "standard"),
                ("options.sizeLimit", "10Gi"),
                // Recovery looks for `<root>/spark-*/*/blockmgr-*` two levels above each local
                // directory (the layout Spark's documentation gives).
                ("mount.path", "/var/data/spark-x/executor-x"),
                ("mount.readOnly", "false"),
            ] {
                c.set(&format!("{vol}.{k}"), v);
            }
            c.set("spark.kubernetes.driver.ownPersistentVolumeClaim", "true");
            c.set("spark.kubernetes.driver.reusePersistentVolumeClaim", "true");
            c.set(
                "spark.kubernetes.driver.waitToReusePersistentVolumeClaim",
                "true",
            );
            c.set(
                "spark.shuffle.sort.io.plugin.class",
                "org.apache.spark.shuffle.KubernetesLocalDiskShuffleDataIO",
            );
        }
        c.0
    }
}

/// Settings in the order they were set.
#[derive(Default)]
struct Confs(Vec<(String, String)>);

impl Confs {
    fn set(&mut self, k: &str, v: &str) {
        self.0.push((k.to_owned(), v.to_owned()));
    }
}

/// A workload of `tests/spark/dra_job.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A skewed join: a wide map stage, then a reduce stage with a long tail of a few tasks.
    Skew,
    /// A multi-stage ETL with a step on the driver (collect, write, pause) between its jobs.
    Etl,
    /// One shuffle read again by later jobs, each after an idle gap.
    Iter,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Self; 3] = [Self::Skew, Self::Etl, Self::Iter];

    /// The short name (`--workload` of the job, JSON).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Skew => "skew",
            Self::Etl => "etl",
            Self::Iter => "iter",
        }
    }

    /// What it is, for tables and charts.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Skew => "skewed join",
            Self::Etl => "multi-stage ETL with pauses",
            Self::Iter => "iterative (a shuffle read again after idle gaps)",
        }
    }

    /// The workload of a short name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }
}

//! Container images, mapped to what is on this machine: an image is its entrypoint, command,
//! user, environment and the host files it places at paths in the container's filesystem
//! (bind mounts over the host's own root filesystem, which stands in for the image's).

use std::collections::HashMap;
use std::path::PathBuf;

/// One image.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `USER` uid and gid (`None`: root).
    pub user: Option<(u32, u32)>,
    /// `ENV`.
    pub env: Vec<(String, String)>,
    /// `WORKDIR`.
    pub workdir: Option<String>,
    /// Host path → path in the container.
    pub files: Vec<(PathBuf, String)>,
}

/// Options for the JVMs of test jobs, in `JDK_JAVA_OPTIONS` (read by every `java` launcher):
/// a Spark driver or executor of a test lives seconds, so the C1 compiler alone (no C2 threads
/// competing with the job for the machine's cores) and the serial collector (no GC threads)
/// make it start and finish faster. The bed's Spark image sets it in its environment; the
/// tests that start Spark on the host set it on the processes they start.
pub const SHORT_LIVED_JVM: &str = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC";

/// The images a bed can run, by reference (`name:tag`, or `name` for any tag).
#[derive(Debug, Clone, Default)]
pub struct Images {
    map: HashMap<String, Image>,
}

impl Images {
    /// Registers `image` under `reference`.
    pub fn insert(&mut self, reference: &str, image: Image) {
        self.map.insert(reference.to_string(), image);
    }

    /// The image for a container's `image` field: the exact reference, or its name without
    /// the tag.
    #[must_use]
    pub fn get(&self, reference: &str) -> Option<&Image> {
        self.map.get(reference).or_else(|| {
            let name = match reference.rsplit_once(':') {
                Some((n, tag)) if !tag.contains('/') => n,
                _ => reference,
            };
            self.map.get(name)
        })
    }
}

/// The project's image (see the top-level `Dockerfile`): both service binaries in
/// `/usr/local/bin`, entrypoint the staging server, user 65532.
#[must_use]
pub fn services(bin_dir: &std::path::Path) -> Image {
    Image {
        entrypoint: vec!["/usr/local/bin/staging-server".into()],
        user: Some((65532, 65532)),
        files: ["staging-server", "shuffle-service"]
            .iter()
            .map(|b| (bin_dir.join(b), format!("/usr/local/bin/{b}")))
            .collect(),
        ..Image::default()
    }
}

/// Spark's image from a Spark distribution (pyspark's package directory serves): Spark at
/// `/opt/spark`, an entrypoint equivalent to the image's at `/opt/entrypoint.sh`, Java from
/// `java_home`, user `spark` (185) in `/etc/passwd` and `/etc/group` (written into `scratch`:
/// the host's entries plus Spark's user, as the image's Dockerfile adds it), working directory
/// `/opt/spark/work-dir`.
///
/// # Errors
/// `scratch` cannot be written.
pub fn spark(
    spark_home: &std::path::Path,
    java_home: &std::path::Path,
    entrypoint: &std::path::Path,
    scratch: &std::path::Path,
) -> std::io::Result<Image> {
    std::fs::create_dir_all(scratch)?;
    let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd.push_str("spark:x:185:185:Spark:/opt/spark:/bin/false\n");
    let mut group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    group.push_str("spark:x:185:\n");
    std::fs::write(scratch.join("passwd"), passwd)?;
    std::fs::write(scratch.join("group"), group)?;
    Ok(Image {
        entrypoint: vec!["/opt/entrypoint.sh".into()],
        user: Some((185, 185)),
        env: vec![
            ("SPARK_HOME".into(), "/opt/spark".into()),
            ("JAVA_HOME".into(), "/opt/java".into()),
            ("JDK_JAVA_OPTIONS".into(), SHORT_LIVED_JVM.into()),
            (
                "PATH".into(),
                "/opt/java/bin:/opt/spark/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        ],
        workdir: Some("/opt/spark/work-dir".into()),
        files: vec![
            (spark_home.to_path_buf(), "/opt/spark".into()),
            (java_home.to_path_buf(), "/opt/java".into()),
            (entrypoint.to_path_buf(), "/opt/entrypoint.sh".into()),
            (scratch.join("passwd"), "/etc/passwd".into()),
            (scratch.join("group"), "/etc/group".into()),
        ],
        cmd: Vec::new(),
    })
}

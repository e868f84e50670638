//! Reading and rewriting a `spark-submit` command line: which arguments name local files, and
//! the same command line with those files replaced by the `local://` paths where the
//! init-container puts them.
//!
//! Local means a path without a scheme, or a `file:` URI. `local://`, `http(s)://`, `s3a://`
//! and every other scheme stay as they are. A `#fragment` (an archive's alias) is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use staging_api::names;

/// spark-submit options that take a value (Spark 4's `SparkSubmitOptionParser`).
const WITH_VALUE: &[&str] = &[
    "--archives",
    "--class",
    "--conf",
    "-c",
    "--deploy-mode",
    "--driver-class-path",
    "--driver-cores",
    "--driver-java-options",
    "--driver-library-path",
    "--driver-memory",
    "--executor-cores",
    "--executor-memory",
    "--files",
    "--jars",
    "--keytab",
    "--kill",
    "--master",
    "--name",
    "--num-executors",
    "--packages",
    "--principal",
    "--properties-file",
    "--proxy-user",
    "--py-files",
    "--queue",
    "--repositories",
    "--exclude-packages",
    "--status",
    "--total-executor-cores",
    "--remote",
];

/// Options whose value is a comma-separated list of files.
const FILE_LIST_OPTIONS: &[(&str, &str)] = &[
    ("--jars", "spark.jars"),
    ("--files", "spark.files"),
    ("--py-files", "spark.submit.pyFiles"),
    ("--archives", "spark.archives"),
];

/// The primary resources that name no file.
const SPECIAL_PRIMARY: &[&str] = &[
    "spark-shell",
    "pyspark-shell",
    "sparkr-shell",
    "spark-internal",
];

/// A local file the command line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Absolute path.
    pub path: PathBuf,
    /// Name in the staged directory.
    pub name: String,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Options in order, as (option, value) pairs; flags have no value.
    pub options: Vec<(String, Option<String>)>,
    /// The primary resource (application jar or Python file), if any.
    pub primary: Option<String>,
    /// Arguments of the application.
    pub app_args: Vec<String>,
}

impl Parsed {
    /// Reads a command line.
    ///
    /// # Errors
    /// An option that needs a value is last.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if !a.starts_with('-') || a == "-" {
                return Ok(Self {
                    options,
                    primary: Some(a.clone()),
                    app_args: args[i + 1..].to_vec(),
                });
            }
            if let Some((opt, value)) = a.split_once('=')
                && WITH_VALUE.contains(&opt)
            {
                options.push((opt.to_owned(), Some(value.to_owned())));
                i += 1;
                continue;
            }
            if WITH_VALUE.contains(&a.as_str()) {
                let Some(value) = args.get(i + 1) else {
                    return Err(format!("spark-submit option {a} needs a value"));
                };
                options.push((a.clone(), Some(value.clone())));
                i += 2;
                continue;
            }
            options.push((a.clone(), None));
            i += 1;
        }
        Ok(Self {
            options,
            primary: None,
            app_args: Vec::new(),
        })
    }

    /// The last value of an option.
    #[must_use]
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(o, _)| o == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The last value given to a Spark property with `--conf`.
    #[must_use]
    pub fn conf(&self, key: &str) -> Option<&str> {
        self.options.iter().rev().find_map(|(o, v)| {
            let (k, v) = conf_pair(o, v.as_deref())?;
            (k == key).then_some(v)
        })
    }

    /// Removes every `--conf key=...`.
    pub fn remove_conf(&mut self, key: &str) {
        self.options
            .retain(|(o, v)| conf_pair(o, v.as_deref()).is_none_or(|(k, _)| k != key));
    }

    /// Appends `--conf key=value`.
    pub fn push_conf(&mut self, key: &str, value: &str) {
        self.options
            .push(("--conf".into(), Some(format!("{key}={value}"))));
    }

    /// The command line.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (o, v) in &self.options {
            out.push(o.clone());
            if let Some(v) = v {
                out.push(v.clone());
            }
        }
        if let Some(p) = &self.primary {
            out.push(p.clone());
        }
        out.extend(self.app_args.iter().cloned());
        out
    }

    /// Finds the local files named by the file options, the `spark.jars`-like properties and
    /// the primary resource, and rewrites each to `local://<mount>/<name>`.
    ///
    /// # Errors
    /// A sentence naming the file: missing, not a regular file, unusable name, or two files of
    /// one name.
    pub fn stage_local_files(&mut self, cwd: &Path, mount: &str) -> Result<Vec<Found>, String> {
        let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut rewrite = |value: &str| -> Result<String, String> {
            value
                .split(',')
                .map(|item| rewrite_one(item.trim(), cwd, mount, &mut found))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join(","))
        };
        for (opt, value) in &mut self.options {
            let Some(v) = value.as_mut() else { continue };
            if FILE_LIST_OPTIONS.iter().any(|(o, _)| o == opt) {
                *v = rewrite(v)?;
            } else if let Some((k, val)) = conf_pair(opt, Some(v.as_str()))
                && FILE_LIST_OPTIONS.iter().any(|(_, key)| *key == k)
            {
                let new = rewrite(val)?;
                *v = format!("{k}={new}");
            }
        }
        if let Some(p) = &self.primary
            && !SPECIAL_PRIMARY.contains(&p.as_str())
        {
            let new = rewrite_one(p, cwd, mount, &mut found)?;
            self.primary = Some(new);
        }
        Ok(found
            .into_iter()
            .map(|(name, path)| Found { path, name })
            .collect())
    }
}

/// `(key, value)` of a `--conf key=value` option.
fn conf_pair<'a>(opt: &str, value: Option<&'a str>) -> Option<(&'a str, &'a str)> {
    if opt != "--conf" && opt != "-c" {
        return None;
    }
    value?.split_once('=')
}

/// The local path an item names, if it is local.
fn local_path(item: &str) -> Option<&str> {
    if let Some(rest) = item.strip_prefix("file://") {
        return Some(rest);
    }
    if let Some(rest) = item.strip_prefix("file:") {
        return Some(rest);
    }
    match item.find(':') {
        // A scheme is letters, digits, '+', '-', '.' before the first ':'.
        Some(i)
            if i > 1
                && item[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            None
        }
        _ => Some(item),
    }
}

fn rewrite_one(
    item: &str,
    cwd: &Path,
    mount: &str,
    found: &mut BTreeMap<String, PathBuf>,
) -> Result<String, String> {
    if item.is_empty() {
        return Ok(String::new());
    }
    let (target, fragment) = match item.split_once('#') {
        Some((t, f)) => (t, Some(f)),
        None => (item, None),
    };
    let Some(local) = local_path(target) else {
        return Ok(item.to_owned());
    };
    let path = cwd.join(local);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (stage files, or an archive of a directory with --archives)",
            path.display()
        ));
    }
    let path = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no usable file name", path.display()))?
        .to_owned();
    names::validate(&name)?;
    if let Some(prev) = found.get(&name)
        && *prev != path
    {
        return Err(format!(
            "{} and {} have the same name; the pods see one directory, rename one",
            prev.display(),
            path.display()
        ));
    }
    found.insert(name.clone(), path);
    let mount = mount.trim_end_matches('/');
    Ok(match fragment {
        Some(f) => format!("local://{mount}/{name}#{f}"),
        None => format!("local://{mount}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn parses_options_primary_and_application_arguments() {
        let p = Parsed::parse(&s(&[
            "--master=k8s://https://api:6443",
            "--deploy-mode",
            "cluster",
            "--verbose",
            "--conf",
            "spark.a=1",
            "-c",
            "spark.a=2",
            "app.py",
            "--jars",
            "x",
        ]))
        .unwrap();
        assert_eq!(p.option("--master"), Some("k8s://https://api:6443"));
        assert_eq!(p.option("--deploy-mode"), Some("cluster"));
        assert_eq!(p.conf("spark.a"), Some("2"));
        assert_eq!(p.primary.as_deref(), Some("app.py"));
        assert_eq!(p.app_args, s(&["--jars", "x"]));
        assert!(Parsed::parse(&s(&["--class"])).is_err());
    }

    #[test]
    fn rewrites_local_files_and_keeps_remote_ones() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.jar", "b.jar", "data.txt", "env.zip", "job.py", "lib.py"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut p = Parsed::parse(&s(&[
            "--jars",
            "a.jar,local:///opt/x.jar,s3a://b/c.jar",
            "--files",
            "file:data.txt",
            "--archives",
            "env.zip#env",
            "--conf",
            "spark.jars=b.jar,https://h/d.jar",
            "--conf",
            "spark.submit.pyFiles=lib.py",
            "job.py",
            "a.jar",
        ]))
        .unwrap();
        let found = p.stage_local_files(dir.path(), "/var/staged/").unwrap();
        let names: Vec<_> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["a.jar", "b.jar", "data.txt", "env.zip", "job.py", "lib.py"]
        );
        assert_eq!(
            p.to_args(),
            s(&[
                "--jars",
                "local:///var/staged/a.jar,local:///opt/x.jar,s3a://b/c.jar",
                "--files",
                "local:///var/staged/data.txt",
                "--archives",
                "local:///var/staged/env.zip#env",
                "--conf",
                "spark.jars=local:///var/staged/b.jar,https://h/d.jar",
                "--conf",
                "spark.submit.pyFiles=local:///var/staged/lib.py",
                "local:///var/staged/job.py",
                // Application arguments are the application's.
                "a.jar",
            ])
        );
    }

    #[test]
    fn refuses_what_cannot_be_staged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        std::fs::create_dir_all(dir.path().join("y")).unwrap();
        std::fs::write(dir.path().join("x/a.jar"), "1").unwrap();
        std::fs::write(dir.path().join("y/a.jar"), "2").unwrap();
        let stage = |args: &[&str]| {
            Parsed::parse(&s(args))
                .unwrap()
                .stage_local_files(dir.path(), "/m")
        };
        let e = stage(&["--jars", "x/a.jar,y/a.jar", "app.py"]).unwrap_err();
        assert!(e.contains("same name"), "{e}");
        let e = stage(&["--files", "x", "app.py"]).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = stage(&["--files", "missing.txt", "app.py"]).unwrap_err();
        assert!(e.contains("missing.txt"), "{e}");
        // One file named twice is staged once.
        let found = stage(&["--jars", "x/a.jar", "--conf", "spark.jars=x/a.jar"]).unwrap();
        assert_eq!(found.len(), 1);
        // Special primary resources name no file.
        assert!(stage(&["spark-internal"]).unwrap().is_empty());
    }
}

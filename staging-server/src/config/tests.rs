//! Loading and validating the configuration.

use super::*;
use crate::size::ByteSize;

#[test]
fn refuses_anonymous_upload_on_exposed_listener() {
    let args = ServeArgs {
        listen: Some("0.0.0.0:10000".parse().unwrap()),
        ..Default::default()
    };
    assert!(Config::load(args.clone(), false).unwrap_err().is_usage());
    let ok = ServeArgs {
        insecure_allow_anonymous_upload: Some(true),
        ..args
    };
    assert!(Config::load(ok, false).is_ok());
}

#[test]
fn cli_overrides_file_which_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.toml");
    std::fs::write(&path, "unused_ttl = \"5m\"\nmax_upload_size = \"1MiB\"\n").unwrap();
    let args = ServeArgs {
        config: Some(path),
        max_upload_size: Some(ByteSize(10)),
        ..Default::default()
    };
    let c = Config::load(args, false).unwrap();
    assert_eq!(c.limits.unused_ttl, Duration::from_secs(300));
    assert_eq!(c.limits.max_upload_size, 10);
    assert_eq!(c.limits.max_ttl, DEFAULT_MAX_TTL);
}

#[test]
fn rejects_unknown_file_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.toml");
    std::fs::write(&path, "lisen = \"0.0.0.0:1\"\n").unwrap();
    let args = ServeArgs {
        config: Some(path),
        ..Default::default()
    };
    assert!(Config::load(args, false).is_err());
}

#[test]
fn debug_never_prints_tokens_keys_or_store_options() {
    const TOKEN: &str = "upload-token-0123456789";
    const KEY: &str = "signing-key-0123456789-0123456789-0123456789";
    const STORE_SECRET: &str = "store-secret-0123456789";
    const OLD_KEY: &str = "previous-key-0123456789-0123456789-01234";
    let mut config = Config::for_data_dir("/data");
    config.upload_tokens = vec![crate::auth::UploadToken::from(TOKEN)];
    config.signing_key = Some(KEY.as_bytes().to_vec());
    config.verify_keys = vec![OLD_KEY.as_bytes().to_vec()];
    config.store = StoreLocation::Url {
        url: "s3://bucket/prefix".into(),
        options: BTreeMap::from([("aws_secret_access_key".into(), STORE_SECRET.into())]),
    };
    let printed = format!("{config:?}");
    for secret in [TOKEN, KEY, STORE_SECRET, OLD_KEY] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    // The rest is still there to read.
    assert!(printed.contains("aws_secret_access_key") && printed.contains("/data"));

    let args = ServeArgs {
        upload_tokens: Some(TOKEN.parse().unwrap()),
        signing_key: Some(KEY.parse().unwrap()),
        verify_keys: Some(OLD_KEY.parse().unwrap()),
        store_options: vec![
            format!("aws_secret_access_key={STORE_SECRET}")
                .parse()
                .unwrap(),
        ],
        ..Default::default()
    };
    let printed = format!("{args:?} {:#?}", args);
    for secret in [TOKEN, KEY, STORE_SECRET, OLD_KEY] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
}

/// Parses `serve` arguments as the binary does.
fn parse(argv: &[&str]) -> ServeArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    use clap::Parser as _;
    Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
        .unwrap()
        .serve
}

#[test]
fn a_flag_turns_off_a_switch_the_file_turns_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.toml");
    std::fs::write(
        &path,
        "kube_auth = true\nstore_shared = true\nkube_keep_secrets = true\n\
         insecure_allow_anonymous_upload = true\nlisten = \"0.0.0.0:10000\"\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let on = Config::load(parse(&["--config", config, "--kube-owners", "on"]), false).unwrap();
    assert!(on.kube_auth && on.store_shared && on.insecure_allow_anonymous_upload);
    assert!(!on.owners.unwrap().delete_secrets);

    let off = Config::load(
        parse(&[
            "--config",
            config,
            "--kube-owners",
            "on",
            "--kube-auth=false",
            "--store-shared=false",
            "--kube-keep-secrets=false",
        ]),
        false,
    )
    .unwrap();
    assert!(!off.kube_auth && !off.store_shared && off.insecure_allow_anonymous_upload);
    assert!(off.owners.unwrap().delete_secrets);
    // Anonymous uploads on a public listener, turned off by the flag, are refused again.
    let e = Config::load(
        parse(&[
            "--config",
            config,
            "--kube-auth=false",
            "--insecure-allow-anonymous-upload=false",
        ]),
        false,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        e.is_usage() && e.to_string().contains("not loopback"),
        "{e}"
    );
    // A bare switch still turns it on.
    assert!(
        Config::load(parse(&["--kube-auth"]), false)
            .unwrap()
            .kube_auth
    );
    assert!(!Config::load(parse(&[]), false).unwrap().kube_auth);
}

#[test]
fn owners_follow_pods_by_default_only_in_a_cluster() {
    assert!(Config::load(parse(&[]), false).unwrap().owners.is_none());
    assert!(Config::load(parse(&[]), true).unwrap().owners.is_some());
    assert!(
        Config::load(parse(&["--kube-owners", "off"]), true)
            .unwrap()
            .owners
            .is_none()
    );
    assert!(
        Config::load(parse(&["--kube-owners", "on"]), false)
            .unwrap()
            .owners
            .is_some()
    );
}

#[test]
fn a_built_config_is_held_to_the_rules_of_a_loaded_one() {
    let mut c = Config::for_data_dir("/data");
    assert!(c.validate().is_ok());
    c.upload_tokens = vec![crate::auth::UploadToken::from("short")];
    let e = c.validate().unwrap_err();
    assert!(
        e.is_usage() && e.to_string().contains("16 characters"),
        "{e}"
    );
    c.upload_tokens.clear();
    c.listen = "0.0.0.0:10000".parse().unwrap();
    assert!(c.validate().is_err());
    c.insecure_allow_anonymous_upload = true;
    assert!(c.validate().is_ok());
    c.signing_key = Some(b"short".to_vec());
    assert!(c.validate().is_err());
}

#[test]
fn a_secret_is_a_value_or_a_file_never_both() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("key");
    std::fs::write(&p, "s3cret\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        secret_value("k", None, Some(&p)).unwrap().as_deref(),
        Some("s3cret")
    );
    assert!(
        secret_value("k", Some("x"), Some(&p))
            .unwrap_err()
            .is_usage()
    );
    // A refused file is a usage error; one that cannot be read is the machine's.
    let _ = std::os::unix::fs::chown(&p, Some(185), None);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(secret_value("k", None, Some(&p)).unwrap_err().is_usage());
    let e = secret_value("k", None, Some(&dir.path().join("missing"))).unwrap_err();
    assert!(!e.is_usage(), "{e}");
}

#[test]
fn a_bad_file_value_is_refused_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.toml");
    std::fs::write(&path, "unused_ttl = \"soon\"\n").unwrap();
    let e = Config::load(parse(&["--config", path.to_str().unwrap()]), false)
        .map(|_| ())
        .unwrap_err();
    assert!(
        e.is_usage() && e.to_string().contains("staging.toml"),
        "{e}"
    );
    let e = Config::load(
        parse(&["--config", dir.path().join("none.toml").to_str().unwrap()]),
        false,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::ReadFile { .. }) && e.is_usage(),
        "{e}"
    );
}

#[test]
fn keys_that_only_verify_come_from_values_files_and_the_file_list() {
    use std::os::unix::fs::PermissionsExt as _;
    const A: &str = "key-a-0123456789-0123456789-0123456789";
    const B: &str = "key-b-0123456789-0123456789-0123456789";
    const C: &str = "key-c-0123456789-0123456789-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, key: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let (a, b) = (secret("a.key", A), secret("b.key", B));
    let list = secret("keys", &format!("# previous keys\n{B}\n\n  {C}  \n"));
    let empty = secret("none", "");
    let toml = dir.path().join("staging.toml");
    std::fs::write(
        &toml,
        format!("verify_key_files = [{:?}]\n", a.to_str().unwrap()),
    )
    .unwrap();
    let config = toml.to_str().unwrap();
    let keys = |c: Config| -> Vec<String> {
        c.verify_keys
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    };
    assert!(
        Config::load(parse(&[]), false)
            .unwrap()
            .verify_keys
            .is_empty()
    );
    assert_eq!(
        keys(Config::load(parse(&["--config", config]), false).unwrap()),
        [A]
    );
    // Flags replace the file's list; values join the files (an empty entry is none).
    let c = Config::load(
        parse(&[
            "--config",
            config,
            "--verify-key-file",
            b.to_str().unwrap(),
            &format!("--verify-keys={C},"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(keys(c), [C, B]);
    let c = Config::load(
        parse(&[
            "--verify-key-file",
            a.to_str().unwrap(),
            "--verify-key-file",
            b.to_str().unwrap(),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(keys(c), [A, B]);
    // A file lists keys one per line; an empty one names none.
    let c = Config::load(
        parse(&[
            "--verify-key-file",
            &format!("{},{}", list.display(), empty.display()),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(keys(c), [B, C]);
    // Too short a key is refused, as a signing key would be.
    let e = Config::load(parse(&["--verify-keys", "short"]), false)
        .map(|_| ())
        .unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("32 bytes"), "{e}");
    // A key file others may read is refused.
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        Config::load(parse(&["--verify-key-file", a.to_str().unwrap()]), false)
            .map(|_| ())
            .unwrap_err()
            .is_usage()
    );
}

#[test]
fn presigned_downloads_are_off_by_default_and_their_urls_short_lived() {
    assert_eq!(
        Config::load(parse(&[]), false).unwrap().presigned_url_ttl,
        None
    );
    assert_eq!(
        Config::load(parse(&["--presigned-downloads"]), false)
            .unwrap()
            .presigned_url_ttl,
        Some(DEFAULT_PRESIGNED_URL_TTL)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.toml");
    std::fs::write(
        &path,
        "presigned_downloads = true\npresigned_url_ttl = \"5m\"\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    assert_eq!(
        Config::load(parse(&["--config", config]), false)
            .unwrap()
            .presigned_url_ttl,
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        Config::load(
            parse(&["--config", config, "--presigned-downloads=false"]),
            false
        )
        .map(|_| ())
        .unwrap_err()
        .to_string(),
        "configuration: --presigned-url-ttl needs --presigned-downloads"
    );
    for ttl in ["0s", "16m", "7d"] {
        let e = Config::load(
            parse(&["--presigned-downloads", "--presigned-url-ttl", ttl]),
            false,
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("between 1s and 15m"),
            "{ttl}: {e}"
        );
    }
}

//! Loading and validating the configuration.

use super::*;

#[test]
fn an_unauthenticated_spark_listener_stays_on_loopback_unless_accepted() {
    let mut c = Config::for_data_dir("/tmp/x");
    assert!(c.validate().is_ok());
    c.spark_listen = Some("0.0.0.0:7337".parse().unwrap());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("--spark-allow-unauthenticated"), "{e}");
    c.spark_allow_unauthenticated = true;
    assert!(c.validate().is_ok());
    c.spark_allow_unauthenticated = false;
    c.spark_auth_secret_file = Some("/etc/secret".into());
    assert!(c.validate().is_ok());
    c.spark_listen = None;
    c.spark_auth_secret_file = None;
    assert!(c.validate().is_ok());
}

#[test]
fn the_pod_watch_is_on_in_a_pod_with_a_node_name_and_off_when_asked() {
    let g = Duration::from_secs(30);
    let node = || Some("node-1".to_owned());
    let on = kube_settings(KubeWatch::Auto, node(), vec![], g, false, true).unwrap();
    assert_eq!(on.unwrap().node_name, "node-1");
    assert!(
        kube_settings(KubeWatch::Auto, node(), vec![], g, false, false)
            .unwrap()
            .is_none()
    );
    assert!(
        kube_settings(KubeWatch::Auto, None, vec![], g, false, true)
            .unwrap()
            .is_none()
    );
    assert!(
        kube_settings(KubeWatch::Off, node(), vec![], g, false, true)
            .unwrap()
            .is_none()
    );
    let e = kube_settings(KubeWatch::On, None, vec![], g, false, true).unwrap_err();
    assert!(e.contains("--kube-node-name"), "{e}");
    let e = kube_settings(KubeWatch::Off, node(), vec![], g, true, true).unwrap_err();
    assert!(e.contains("--kube-learn-secrets"), "{e}");
    let e = kube_settings(
        KubeWatch::On,
        node(),
        vec!["Bad_NS".into()],
        g,
        false,
        false,
    )
    .unwrap_err();
    assert!(e.contains("Bad_NS"), "{e}");
}

#[test]
fn learned_secrets_count_as_authentication_for_a_public_listener() {
    let mut c = Config::for_data_dir("/tmp/x");
    c.spark_listen = Some("0.0.0.0:7337".parse().unwrap());
    c.kube = Some(KubeSettings {
        node_name: "n".into(),
        learn_secrets: true,
        ..KubeSettings::default()
    });
    assert!(c.validate().is_ok());
}

#[test]
fn requiring_encryption_needs_tls_or_authentication() {
    let mut c = Config::for_data_dir("/tmp/x");
    c.spark_require_encryption = true;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("--spark-require-encryption"), "{e}");
    c.spark_auth_secret_file = Some("/etc/secret".into());
    assert!(c.validate().is_ok());
    c.spark_auth_secret_file = None;
    c.spark_tls = Some(service_runtime::tls::TlsFiles {
        cert: "/c".into(),
        key: "/k".into(),
    });
    assert!(c.validate().is_ok());
}

#[test]
fn the_new_connection_limits_are_read_from_flags() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    use clap::Parser as _;
    let c = Config::load(
        Cli::try_parse_from([
            "x",
            "--admin-max-connections-per-peer",
            "3",
            "--grpc-max-connections-per-peer",
            "5",
            "--spark-auth-timeout",
            "7s",
            "--spark-frame-memory-per-peer",
            "20MiB",
        ])
        .unwrap()
        .serve,
        false,
    )
    .unwrap();
    assert_eq!(c.connections.admin_max_connections_per_peer, 3);
    assert_eq!(c.connections.grpc_max_connections_per_peer, 5);
    assert_eq!(c.spark_auth_timeout, Duration::from_secs(7));
    assert_eq!(c.spark_frame_memory_per_peer(), 20 << 20);
    let d = Config::load(Cli::try_parse_from(["x"]).unwrap().serve, false).unwrap();
    assert_eq!(d.connections.admin_max_connections_per_peer, 8);
    assert_eq!(d.connections.grpc_max_connections_per_peer, 64);
    assert_eq!(d.spark_auth_timeout, DEFAULT_SPARK_AUTH_TIMEOUT);
}

#[test]
fn a_peer_holds_a_quarter_of_the_frame_memory_and_at_least_one_largest_frame() {
    let mut c = Config::for_data_dir("/tmp/x");
    assert_eq!(c.spark_frame_memory_per_peer(), 32 << 20);
    c.spark_frame_memory = c.spark_max_frame as u64;
    assert_eq!(c.spark_frame_memory_per_peer(), c.spark_max_frame as u64);
    assert!(c.validate().is_ok());
    c.spark_frame_memory_per_peer = Some(1 << 20);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("--spark-frame-memory-per-peer"), "{e}");
    c.spark_frame_memory_per_peer = Some(c.spark_frame_memory * 2);
    assert!(c.validate().is_err());
    c = Config::for_data_dir("/tmp/x");
    c.connections.admin_max_connections_per_peer = 0;
    assert!(c.validate().is_err());
}

#[test]
fn ipv6_peers_are_one_address_each_unless_told_otherwise() {
    let c = Config::load(ServeArgs::default(), false).unwrap();
    assert_eq!(c.connections.peer_ipv6_prefix, 128);
    let c = Config::load(
        ServeArgs {
            peer_ipv6_prefix: Some(64),
            ..ServeArgs::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(c.connections.peer_ipv6_prefix, 64);
}

#[test]
fn a_shared_secret_beside_learned_secrets_needs_the_operators_consent() {
    let mut c = Config::for_data_dir("/tmp/x");
    c.spark_auth_secret_file = Some("/etc/secret".into());
    c.kube = kube_settings(
        KubeWatch::On,
        Some("node-1".to_owned()),
        vec![],
        Duration::from_secs(30),
        true,
        true,
    )
    .unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("--spark-allow-shared-secret-with-learned"),
        "{e}"
    );
    c.spark_allow_shared_secret_with_learned = true;
    assert!(c.validate().is_ok());
    c.spark_allow_shared_secret_with_learned = false;
    c.spark_auth_secret_file = None;
    c.spark_auth_secret_dir = Some("/etc/secrets".into());
    assert!(c.validate().is_ok());
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
fn the_file_is_typed_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffle.toml");
    std::fs::write(
        &path,
        r#"
volumes = ["/v1:hostPath:10GiB", "/v2"]
heartbeat_timeout = "1m 30s"
index_cache_size = "32MiB"
spark_memory = 1048576
spark_listen = "off"
spark_ciphers = ["AES/CTR/NoPadding"]
registry_sync = "normal"
spark_require_encryption = true
spark_tls_cert = "/c"
spark_tls_key = "/k"
"#,
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let c = Config::load(parse(&["--config", config]), false).unwrap();
    assert_eq!(c.volumes.len(), 2);
    assert_eq!(c.volumes[0].capacity, Some(10 << 30));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(90));
    assert_eq!(c.index_cache_bytes, 32 << 20);
    assert_eq!(c.spark_memory, 1 << 20);
    assert_eq!(c.spark_listen, None);
    assert_eq!(c.spark_ciphers, vec![Cipher::Ctr]);
    assert_eq!(c.registry_sync, Durability::Normal);
    assert!(c.spark_require_encryption);

    let c = Config::load(
        parse(&[
            "--config",
            config,
            "--spark-require-encryption=false",
            "--spark-memory",
            "2MiB",
            "--spark-listen",
            "127.0.0.1:7400",
        ]),
        false,
    )
    .unwrap();
    assert!(!c.spark_require_encryption);
    assert_eq!(c.spark_memory, 2 << 20);
    assert_eq!(c.spark_listen, Some("127.0.0.1:7400".parse().unwrap()));
    // A bare switch still turns it on.
    assert!(
        Config::load(parse(&["--spark-allow-unauthenticated"]), false)
            .unwrap()
            .spark_allow_unauthenticated
    );
}

#[test]
fn a_bad_file_value_is_refused_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffle.toml");
    for bad in [
        "idle_ttl = \"soon\"",
        "spark_memory = \"lots\"",
        "volumes = [\"/v:floppy\"]",
        "registry_sync = \"sometimes\"",
        "spark_ciphers = [\"rot13\"]",
        "spark_listen = \"nowhere\"",
    ] {
        std::fs::write(&path, bad).unwrap();
        let e = Config::load(parse(&["--config", path.to_str().unwrap()]), false)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, ConfigError::ParseFile { .. }), "{bad}: {e}");
        assert!(
            e.is_usage() && e.to_string().contains("shuffle.toml"),
            "{e}"
        );
    }
}

#[test]
fn the_pod_watch_follows_pods_by_default_only_in_a_cluster() {
    let node = ["--kube-node-name", "node-1"];
    assert!(Config::load(parse(&node), false).unwrap().kube.is_none());
    assert!(Config::load(parse(&node), true).unwrap().kube.is_some());
}

#[test]
fn a_built_config_is_held_to_the_rules_of_a_loaded_one() {
    let mut c = Config::for_data_dir("/tmp/x");
    c.spark_open_files = 1;
    assert!(c.validate().is_err());
    c = Config::for_data_dir("/tmp/x");
    c.cleanup_parallelism = 0;
    assert!(c.validate().is_err());
    c = Config::for_data_dir("/tmp/x");
    c.kube = Some(KubeSettings {
        node_name: "n".into(),
        namespaces: vec!["Bad_NS".into()],
        ..KubeSettings::default()
    });
    let e = c.validate().unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("Bad_NS"), "{e}");
    c.kube = Some(KubeSettings::default());
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--kube-node-name")
    );
}

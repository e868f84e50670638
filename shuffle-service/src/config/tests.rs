//! Loading and validating the configuration.

use super::*;

#[test]
fn an_unauthenticated_spark_listener_stays_on_loopback_unless_accepted() {
    let mut c = Config::for_data_dir("/tmp/x");
    assert!(c.validate().is_ok());
    c.spark_listen = Some("0.0.0.0:7337".parse().unwrap());
    let e = c.validate().unwrap_err();
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
    let e = c.validate().unwrap_err();
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
    )
    .unwrap();
    assert_eq!(c.connections.admin_max_connections_per_peer, 3);
    assert_eq!(c.connections.grpc_max_connections_per_peer, 5);
    assert_eq!(c.spark_auth_timeout, Duration::from_secs(7));
    assert_eq!(c.spark_frame_memory_per_peer(), 20 << 20);
    let d = Config::load(Cli::try_parse_from(["x"]).unwrap().serve).unwrap();
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
    let e = c.validate().unwrap_err();
    assert!(e.contains("--spark-frame-memory-per-peer"), "{e}");
    c.spark_frame_memory_per_peer = Some(c.spark_frame_memory * 2);
    assert!(c.validate().is_err());
    c = Config::for_data_dir("/tmp/x");
    c.connections.admin_max_connections_per_peer = 0;
    assert!(c.validate().is_err());
}

#[test]
fn ipv6_peers_are_one_address_each_unless_told_otherwise() {
    let c = Config::load(ServeArgs::default()).unwrap();
    assert_eq!(c.connections.peer_ipv6_prefix, 128);
    let c = Config::load(ServeArgs {
        peer_ipv6_prefix: Some(64),
        ..ServeArgs::default()
    })
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
    let e = c.validate().unwrap_err();
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

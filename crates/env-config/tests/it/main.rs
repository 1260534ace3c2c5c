//! Integration tests of parvm-env-config: the environment read through a lookup, on real
//! temp folders.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parvm_env_config::{Config, Error, TransportKind};

/// A fake environment over a temp folder that plays the home folder.
struct Env {
    vars: HashMap<String, OsString>,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let home = tempfile::tempdir().unwrap();
        let mut vars = HashMap::new();
        vars.insert("HOME".to_owned(), home.path().as_os_str().to_owned());
        Env { vars, home }
    }

    fn set(mut self, name: &str, value: impl Into<OsString>) -> Env {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    fn home(&self) -> PathBuf {
        self.home.path().canonicalize().unwrap()
    }

    fn config(&self) -> Result<Config, Error> {
        Config::from_lookup(|name| self.vars.get(name).cloned())
    }
}

fn join(paths: &[&Path]) -> OsString {
    let text: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    text.join(":").into()
}

#[test]
fn defaults_are_temp_folder_and_home() {
    let env = Env::new();
    let config = env.config().unwrap();
    assert_eq!(
        config.local_root(),
        std::env::temp_dir().canonicalize().unwrap()
    );
    assert_eq!(config.mirrored_roots(), [env.home()]);
    assert!(!config.hostname().is_empty());
    assert_eq!(config.workers(), None);
    assert_eq!(config.transport(), None);
}

#[test]
fn mirrored_roots_keep_order_expand_tilde_and_resolve_symlinks() {
    let env = Env::new();
    let real = env.home().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, env.home().join("link")).unwrap();
    std::fs::create_dir(env.home().join("second")).unwrap();
    let env = env.set("PARALLEL_MIRRORED_STORAGE", "~/link:~/second");
    let config = env.config().unwrap();
    assert_eq!(config.mirrored_roots(), [real, env.home().join("second")]);
}

#[test]
fn missing_local_root_is_created_with_tilde_expanded() {
    let env = Env::new().set("PARALLEL_LOCAL_STORAGE", "~/scratch/deep");
    let config = env.config().unwrap();
    assert_eq!(config.local_root(), env.home().join("scratch/deep"));
    assert!(config.local_root().is_dir());
}

#[test]
fn bad_mirrored_entries_name_variable_and_entry() {
    let env = Env::new();
    let home = env.home();
    let cases: Vec<(OsString, &str)> = vec![
        (join(&[&home, Path::new("")]), "empty entry at position 2"),
        (":/x".into(), "empty entry at position 1"),
        ("relative/dir".into(), "`relative/dir` is a relative path"),
        (join(&[&home.join("missing")]), "missing"),
        (
            "~nobody-parvm-test/x".into(),
            "names user `nobody-parvm-test`",
        ),
    ];
    for (value, expected) in cases {
        let env = Env::new().set("PARALLEL_MIRRORED_STORAGE", value.clone());
        let message = env.config().unwrap_err().to_string();
        assert!(message.contains("PARALLEL_MIRRORED_STORAGE"), "{message}");
        assert!(message.contains(expected), "{value:?}: {message}");
    }
}

/// A worker's host needs none of the spawner's folders: a missing mirrored root is kept as
/// given (the spawner ships from it); one that exists is resolved, and a file is refused.
#[test]
fn a_worker_accepts_a_missing_mirrored_root() {
    let env = Env::new();
    std::fs::create_dir(env.home().join("there")).unwrap();
    std::fs::write(env.home().join("file"), b"x").unwrap();
    let env = env.set("PARALLEL_MIRRORED_STORAGE", "~/missing:~/there");
    let as_worker = |env: &Env| Config::from_lookup_as_worker(|name| env.vars.get(name).cloned());
    let config = as_worker(&env).unwrap();
    assert_eq!(
        config.mirrored_roots(),
        [env.home().join("missing"), env.home().join("there")]
    );
    assert!(!env.home().join("missing").exists(), "nothing was created");
    // Reading only to look (`parvm config` on such a host) accepts it too.
    let looked = Config::from_lookup_read_only(|name| env.vars.get(name).cloned()).unwrap();
    assert_eq!(looked.mirrored_roots(), config.mirrored_roots());
    // The spawner mirrors from its roots: it still refuses a missing one.
    let message = env.config().unwrap_err().to_string();
    assert!(
        message.contains("missing") && message.contains("create the folder"),
        "{message}"
    );
    let env = env.set("PARALLEL_MIRRORED_STORAGE", "~/file");
    assert!(matches!(as_worker(&env), Err(Error::NotAFolder { .. })));
}

#[test]
fn a_file_is_not_a_root() {
    let env = Env::new();
    let file = env.home().join("file");
    std::fs::write(&file, b"x").unwrap();
    let env = env
        .set("PARALLEL_MIRRORED_STORAGE", file.clone())
        .set("PARALLEL_LOCAL_STORAGE", file.clone());
    assert!(matches!(env.config(), Err(Error::NotAFolder { .. })));
}

#[test]
fn local_root_under_a_file_cannot_be_created() {
    let env = Env::new();
    let file = env.home().join("file");
    std::fs::write(&file, b"x").unwrap();
    let env = env.set("PARALLEL_LOCAL_STORAGE", file.join("sub"));
    let err = env.config().unwrap_err();
    assert!(matches!(err, Error::CreateLocalRoot { .. }), "{err}");
    assert!(err.to_string().contains("PARALLEL_LOCAL_STORAGE"));
}

#[test]
fn parvm_variables_are_parsed_and_checked() {
    let env = Env::new()
        .set("PARVM_WORKERS", "3")
        .set("PARVM_TRANSPORT", "tcp")
        .set("PARVM_HOSTNAME", "node-a")
        .set("PARVM_LOG", "debug");
    let config = env.config().unwrap();
    assert_eq!(config.workers(), Some(3));
    assert_eq!(config.transport(), Some(TransportKind::Tcp));
    assert_eq!(config.hostname(), "node-a");
    assert_eq!(config.log_filter(), Some("debug"));

    let bad: [(&str, OsString); 5] = [
        ("PARVM_WORKERS", "0".into()),
        ("PARVM_WORKERS", "many".into()),
        ("PARVM_TRANSPORT", "pvm".into()),
        ("PARVM_HOSTNAME", "".into()),
        ("PARVM_HOSTNAME", OsString::from_vec(b"node\xff".to_vec())),
    ];
    for (name, value) in bad {
        let err = Env::new().set(name, value.clone()).config().unwrap_err();
        assert!(err.to_string().contains(name), "{name}={value:?}: {err}");
    }
}

#[test]
fn replace_workers_is_a_whole_number_that_may_be_0() {
    assert_eq!(Env::new().config().unwrap().replace_workers(), None);
    for (value, expected) in [("0", 0), (" 5 ", 5)] {
        let config = Env::new()
            .set("PARVM_REPLACE_WORKERS", value)
            .config()
            .unwrap();
        assert_eq!(config.replace_workers(), Some(expected), "{value:?}");
    }
    for value in ["-1", "many", "1.5", "99999999999"] {
        let err = Env::new()
            .set("PARVM_REPLACE_WORKERS", value)
            .config()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("PARVM_REPLACE_WORKERS") && text.contains(value),
            "{value}: {text}"
        );
    }
    let config = Config::builder().replace_workers(7).build().unwrap();
    assert_eq!(config.replace_workers(), Some(7));
}

#[test]
fn builder_resolves_like_the_environment() {
    let shared = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let config = Config::builder()
        .local_root(local.path().join("new"))
        .mirrored_roots([shared.path()])
        .workers(2)
        .transport(TransportKind::Local)
        .build()
        .unwrap();
    assert!(config.local_root().is_dir());
    assert_eq!(
        config.mirrored_roots(),
        [shared.path().canonicalize().unwrap()]
    );
    assert!(Config::builder().mirrored_roots(["rel"]).build().is_err());
    assert!(Config::builder().workers(0).build().is_err());
}

#[test]
fn read_only_reading_creates_no_local_root() {
    let env = Env::new();
    let missing = env.home().join("scratch/deep");
    let env = env.set("PARALLEL_LOCAL_STORAGE", "~/scratch/deep");
    let config = Config::from_lookup_read_only(|name| env.vars.get(name).cloned()).unwrap();
    assert_eq!(config.local_root(), missing);
    assert!(!env.home().join("scratch").exists(), "nothing was created");

    // An existing root is resolved as always, and a file is still refused.
    let link = env.home().join("link");
    std::os::unix::fs::symlink(env.home(), &link).unwrap();
    let env = env.set("PARALLEL_LOCAL_STORAGE", link.clone());
    let config = Config::from_lookup_read_only(|name| env.vars.get(name).cloned()).unwrap();
    assert_eq!(config.local_root(), env.home());
    let file = env.home().join("file");
    std::fs::write(&file, b"x").unwrap();
    let env = env.set("PARALLEL_LOCAL_STORAGE", file);
    let err = Config::from_lookup_read_only(|name| env.vars.get(name).cloned()).unwrap_err();
    assert!(matches!(err, Error::NotAFolder { .. }), "{err}");
}

#[test]
fn transport_settings_are_unset_by_default() {
    let env = Env::new();
    let config = env.config().unwrap();
    assert_eq!(config.listen(), None);
    assert_eq!(
        config.listen_addr().unwrap(),
        "127.0.0.1:0".parse().unwrap()
    );
    assert_eq!(config.connect(), None);
    assert_eq!(
        config.secret_file().unwrap(),
        env.home.path().join(".parvm/secret")
    );
    assert_eq!(config.connect_wait(), None);
    assert_eq!(config.max_frame(), None);
    assert_eq!(config.handshake_timeout(), None);
    assert_eq!(config.peer_timeout(), None);
    assert_eq!(config.spin_window(), None);
    assert!(config.forward_env().is_empty());
    assert!(!config.no_color());
}

#[test]
fn transport_settings_are_parsed_like_their_old_readers() {
    let env = Env::new()
        .set("PARVM_LISTEN", "127.0.0.1:7070")
        .set("PARVM_CONNECT", "node1:7070")
        .set("PARVM_SECRET_FILE", "/etc/parvm/secret")
        .set("PARVM_CONNECT_WAIT", " 2.5 ")
        .set("PARVM_MAX_FRAME", "64M")
        .set("PARVM_HANDSHAKE_TIMEOUT", "0.5")
        .set("PARVM_PEER_TIMEOUT", "0")
        .set("PARVM_SPIN_US", "0")
        .set("PARVM_FORWARD_ENV", " LD_LIBRARY_PATH, ,SPICE_LIB:")
        .set("NO_COLOR", "1")
        .set("PARVM_TRANSPORT", " TCP ");
    let config = env.config().unwrap();
    assert_eq!(config.listen(), Some("127.0.0.1:7070"));
    assert_eq!(
        config.listen_addr().unwrap(),
        "127.0.0.1:7070".parse().unwrap()
    );
    assert_eq!(config.connect(), Some("node1:7070"));
    assert_eq!(
        config.secret_file().unwrap(),
        Path::new("/etc/parvm/secret")
    );
    assert_eq!(config.connect_wait(), Some(Duration::from_millis(2500)));
    assert_eq!(config.max_frame(), Some(64 << 20));
    assert_eq!(config.handshake_timeout(), Some(Duration::from_millis(500)));
    // Zero is allowed: wait for ever.
    assert_eq!(config.peer_timeout(), Some(Duration::ZERO));
    assert_eq!(config.spin_window(), Some(Duration::ZERO));
    assert_eq!(config.forward_env(), ["LD_LIBRARY_PATH", "SPICE_LIB"]);
    assert!(config.no_color());
    assert_eq!(config.transport(), Some(TransportKind::Tcp));

    // Empty values of these settings mean unset, as they did for their old readers.
    let mut env = Env::new();
    for name in [
        "PARVM_LISTEN",
        "PARVM_CONNECT",
        "PARVM_SECRET_FILE",
        "PARVM_CONNECT_WAIT",
        "PARVM_MAX_FRAME",
        "PARVM_HANDSHAKE_TIMEOUT",
        "PARVM_PEER_TIMEOUT",
        "PARVM_SPIN_US",
        "NO_COLOR",
    ] {
        env = env.set(name, "");
    }
    let config = env.config().unwrap();
    assert_eq!(config.listen(), None);
    assert_eq!(config.connect(), None);
    assert_eq!(config.max_frame(), None);
    assert_eq!(config.peer_timeout(), None);
    assert_eq!(config.spin_window(), None);
    assert!(!config.no_color());
    assert_eq!(
        config.secret_file().unwrap(),
        env.home.path().join(".parvm/secret")
    );
}

#[test]
fn bad_transport_settings_name_the_variable_and_the_value() {
    let bad: [(&str, OsString); 14] = [
        ("PARVM_LISTEN", "nonsense".into()),
        ("PARVM_LISTEN", "1.2.3.4".into()),
        ("PARVM_LISTEN", OsString::from_vec(b"h\xff:1".to_vec())),
        ("PARVM_CONNECT", OsString::from_vec(b"h\xff:1".to_vec())),
        ("PARVM_CONNECT_WAIT", "-1".into()),
        ("PARVM_MAX_FRAME", "lots".into()),
        ("PARVM_MAX_FRAME", "100".into()),
        ("PARVM_HANDSHAKE_TIMEOUT", "0".into()),
        ("PARVM_HANDSHAKE_TIMEOUT", "soon".into()),
        ("PARVM_PEER_TIMEOUT", "-5".into()),
        ("PARVM_PEER_TIMEOUT", "a minute".into()),
        ("PARVM_SPIN_US", "fast".into()),
        ("PARVM_FORWARD_ENV", OsString::from_vec(b"A\xff".to_vec())),
        ("PARVM_TRANSPORT", "".into()),
    ];
    for (name, value) in bad {
        let err = Env::new().set(name, value.clone()).config().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(name), "{name}={value:?}: {text}");
        if let Some(value) = value.to_str() {
            assert!(text.contains(&format!("`{value}`")), "{text}");
        }
    }
}

#[test]
fn a_listen_host_is_resolved_only_when_asked() {
    // The form is right, so reading succeeds; the name lookup fails when it is used.
    let env = Env::new().set("PARVM_LISTEN", "300.1.1.1:80");
    let config = env.config().unwrap();
    let err = config.listen_addr().unwrap_err();
    assert!(matches!(err, Error::ListenAddress { .. }), "{err}");
    assert!(err.to_string().contains("PARVM_LISTEN"), "{err}");
    assert!(err.to_string().contains("300.1.1.1:80"), "{err}");
}

#[test]
fn without_a_home_the_secret_file_must_be_named() {
    // An empty HOME: `~` is unknown, and no relative `.parvm/secret` is made up.
    let env = Env::new();
    let config = Config::from_lookup(|name| match name {
        "HOME" => Some(OsString::new()),
        "PARALLEL_MIRRORED_STORAGE" => Some(env.home.path().as_os_str().to_owned()),
        _ => None,
    })
    .unwrap();
    let err = config.secret_file().unwrap_err();
    assert!(err.to_string().contains("PARVM_SECRET_FILE"), "{err}");
}

#[test]
fn builder_checks_transport_settings() {
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        Config::builder()
            .local_root(dir.path())
            .mirrored_roots([dir.path()])
    };
    let config = base()
        .listen("0.0.0.0:7070")
        .connect("node1:7070")
        .secret_file("/s")
        .max_frame(4096)
        .handshake_timeout(Duration::from_secs(1))
        .connect_wait(Duration::ZERO)
        .spin_window(Duration::from_secs(5))
        .forward_env(["A", "B"])
        .no_color(true)
        .build()
        .unwrap();
    assert_eq!(config.spin_window(), Some(Duration::from_secs(1)));
    assert_eq!(config.forward_env(), ["A", "B"]);
    assert_eq!(config.secret_file().unwrap(), Path::new("/s"));
    for (builder, name) in [
        (base().listen("nonsense"), "PARVM_LISTEN"),
        (base().max_frame(100), "PARVM_MAX_FRAME"),
        (
            base().handshake_timeout(Duration::ZERO),
            "PARVM_HANDSHAKE_TIMEOUT",
        ),
    ] {
        let err = builder.build().unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn the_host_name_reader_agrees_with_the_config() {
    let env = Env::new();
    let config = env.config().unwrap();
    assert_eq!(
        config.hostname(),
        parvm_env_config::system_hostname().unwrap()
    );
}

#[test]
fn shipping_settings_are_read_and_checked() {
    use parvm_env_config::{CacheMax, ShipMode};
    let config = Env::new().config().unwrap();
    assert_eq!((config.ship(), config.cache_max()), (ShipMode::Auto, None));
    let config = Env::new()
        .set("PARVM_SHIP", "")
        .set("PARVM_CACHE_MAX", "")
        .config()
        .unwrap();
    assert_eq!(
        (config.ship(), config.cache_max()),
        (ShipMode::Auto, None),
        "empty is unset"
    );
    let config = Env::new()
        .set("PARVM_SHIP", "Always")
        .set("PARVM_CACHE_MAX", "64M,10")
        .config()
        .unwrap();
    assert_eq!(config.ship(), ShipMode::Always);
    assert_eq!(
        config.cache_max(),
        Some(CacheMax {
            bytes: 64 << 20,
            count: Some(10)
        })
    );
    for (name, value) in [
        ("PARVM_SHIP", "maybe"),
        ("PARVM_CACHE_MAX", "0"),
        ("PARVM_CACHE_MAX", "10G,none"),
        ("PARVM_CACHE_MAX", "ten"),
    ] {
        let err = Env::new().set(name, value).config().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains(&format!("`{value}`")),
            "{name}={value}: {text}"
        );
    }
    let err = Env::new()
        .set("PARVM_SHIP", OsString::from_vec(b"auto\xff".to_vec()))
        .config()
        .unwrap_err();
    assert!(err.to_string().contains("PARVM_SHIP"), "{err}");
    // By hand: the same settings, the same checks.
    let config = Config::builder()
        .ship(ShipMode::Never)
        .cache_max(CacheMax {
            bytes: 1,
            count: None,
        })
        .build()
        .unwrap();
    assert_eq!(config.ship(), ShipMode::Never);
    for bad in [
        CacheMax {
            bytes: 0,
            count: None,
        },
        CacheMax {
            bytes: 5,
            count: Some(0),
        },
    ] {
        let err = Config::builder().cache_max(bad).build().unwrap_err();
        assert!(err.to_string().contains("PARVM_CACHE_MAX"), "{err}");
    }
}

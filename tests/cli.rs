//! The `herald` binary's config handling: `check` and `serve` exit 64 with a
//! message naming the key on an invalid config.

mod common;

use std::io::Write;

use common::run_herald as herald;

fn config_file(text: &str) -> tempfile_lite::File {
    tempfile_lite::File::with(text)
}

const GOOD: &str =
    "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[[route]]\ntopic = \"news\"\nchannel = \"news\"\n";

#[test]
fn check_accepts_the_example_config() {
    let (code, out, err) = herald(&[
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/herald.toml"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"));
    let f = config_file(GOOD);
    assert_eq!(herald(&["check", "--config", f.path()]).0, 0);
}

#[test]
fn invalid_configs_exit_64_naming_the_key_and_value() {
    let cases = [
        (GOOD.replace("brokers", "brokrs"), "brokrs"),
        (
            GOOD.replace("channel = \"news\"", "channel = \"user.{nope}\""),
            "route[0].channel",
        ),
        (
            format!("{GOOD}[hub]\nhistory_age = \"forever\"\n"),
            "history_age",
        ),
        (format!("{GOOD}[hub]\nshards = 0\n"), "hub.shards"),
        (
            format!("{GOOD}[[route]]\ntopic_regex = \"(\"\nchannel = \"x\"\n"),
            "route[1].topic_regex",
        ),
        (
            GOOD.replace("[[route]]\ntopic = \"news\"\nchannel = \"news\"\n", ""),
            "route",
        ),
        ("not toml at all [".to_owned(), "invalid config"),
        (
            format!("{GOOD}[publish]\napi_keys = [\"\"]\n"),
            "publish.api_keys[0]",
        ),
        (format!("{GOOD}[publish]\n"), "publish.api_keys"),
        (
            format!(
                "{GOOD}[publish]\napi_keys = [\"cli-test-key-0123456789\"]\napi_keys_file = \"/nonexistent/herald-keys\"\n"
            ),
            "publish.api_keys_file",
        ),
        // A duration that would overflow a deadline.
        (
            format!("{GOOD}[ws]\npong_timeout = \"18446744073709551615s\"\n"),
            "ws.pong_timeout",
        ),
        // librdkafka's own checks, made without connecting: an unknown
        // property and a bad value, each named.
        (
            format!("{GOOD}[kafka.options]\n\"no.such.property\" = \"1\"\n"),
            "kafka.options.\"no.such.property\"",
        ),
        (
            format!("{GOOD}[kafka.options]\n\"fetch.wait.max.ms\" = \"soon\"\n"),
            "kafka.options.\"fetch.wait.max.ms\"",
        ),
        (
            format!("{GOOD}[kafka.options]\n\"security.protocol\" = \"carrier-pigeon\"\n"),
            "kafka.options.\"security.protocol\"",
        ),
        (format!("{GOOD}[log]\nformat = \"xml\"\n"), "format"),
        (
            format!("{GOOD}[http]\ntrusted_proxies = [\"10.0.0.0/40\"]\n"),
            "http.trusted_proxies",
        ),
        (
            format!("{GOOD}[http]\nproxy_protocol = true\n"),
            "http.proxy_protocol",
        ),
        // The admin API needs the admin listener.
        (
            format!("{GOOD}[admin]\napi_keys = [\"cli-admin-key-0123456789\"]\n"),
            "admin.api_keys",
        ),
    ];
    for (text, key) in cases {
        let f = config_file(&text);
        for cmd in ["check", "serve"] {
            let (code, _, err) = herald(&[cmd, "--config", f.path()]);
            assert_eq!(code, 64, "{cmd} with {text:?}: {err}");
            assert!(err.contains(key), "{cmd}: {err:?} should name {key}");
        }
    }
    let (code, _, err) = herald(&["check", "--config", "/nonexistent/herald.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/herald.toml"), "{err}");
}

/// A temporary file removed on drop (no extra crate for one helper).
mod tempfile_lite {
    use super::*;

    pub struct File(std::path::PathBuf);

    impl File {
        pub fn with(text: &str) -> File {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "herald-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .expect("write temp config");
            File(path)
        }

        pub fn path(&self) -> &str {
            self.0.to_str().expect("UTF-8 temp path")
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Logs go to stderr, without colour codes when it is not a terminal, and
/// an address in use says how to choose another.
#[test]
fn serve_logs_to_stderr_and_names_the_way_out_of_a_busy_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let f = config_file(GOOD);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config", f.path(), "--listen", &addr])
        .env("RUST_LOG", "info")
        .output()
        .expect("run herald");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(
        stderr.contains("INFO") || stderr.contains("WARN"),
        "the logs are on stderr: {stderr}"
    );
    assert_eq!(stdout, "", "nothing on stdout");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes into a pipe: {stderr:?}"
    );
}

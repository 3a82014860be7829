//! `cargo xtask run [-- <agent args>]`: set up the node, build the release agent and run it in the
//! foreground.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::Context as _;

use crate::{setup, util};

/// The agent's default `server.listen` port (agent/src/config.rs).
const DEFAULT_PORT: u16 = 9464;

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    setup::setup()?;
    util::run(util::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "tenantscope-agent",
    ]))?;
    let bin = util::target_dir()?
        .join("release")
        .join("tenantscope-agent");

    let listen = listen_arg(&args).or_else(|| std::env::var("TENANTSCOPE_LISTEN").ok());
    println!(
        "tenantscope-agent: metrics at http://{}/metrics (health: /healthz, /readyz)",
        metrics_authority(listen.as_deref())
    );
    // exec: the agent takes over this process (same pid, same terminal process group), so
    // Ctrl-C and SIGTERM reach it directly and its exit status is ours.
    let err = Command::new(&bin).args(&args).exec();
    Err(err).with_context(|| format!("cannot exec {}", bin.display()))
}

/// The value of `--listen ADDR` or `--listen=ADDR` among the agent's arguments, last one wins
/// (as with clap).
fn listen_arg(args: &[String]) -> Option<String> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--listen" {
            found = iter.next().cloned();
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            found = Some(value.to_owned());
        }
    }
    found
}

/// Where to reach the metrics server: the listen address, with a wildcard IP replaced by the
/// loopback one; 127.0.0.1:9464 when no address is given.
fn metrics_authority(listen: Option<&str>) -> String {
    let Some(listen) = listen else {
        return format!("127.0.0.1:{DEFAULT_PORT}");
    };
    match listen.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        Ok(addr) => addr.to_string(),
        // The agent rejects it and says why; show it as given.
        Err(_) => listen.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{listen_arg, metrics_authority};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_the_listen_flag_in_both_forms() {
        assert_eq!(listen_arg(&args(&["-c", "a.toml"])), None);
        assert_eq!(
            listen_arg(&args(&["--listen", "0.0.0.0:1", "--log-level", "debug"])).as_deref(),
            Some("0.0.0.0:1")
        );
        assert_eq!(
            listen_arg(&args(&["--listen=127.0.0.1:2", "--listen", "[::1]:3"])).as_deref(),
            Some("[::1]:3")
        );
    }

    #[test]
    fn metrics_authority_points_at_a_reachable_address() {
        assert_eq!(metrics_authority(None), "127.0.0.1:9464");
        assert_eq!(metrics_authority(Some("0.0.0.0:19464")), "127.0.0.1:19464");
        assert_eq!(metrics_authority(Some("[::]:19464")), "127.0.0.1:19464");
        assert_eq!(metrics_authority(Some("127.0.0.2:80")), "127.0.0.2:80");
        assert_eq!(metrics_authority(Some("[::1]:19464")), "[::1]:19464");
    }
}

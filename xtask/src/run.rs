//! `cargo xtask run [-- <agent args>]`: set up the node, build the release agent and collector,
//! start the collector (embedded store, OTLP on 127.0.0.1:4317/4318, API on :9465) and run the
//! agent in the foreground, exporting to it. `cargo xtask report [-- <report args>]` prints an
//! SLA report from the same store (by default a one-line summary per tenant of this month).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{setup, util};

/// The agent's default `server.listen` port (agent/src/config.rs).
const DEFAULT_PORT: u16 = 9464;
/// The collector's default API address and OTLP/gRPC port (collector/src/config.rs), which is
/// also the agent's default OTLP endpoint.
const COLLECTOR_API: &str = "127.0.0.1:9465";

fn build_release() -> anyhow::Result<PathBuf> {
    util::run(util::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "tenantscope-agent",
        "-p",
        "tenantscope-collector",
    ]))?;
    Ok(util::target_dir()?.join("release"))
}

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    setup::setup()?;
    let bin = build_release()?;

    // The collector is the agent's child-to-be: when the agent (this process, after exec)
    // exits, the kernel sends the collector SIGTERM (PR_SET_PDEATHSIG), so Ctrl-C or a SIGTERM
    // to the agent stops both.
    let collector_bin = bin.join("tenantscope-collector");
    let mut collector = Command::new(&collector_bin);
    collector.arg("serve");
    // SAFETY: prctl is async-signal-safe and touches only the child being started.
    unsafe {
        collector.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = collector
        .spawn()
        .with_context(|| format!("cannot start {}", collector_bin.display()))?;
    let addr: SocketAddr = COLLECTOR_API.parse().expect("a valid address");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("the collector exited before it was ready ({status}); see its log above");
        }
        if Instant::now() > deadline {
            bail!("the collector did not listen on {COLLECTOR_API} within 30s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let listen = listen_arg(&args).or_else(|| std::env::var("TENANTSCOPE_LISTEN").ok());
    println!(
        "tenantscope-agent: metrics at http://{}/metrics (health: /healthz, /readyz)",
        metrics_authority(listen.as_deref())
    );
    println!(
        "tenantscope-collector: API at http://{COLLECTOR_API}/api/v1/tenants, metrics at \
         http://{COLLECTOR_API}/metrics; this month's report: cargo xtask report"
    );
    // exec: the agent takes over this process (same pid, same terminal process group), so
    // Ctrl-C and SIGTERM reach it directly and its exit status is ours.
    let agent = bin.join("tenantscope-agent");
    let err = Command::new(&agent).args(&args).exec();
    Err(err).with_context(|| format!("cannot exec {}", agent.display()))
}

/// `tenantscope-collector report` from the release build; without arguments, the one-line
/// summary of every tenant for the current period.
pub fn report(args: Vec<String>) -> anyhow::Result<()> {
    util::run(util::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "tenantscope-collector",
    ]))?;
    let bin = util::target_dir()?
        .join("release")
        .join("tenantscope-collector");
    let err = Command::new(&bin).arg("report").args(&args).exec();
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
